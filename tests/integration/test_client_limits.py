"""Slow and idle clients against a real router, over raw sockets: a request head that takes
too long, a body that takes too long, an idle keep-alive connection, and more connections than
`limits.max_client_connections`. Small timeouts; every wait is bounded."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from router.config import parse_settings
from router.http.common import ROOT
from router.reload import effective
from router.server import running
from router.tooling.launch import free_port
from tests.conftest import FAST_HEALTH
from tests.raw_http import (
    RecordingWorker,
    closed_by_peer,
    get,
    read_answer,
    send_raw,
)

SLACK = 1.0
"""How much later than its timeout a cut may come on a shared 2-core machine."""

pytestmark = pytest.mark.timeout(60)


@asynccontextmanager
async def limited_router(worker: RecordingWorker, **limits) -> AsyncIterator[tuple[int, object]]:
    """A router in this process in front of `worker` with `limits`; yields (port, root)."""
    port = free_port()
    raw = {
        "listen": f"127.0.0.1:{port}", "workers": [{"url": worker.url, "name": "raw-0"}],
        "health": FAST_HEALTH, "load": {"enabled": False}, "limits": limits,
    }  # fmt: skip
    async with running(parse_settings(raw, "test", env={}), "127.0.0.1", port) as runner:
        yield port, runner.app[ROOT]


async def drip(writer: asyncio.StreamWriter, data: bytes, every: float) -> None:
    """Send `data` one byte every `every` seconds, until done or the connection breaks."""
    try:
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(every)
    except ConnectionError:
        return


async def cut_after(reader: asyncio.StreamReader, limit: float) -> float | None:
    """Seconds until the router closes the connection, None if it stays open past `limit`."""
    started = time.monotonic()
    if await closed_by_peer(reader, limit):
        return time.monotonic() - started
    return None


PADDING = [b"x-pad-%d: %s" % (i, b"p" * 40) for i in range(20)]
SLOW_HEAD = get("/v1/chat", b"x-session-id: slow", *PADDING)


async def test_a_slowloris_head_is_cut_within_the_header_timeout():
    async with RecordingWorker() as worker, limited_router(worker, header_timeout=0.5) as (
        port, root
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        dripping = asyncio.create_task(drip(writer, SLOW_HEAD, 0.05))
        took = await cut_after(reader, 0.5 + SLACK + 2)
        dripping.cancel()
        writer.transport.abort()
        assert took is not None and took < 0.5 + SLACK, took
        assert took > 0.4  # not before the timeout
        # a client that keeps to the limit is served meanwhile and after
        assert (await send_raw(port, get("/v1/chat", b"x-session-id: ok"))).status == 200
        assert root.metrics.client_timeouts.labels("header")._value.get() == 1
        assert worker.targets == [b"GET /v1/chat HTTP/1.1"]


async def test_a_slow_head_on_a_kept_alive_connection_is_cut_too_and_idle_ones_are_not():
    async with RecordingWorker() as worker, limited_router(
        worker, header_timeout=0.4, keepalive_timeout=30
    ) as (port, _root):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/v1/chat", b"x-session-id: a"))
        assert (await read_answer(reader, 5)).status == 200
        await asyncio.sleep(0.8)  # idle past the header timeout: kept (keepalive_timeout rules)
        writer.write(get("/v1/chat", b"x-session-id: a"))
        assert (await read_answer(reader, 5)).status == 200
        dripping = asyncio.create_task(drip(writer, SLOW_HEAD, 0.05))
        took = await cut_after(reader, 0.4 + SLACK + 2)
        dripping.cancel()
        writer.transport.abort()
        assert took is not None and took < 0.4 + SLACK, took


async def test_a_head_begun_just_before_the_last_heads_timer_ran_out_gets_its_full_timeout():
    """The head timer is reused across requests on a connection: a head that starts late in
    the previous head's window is still given the whole `header_timeout` of its own."""
    async with RecordingWorker() as worker, limited_router(
        worker, header_timeout=0.6, keepalive_timeout=30
    ) as (port, _root):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/v1/chat", b"x-session-id: a"))
        assert (await read_answer(reader, 5)).status == 200
        await asyncio.sleep(0.4)  # the first head's timer would run out 0.2 s into the next
        dripping = asyncio.create_task(drip(writer, SLOW_HEAD, 0.05))
        took = await cut_after(reader, 0.6 + SLACK + 2)
        dripping.cancel()
        writer.transport.abort()
        assert took is not None and 0.5 < took < 0.6 + SLACK, took


