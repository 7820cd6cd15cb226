"""A minimal OpenAI-shaped HTTP/1.1 responder, fast enough never to be the bottleneck.

The simulated worker spends ~200 us of Python per request, which caps a benchmark of the router
far below what the router itself can do. This server answers from canned bytes on a raw uvloop
protocol: `POST /v1/...` gets a fixed chat completion (with usage, as vLLM sends it), or, when
the body says `"stream": true`, an SSE stream of `max_tokens` chunks written one per loop
iteration as a real token-by-token server would; `GET /health` and `GET /v1/models` answer 200.

Usage: python -m router.tooling.bench.fast_upstream --port P [--name N]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
from typing import cast

import orjson

_END = b"\r\n\r\n"
_MAX_TOKENS = re.compile(rb'"max_tokens"\s*:\s*(\d+)')
_STREAM = re.compile(rb'"stream"\s*:\s*true')
_DEFAULT_TOKENS = 16
_CHUNKS_PER_TICK = 1


def _completion_body(name: str) -> bytes:
    return orjson.dumps(
        {
            "id": f"chatcmpl-{name}-1",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "sim-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "metric node seed delta"},
                    "logprobs": None,
                    "finish_reason": "length",
                }
            ],
            "usage": {
                "prompt_tokens": 14,
                "completion_tokens": 4,
                "total_tokens": 18,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
        }
    )


def _response(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _token_event(index: int) -> bytes:
    delta = {"content": " tok"} if index else {"role": "assistant", "content": "tok"}
    payload = {
        "id": "chatcmpl-fast-1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "sim-model",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
    }
    return _chunked(b"data: " + orjson.dumps(payload) + b"\n\n")


_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
_FIRST_EVENT = _token_event(0)
_NEXT_EVENT = _token_event(1)
_STREAM_TAIL = _chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n"


class _Http(asyncio.Protocol):
    """One keep-alive connection; pipelined requests are answered in order."""

    def __init__(self, answers: dict[bytes, bytes]) -> None:
        self._answers = answers
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._streaming = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._streaming:
            self._answer_ready()

    def _answer_ready(self) -> None:
        buffer = self._buffer
        while self._transport is not None and not self._streaming:
            end = buffer.find(_END)
            if end < 0:
                return
            head = bytes(buffer[:end]).lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else None])
            total = end + 4 + length
            if len(buffer) < total:
                return
            body = bytes(buffer[end + 4 : total])
            del buffer[:total]
            self._answer(head, body)

    def _answer(self, head: bytes, body: bytes) -> None:
        transport = self._transport
        assert transport is not None
        method, _, rest = head.partition(b" ")
        path = rest.partition(b" ")[0].partition(b"?")[0]
        if method == b"post" and path.startswith(b"/v1/"):
            if _STREAM.search(body):
                found = _MAX_TOKENS.search(body)
                tokens = int(found.group(1)) if found else _DEFAULT_TOKENS
                self._streaming = True
                transport.write(_STREAM_HEAD)
                asyncio.get_running_loop().create_task(self._stream(tokens))
                return
            transport.write(self._answers[b"completion"])
        elif method == b"get" and path in self._answers:
            transport.write(self._answers[path])
        else:
            transport.write(self._answers[b"404"])

    async def _stream(self, tokens: int) -> None:
        """One chunk per loop iteration, like a decode step that takes no time."""
        for index in range(tokens):
            transport = self._transport
            if transport is None:
                return
            transport.write(_NEXT_EVENT if index else _FIRST_EVENT)
            await asyncio.sleep(0)
        if self._transport is not None:
            self._transport.write(_STREAM_TAIL)
        self._streaming = False
        self._answer_ready()


def _answers(name: str) -> dict[bytes, bytes]:
    models = orjson.dumps({"object": "list", "data": [{"id": "sim-model", "object": "model"}]})
    return {
        b"completion": _response("200 OK", _completion_body(name)),
        b"/health": _response("200 OK", b'{"status":"ok"}'),
        b"/v1/models": _response("200 OK", models),
        b"404": _response("404 Not Found", b'{"error":"not found"}'),
    }


async def _serve(host: str, port: int, name: str) -> None:
    loop = asyncio.get_running_loop()
    answers = _answers(name)
    server = await loop.create_server(lambda: _Http(answers), host, port, backlog=4096)
    print(f"fast upstream {name} listening on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="fast")
    ns = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(ns.host, ns.port, ns.name))
    else:
        uvloop.run(_serve(ns.host, ns.port, ns.name))


if __name__ == "__main__":
    main()
