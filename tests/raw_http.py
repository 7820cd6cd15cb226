"""Raw HTTP/1.1 over plain sockets, for tests of what hostile clients and broken workers send:
HTTP client libraries normalise paths, encode headers and frame bodies themselves, so they
cannot send the bytes these tests are about."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import orjson


@dataclass
class Answer:
    """One response read off a raw connection; `status` 0 when the router closed the
    connection (or reset it) without answering."""

    status: int
    head: bytes = b""
    body: bytes = b""

    @property
    def closed_silently(self) -> bool:
        return self.status == 0

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None

    def error(self) -> dict[str, str]:
        """The OpenAI-shaped error object of a JSON error answer."""
        assert self.header("content-type") == "application/json", self.head
        document = orjson.loads(self.body)
        assert set(document["error"]) == {"message", "type", "param", "code"}, document
        return document["error"]


async def read_answer(reader: asyncio.StreamReader, timeout: float) -> Answer:
    """One response: its head, then a Content-Length body, or everything to the close."""
    async with asyncio.timeout(timeout):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return Answer(0)
        status = int(head.split(b" ", 2)[1])
        answer = Answer(status, head)
        length = answer.header("content-length")
        try:
            if length is not None:
                answer.body = await reader.readexactly(int(length))
            elif answer.header("transfer-encoding") is None:
                answer.body = await reader.read()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        return answer


async def send_raw(port: int, data: bytes, timeout: float = 5.0) -> Answer:
    """Send `data` on a new connection and read one answer (the client keeps its side open,
    so a close is the router's)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    try:
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        return await read_answer(reader, timeout)
    finally:
        writer.transport.abort()


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float) -> bool:
    """Whether the peer closes the connection within `timeout` (any data before is read)."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


def get(path: str, *headers: bytes, method: bytes = b"GET") -> bytes:
    """A raw request with a Host header and `headers` (each b"Name: value")."""
    lines = [method + b" " + path.encode("latin-1") + b" HTTP/1.1", b"Host: router.test", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request off a raw connection: its head (returned) and its body (read and dropped,
    by Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
            if length:
                await reader.readexactly(length)
    return head


@dataclass
class RecordingWorker:
    """A worker as a raw asyncio server: answers `GET /health` and `/metrics`, records the
    request line and headers of everything else and answers it with `answer` (a whole HTTP
    response), or with a small JSON body by default. Only ever reached through the router."""

    answer: bytes | None = None
    requests: list[bytes] = field(default_factory=list)
    probes: list[bytes] = field(default_factory=list)  # request lines of health and metrics GETs
    port: int = 0
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def targets(self) -> list[bytes]:
        """The request line of each recorded request."""
        return [head.split(b"\r\n", 1)[0] for head in self.requests]

    async def __aenter__(self) -> RecordingWorker:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await read_request(reader)
                if head.startswith((b"GET /health ", b"GET /metrics ")):
                    self.probes.append(head.split(b"\r\n", 1)[0])
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                else:
                    self.requests.append(head)
                    writer.write(self.answer or _json_answer(b'{"ok": true}'))
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return
        finally:
            writer.transport.abort()


def _json_answer(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