async def test_a_pipelined_slow_head_gets_its_timer_when_the_answer_before_it_is_done():
    async with RecordingWorker() as worker, limited_router(
        worker, header_timeout=0.4, keepalive_timeout=30
    ) as (port, _root):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/v1/chat", b"x-session-id: a") + SLOW_HEAD[:10])
        assert (await read_answer(reader, 5)).status == 200
        dripping = asyncio.create_task(drip(writer, SLOW_HEAD[10:], 0.05))
        took = await cut_after(reader, 0.4 + SLACK + 2)
        dripping.cancel()
        writer.transport.abort()
        assert took is not None and took < 0.4 + SLACK, took


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout():
    async with RecordingWorker() as worker, limited_router(worker, header_timeout=0.3) as (
        port, _root
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        took = await cut_after(reader, 0.3 + SLACK + 2)
        writer.transport.abort()
        assert took is not None and took < 0.3 + SLACK, took


async def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout():
    async with RecordingWorker() as worker, limited_router(
        worker, keepalive_timeout=0.5, header_timeout=10
    ) as (port, _root):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/v1/chat", b"x-session-id: a"))
        answer = await read_answer(reader, 5)
        assert answer.status == 200 and answer.header("connection") != "close"
        took = await cut_after(reader, 0.5 + SLACK + 2)
        writer.transport.abort()
        assert took is not None and 0.3 < took < 0.5 + SLACK, took


async def test_a_body_that_does_not_arrive_within_the_body_timeout_is_a_408(caplog):
    async with RecordingWorker() as worker, limited_router(worker, body_timeout=0.5) as (
        port, root
    ):
        for head, first in (
            (get("/v1/chat", b"Content-Length: 100", method=b"POST"), b"0123456789"),
            (get("/v1/chat", b"Transfer-Encoding: chunked", method=b"POST"), b"5\r\nhello\r\n"),
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head + first)
            started = time.monotonic()
            answer = await read_answer(reader, 0.5 + SLACK + 2)
            took = time.monotonic() - started
            writer.transport.abort()
            assert answer.status == 408 and answer.header("connection") == "close", answer.head
            assert answer.error()["code"] == "request_timeout"
            assert "limits.body_timeout" in answer.error()["message"]
            assert 0.4 < took < 0.5 + SLACK, took
        assert worker.requests == []
        assert root.metrics.client_timeouts.labels("body")._value.get() == 2
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []


async def test_a_chunked_body_broken_after_the_head_is_answered_within_the_body_timeout(caplog):
    """aiohttp drops the request's payload without an error when a chunk size is garbage
    after the handler started reading: only the body timeout ends the wait."""
    async with RecordingWorker() as worker, limited_router(worker, body_timeout=0.5) as (
        port, _root
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/v1/chat", b"Transfer-Encoding: chunked", method=b"POST"))
        writer.write(b"5\r\nhello\r\n")
        await asyncio.sleep(0.2)  # the handler is reading the body by now
        writer.write(b"zz\r\n")
        answer = await read_answer(reader, 0.5 + SLACK + 2)
        writer.transport.abort()
        assert 400 <= answer.status < 500, answer.head
        assert worker.requests == []
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []


async def connect_and_ask(port: int, path: str = "/healthz") -> tuple:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(get(path))
    return reader, writer, await read_answer(reader, 5)


async def test_past_the_connection_cap_new_clients_get_a_503_and_old_ones_are_served():
    async with RecordingWorker() as worker, limited_router(worker, max_client_connections=3) as (
        port, root
    ):
        held = [await connect_and_ask(port) for _ in range(3)]
        assert [answer.status for *_, answer in held] == [200, 200, 200]

        refused = await send_raw(port, get("/v1/chat", b"x-session-id: new"))
        assert refused.status == 503 and refused.header("connection") == "close"
        assert refused.header("retry-after") == "1"
        error = refused.error()
        assert error["code"] == "too_many_connections"
        assert "limits.max_client_connections" in error["message"]
        reader, writer, alive = await connect_and_ask(port)  # liveness is still answered
        assert alive.status == 200 and alive.header("connection") == "close"
        assert await closed_by_peer(reader, 5)
        writer.transport.abort()

        first_reader, first_writer, _ = held[0]
        first_writer.write(get("/v1/chat", b"x-session-id: old"))
        assert (await read_answer(first_reader, 5)).status == 200
        assert worker.targets == [b"GET /v1/chat HTTP/1.1"]

        for _, writer, _ in held[1:]:
            writer.close()
        for _ in range(250):  # the router sees them close
            if root.clients.open == 1:
                break
            await asyncio.sleep(0.02)
        served = await send_raw(port, get("/v1/chat", b"x-session-id: later"))
        assert served.status == 200
        first_writer.close()
        assert root.metrics.rejected.labels("too_many_connections")._value.get() == 1


async def test_header_timeout_and_connection_cap_apply_on_reload():
    async with RecordingWorker() as worker, limited_router(
        worker, header_timeout=30, max_client_connections=100
    ) as (port, root):
        old = root.settings
        new = old.model_copy(
            update={"limits": old.limits.model_copy(
                update={"header_timeout": 0.3, "max_client_connections": 1}
            )}
        )  # fmt: skip
        root.reconfigure(effective(old, new))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v1/chat HTTP/1.1\r\n")
        assert (await send_raw(port, get("/healthz"))).header("connection") == "close"
        took = await cut_after(reader, 0.3 + SLACK + 2)
        writer.transport.abort()
        assert took is not None and took < 0.3 + SLACK, took
