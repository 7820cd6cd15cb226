"""Whatever path a request takes, everything it borrowed comes back: after refused, reset,
retried, broken, abandoned and timed-out requests through a real router to real workers, every
worker's in-flight count and every upstream pool's active connections are back to 0."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from router.config import parse_settings
from router.http.common import ROOT
from router.root import Router
from router.server import running
from router.tooling.launch import free_port
from tests.conftest import FAST_HEALTH, chat_body

pytestmark = pytest.mark.slow


@asynccontextmanager
async def router(urls: list[str], **overrides: Any) -> AsyncIterator[tuple[str, Router]]:
    port = free_port()
    raw: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "workers": [{"url": u, "name": f"w{i}"} for i, u in enumerate(urls)],
        "health": {**FAST_HEALTH, "passive": {"consecutive_failures": 1000}},
        "routing": {"policy": "round_robin"},
        **overrides,
    }
    async with running(parse_settings(raw, "test", env={}), "127.0.0.1", port) as runner:
        yield f"http://127.0.0.1:{port}", runner.app[ROOT]


async def settled(root: Router) -> None:
    """Wait (briefly) for everything to be given back, then say what was not."""
    for _ in range(200):
        inflight = {w.name: w.inflight for w in root.pool if w.inflight}
        active = {u: n for u, n in root.upstream.active_connections().items() if n}
        if not inflight and not active:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not given back: in flight {inflight}, active connections {active}")


@asynccontextmanager
async def resetting_server() -> AsyncIterator[str]:
    """Accepts a connection, reads the request, and closes without answering."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


def refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def set_fault(http: aiohttp.ClientSession, url: str, **faults: float) -> None:
    async with http.post(url + "/sim/fault", json=faults) as resp:
        assert resp.status == 200, await resp.text()


async def post(http: aiohttp.ClientSession, url: str, **body: Any) -> tuple[int, bytes]:
    async with http.post(url + "/v1/chat/completions", json=chat_body(**body)) as resp:
        return resp.status, await resp.read()


async def test_every_failure_path_gives_back_its_leases_and_connections(sim_fleet, http):
    fleet = sim_fleet(2, "--decode-ms-per-token", "30", "--prefill-ms-per-token", "0")
    good, flaky = fleet.urls
    async with resetting_server() as resetting:
        # refused and reset before the head: retried on the good worker
        async with router([refused_url(), resetting, good]) as (url, root):
            results = [await post(http, url, max_tokens=2) for _ in range(6)]
            assert all(status == 200 for status, _ in results), results
            await settled(root)

    # a retried 5xx, then a body broken mid-stream (not retryable after the first byte)
    await set_fault(http, flaky, error_rate=1.0, error_status=503)
    async with router([flaky, good]) as (url, root):
        results = [await post(http, url, max_tokens=2) for _ in range(4)]
        assert all(status == 200 for status, _ in results), results
        await settled(root)
    await set_fault(http, flaky, error_rate=0.0, drop_after_chunks=2)
    async with router([flaky]) as (url, root):
        for _ in range(3):
            status, text = await post(http, url, max_tokens=20, stream=True)
            assert status == 200 and b"upstream_stream_broken" in text, text
        await settled(root)

    # the client goes away mid-stream; the request's deadline ends a stream that keeps talking
    async with router([good], timeouts={"total": 0.4}) as (url, root):
        for _ in range(3):
            async with http.post(
                url + "/v1/chat/completions", json=chat_body(max_tokens=200, stream=True)
            ) as resp:
                await resp.content.readany()
                resp.close()
        status, text = await post(http, url, max_tokens=200, stream=True)
        assert status == 200 and b"upstream_timeout" in text, text
        await settled(root)
