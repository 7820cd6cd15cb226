"""Worker faults through a real router, in orchestrator mode, one case at a time: a worker that
misbehaves (while its health probe passes) beside a good one. For each: what the client saw,
what was stored, what was counted. Nothing acknowledged is lost, nothing is invented, nothing
is stored twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from router.config import parse_settings
from router.http.common import ROOT
from router.root import Router
from router.server import running
from router.tooling.launch import free_port
from tests.conftest import FAST_HEALTH, counted
from tests.raw_http import read_request

pytestmark = pytest.mark.slow

SERVER = {"x-kvrouter-history": "server"}
CASE_SECONDS = 20


class FaultyWorker:
    """Answers `GET /health` with 200 and every other request with its fault."""

    def __init__(self, fault: str) -> None:
        self.fault = fault
        self.requests = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> FaultyWorker:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await read_request(reader)
                if head.startswith(b"GET /health"):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    await writer.drain()
                    continue
                self.requests += 1
                if not await self._misbehave(writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.transport.abort()

    async def _misbehave(self, writer: asyncio.StreamWriter) -> bool:
        """Send the fault; True to keep the connection for another request."""
        sse_head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        event = b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"content": "He"}}]})
        chunk = b"%x\r\n%s\n\n\r\n" % (len(event) + 2, event)
        fault = self.fault
        if fault == "garbage":
            writer.write(b"\x00\xff\xfeNOT HTTP AT ALL\r\n\r\n")
        elif fault == "truncated_head":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Ty")
        elif fault == "truncated_body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 400\r\n\r\n{\"choices\": [")  # fmt: skip
        elif fault in ("stall_before_head", "stall_mid_stream"):
            if fault == "stall_mid_stream":
                writer.write(sse_head + chunk)
                await writer.drain()
            await asyncio.sleep(CASE_SECONDS)
        elif fault == "storm_500":
            body = b'{"error": {"message": "boom", "type": "server_error", "code": 500}}'
            head = b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
            writer.write(head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            return True
        elif fault == "reset_mid_stream":
            writer.write(sse_head + chunk)
        elif fault == "chunked_broken":  # a JSON body of unknown length that stops short
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            writer.write(head + b"Transfer-Encoding: chunked\r\n\r\n10\r\n{\"choices\": [   \r\n")
        await writer.drain()
        return False


@asynccontextmanager
async def router_for(*urls: str, **overrides: Any) -> AsyncIterator[tuple[str, Router]]:
    port = free_port()
    raw: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "workers": [{"url": u, "name": f"w{i}"} for i, u in enumerate(urls)],
        "health": FAST_HEALTH,
        "routing": {"policy": "consistent_hash", "slow_start": {"window": 0}},
        "timeouts": {"first_byte": 1.0, "idle": 1.0},
        **overrides,
    }
    async with running(parse_settings(raw, "test", env={}), "127.0.0.1", port) as runner:
        yield f"http://127.0.0.1:{port}", runner.app[ROOT]


def session_homed_on(root: Router, worker: str) -> str:
    """A session id whose ring home is `worker`."""
    for i in range(1000):
        home = root.balancer.ring_home(f"default\x1fs{i}")
        if home is not None and home.name == worker:
            return f"s{i}"
    raise AssertionError(f"no session hashes to {worker}")


async def say(http, url: str, session: str, text: str, stream: bool) -> tuple[int, bytes]:
    body = {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": 8,
            "stream": stream}  # fmt: skip
    headers = {**SERVER, "x-session-id": session}
    async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
        return resp.status, await resp.read()


def streamed_text(body: bytes) -> str:
    texts = []
    for line in body.split(b"\n"):
        if line.startswith(b"data: {"):
            for choice in orjson.loads(line[6:]).get("choices", []):
                texts.append(choice.get("delta", {}).get("content") or "")
    return "".join(texts)


async def stored(http, url: str, session: str) -> list[dict[str, Any]]:
    async with http.get(f"{url}/v1/sessions/{session}") as resp:
        if resp.status == 404:
            return []
        assert resp.status == 200
        return (await resp.json())["turns"]


# fault, stream?, resume cut streams?, what the client sees, how the turn is stored, the error
# kind counted. A body read whole that breaks is retried on the good worker; a stream cut
# mid-answer is continued there (or, with resuming off, ends with an error event).
CASES = [
    ("garbage", False, True, 200, "complete", "protocol"),
    ("truncated_head", False, True, 200, "complete", "reset"),
    ("truncated_body", False, True, 200, "complete", "stream"),
    ("stall_before_head", False, True, 504, None, "timeout"),
    ("stall_mid_stream", True, True, 200, "complete", "timeout"),
    ("stall_mid_stream", True, False, 200, "incomplete", "timeout"),
    ("storm_500", False, True, 500, None, "status"),
    ("reset_mid_stream", True, True, 200, "complete", "stream"),
    ("reset_mid_stream", True, False, 200, "incomplete", "stream"),
]


@pytest.mark.parametrize(("fault", "stream", "resume", "status", "stored_as", "kind"), CASES)
async def test_a_faulty_worker_costs_no_acknowledged_turn_and_invents_none(
    sim_fleet, http, fault, stream, resume, status, stored_as, kind
):
    good = sim_fleet(1, "--time-scale", "0").urls[0]
    retries = {"mid_stream": resume}
    async with asyncio.timeout(CASE_SECONDS), FaultyWorker(fault) as bad:
        history = {"access": "open"}  # stored history open to every client (trusted network)
        async with router_for(bad.url, good, retries=retries, history=history) as (url, root):
            session = session_homed_on(root, "w0")
            got, body = await say(http, url, session, "first question", stream)
            assert got == status, (fault, got, body[:300])
            if stream and stored_as == "incomplete":
                assert b"event: error" in body and b"[DONE]" not in body, body[-300:]
            if stream and stored_as == "complete":
                assert b"event: error" not in body and body.count(b"[DONE]") == 1, body[-300:]
                assert body.startswith(b'data: {"choices":[{"index":0,"delta":{"content":"He"}}]}')
            turns = await stored(http, url, session)
            if stored_as is None:
                assert turns == [], f"{fault}: a turn answered {got} left a trace: {turns}"
            else:
                assert len(turns) == 1, turns
                assert turns[0]["complete"] is (stored_as == "complete"), turns
            if stream and stored_as == "complete":  # the stitched answer, stored once
                (reply,) = [m for m in turns[0]["messages"] if m["role"] == "assistant"]
                assert reply["content"] == streamed_text(body) and reply["content"].startswith("He")
            assert await counted(
                http, url, "kvrouter_upstream_errors_total", worker="w0", kind=kind
            ) >= 1
            # the session goes on: its next turn is answered and stored once, in order
            await asyncio.sleep(0.05)
            again, _ = await say(http, url, session, "second question", False)
            if again == 200:
                turns = await stored(http, url, session)
                texts = [m["content"] for t in turns for m in t["messages"] if m["role"] == "user"]
                assert texts.count("second question") == 1, texts


async def test_a_worker_that_breaks_every_body_is_ejected_while_its_probes_pass(sim_fleet, http):
    good = sim_fleet(1, "--time-scale", "0").urls[0]
    async with asyncio.timeout(CASE_SECONDS), FaultyWorker("reset_mid_stream") as bad:
        passive = {"consecutive_failures": 3, "base_ejection": 30}
        health = {**FAST_HEALTH, "passive": passive}
        # with resuming off, so each cut counts and the session stays on w0 until ejected
        async with router_for(
            bad.url, good, health=health, retries={"mid_stream": False}
        ) as (url, root):
            session = session_homed_on(root, "w0")
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            workers = []
            for _ in range(5):
                async with http.post(
                    url + "/v1/chat/completions", json=body, headers={"x-session-id": session}
                ) as resp:
                    await resp.read()
                    workers.append(resp.headers["x-kvrouter-worker"])
            assert workers[:3] == ["w0"] * 3 and workers[3:] == ["w1", "w1"], workers
            assert not root.pool.get("w0").available
