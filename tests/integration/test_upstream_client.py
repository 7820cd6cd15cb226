"""The proxy's HTTP/1.1 client against scripted servers on real loopback sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from multidict import CIMultiDict

from router.proxy.upstream import (
    HIGH_WATER,
    MAX_HEAD_BYTES,
    BodyBroken,
    ClosedBeforeHead,
    ConnectFailed,
    HeadTooLarge,
    ProtocolError,
    UpstreamClient,
)

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


class Server:
    """A TCP server that runs `script` for every connection and counts what it saw."""

    def __init__(self) -> None:
        self.connections = 0
        self.open_now = 0
        self.peak_open = 0
        self.requests: list[bytes] = []
        self.closed = asyncio.Event()
        self.url = ""


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def answer(raw: bytes, *, hold_open: bool) -> Script:
    """A script that reads one request, writes `raw`, then closes or waits for the client to."""

    async def script(reader, writer, server: Server) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()
        if hold_open:
            await reader.read()

    return script


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[Server]:
    server = Server()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        server.open_now += 1
        server.peak_open = max(server.peak_open, server.open_now)
        try:
            await script(reader, writer, server)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            server.open_now -= 1
            server.closed.set()
            writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"http://127.0.0.1:{port}"
    async with listener:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    upstream = UpstreamClient(connect_timeout=1.0)
    yield upstream
    await upstream.close()


async def keep_alive_echo(reader, writer, server: Server) -> None:
    while True:
        request = await read_request(reader)
        server.requests.append(request)
        writer.write(ok(b"pong %d" % len(server.requests)))
        await writer.drain()


async def test_connections_are_reused_and_requests_carry_host_and_length(client):
    async with scripted(keep_alive_echo) as server:
        for turn in range(1, 6):
            headers = CIMultiDict({"x-request-id": f"r{turn}"})
            response = await client.request(server.url, "POST", "/v1/x?q=1", headers, b"hello")
            assert response.status == 200
            assert await response.read() == b"pong %d" % turn
            response.release()
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v1/x?q=1 HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:" in first and b"\r\nContent-Length: 5\r\n" in first
    assert first.endswith(b"\r\n\r\nhello") and b"x-request-id: r1" in first


async def test_chunked_body_arrives_decoded_and_in_pieces(client):
    async def chunked(reader, writer, server):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        for n in range(3):
            data = b"data: %d\n\n" % n
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with scripted(chunked) as server:
        response = await client.request(server.url, "GET", "/", CIMultiDict(), b"")
        assert response.content_type == "text/event-stream" and response.content_length is None
        pieces = [chunk async for chunk in response.chunks(idle=2.0)]
        response.release()
    assert b"".join(pieces) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert len(pieces) == 3  # relayed as they came, not gathered


async def test_body_delimited_by_connection_close(client):
    until_close = answer(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it", hold_open=False)
    async with scripted(until_close) as server:
        response = await client.request(server.url, "GET", "/", CIMultiDict(), b"")
        assert await response.read() == b"all of it"
        response.release()


async def test_connection_closed_while_idle_is_replaced_without_an_error(client):
    async def one_per_connection(reader, writer, server):
        request = await read_request(reader)
        server.requests.append(request)
        writer.write(ok(b"once"))  # keep-alive by HTTP/1.1 default, then closes anyway
        await writer.drain()

    async with scripted(one_per_connection) as server:
        for _ in range(3):
            response = await client.request(server.url, "GET", "/", CIMultiDict(), b"")
            assert await response.read() == b"once"
            response.release()
            await server.closed.wait()
            server.closed.clear()
            await asyncio.sleep(0.01)
    assert server.connections == 3 and len(server.requests) == 3


async def test_refused_connection_is_reported_as_refused(client):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectFailed) as caught:
        await client.request(f"http://127.0.0.1:{port}", "GET", "/", CIMultiDict(), b"")
    assert caught.value.refused and not caught.value.timed_out


async def test_no_head_within_the_callers_timeout_closes_the_connection(client):
    async def silent(reader, writer, server):
        await read_request(reader)
        await reader.read()  # returns when the client closes

    async with scripted(silent) as server:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await client.request(server.url, "POST", "/", CIMultiDict(), b"x")
        await asyncio.wait_for(server.closed.wait(), 2.0)


async def first_chunk_then_silence(reader, writer, server):
    """Answers with a chunked head and one chunk, then says nothing more."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
    await writer.drain()
    await reader.read()


async def test_silence_between_chunks_times_out_after_idle(client):
    async with scripted(first_chunk_then_silence) as server:
        response = await client.request(server.url, "GET", "/", CIMultiDict(), b"")
        got = []
        with pytest.raises(TimeoutError):
            async for chunk in response.chunks(idle=0.2):
                got.append(chunk)
        response.close()
        await asyncio.wait_for(server.closed.wait(), 2.0)
    assert got == [b"first"]


async def test_connection_lost_mid_body_is_a_broken_body(client):
    short = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part", hold_open=False)
    async with scripted(short) as server:
        response = await client.request(server.url, "GET", "/", CIMultiDict(), b"")
        with pytest.raises(BodyBroken):
            await response.read()
        response.release()


async def test_garbage_instead_of_http_is_a_protocol_error(client):
    async with scripted(answer(b"SSH-2.0-OpenSSH\r\n\r\n", hold_open=True)) as server:
        with pytest.raises(ProtocolError):
            await client.request(server.url, "GET", "/", CIMultiDict(), b"")


async def test_interim_100_continue_is_skipped(client):
    continues = answer(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final"), hold_open=True)
    async with scripted(continues) as server:
        response = await client.request(server.url, "POST", "/", CIMultiDict(), b"x")
        assert response.status == 200 and await response.read() == b"final"
        response.release()


async def test_a_slow_reader_pauses_the_worker_instead_of_buffering(client):
    total = 16 * 1024 * 1024
    sent = 0

    async def firehose(reader, writer, server):
        nonlocal sent
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"x" * 65536
        while sent < total:
            writer.write(block)
            await writer.drain()
            sent += len(block)

    async with scripted(firehose) as server:
        response = await client.request(server.url, "GET", "/", CIMultiDict(), b"")
        await asyncio.sleep(0.5)  # nobody reads: the socket buffers fill, then the worker waits
        assert sent < total / 2
        received = 0
        async for chunk in response.chunks(idle=2.0):
            assert len(chunk) <= HIGH_WATER + 65536 * 4
            received += len(chunk)
        response.release()
    assert received == total


async def test_connections_per_worker_are_capped(client):
    capped = UpstreamClient(connect_timeout=1.0, max_per_worker=2)

    async def slow(reader, writer, server):
        while True:
            await read_request(reader)
            await asyncio.sleep(0.1)
            writer.write(ok(b"done"))
            await writer.drain()

    async def one(url: str) -> bytes:
        response = await capped.request(url, "GET", "/", CIMultiDict(), b"")
        try:
            return await response.read()
        finally:
            response.release()

    try:
        async with scripted(slow) as server:
            bodies = await asyncio.gather(*(one(server.url) for _ in range(8)))
            assert capped.active_connections() == {server.url: 0}
    finally:
        await capped.close()
    assert bodies == [b"done"] * 8
    assert server.peak_open == 2 and server.connections == 2


def counts(client: UpstreamClient, url: str) -> tuple[int, int]:
    """(exchanges in progress, idle connections) for the worker at `url`."""
    return client.active_connections()[url], client.idle_connections()[url]


async def test_a_clean_exchange_gives_its_slot_and_connection_back(client):
    async with scripted(keep_alive_echo) as server:
        response = await client.request(server.url, "GET", "/", CIMultiDict(), b"")
        assert counts(client, server.url) == (1, 0)
        await response.read()
        response.release()
        assert counts(client, server.url) == (0, 1)


async def test_closing_mid_body_then_releasing_gives_the_slot_back_once(client):
    async with scripted(first_chunk_then_silence) as server:
        response = await client.request(server.url, "GET", "/", CIMultiDict(), b"")
        async for _ in response.chunks(idle=2.0):
            break
        response.close()
        assert counts(client, server.url) == (0, 0)
        response.release()  # what the proxy's `finally` does after a close
        assert counts(client, server.url) == (0, 0)
        await asyncio.wait_for(server.closed.wait(), 2.0)


async def test_a_body_broken_by_the_worker_gives_the_slot_back_and_keeps_nothing(client):
    short = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part", hold_open=False)
    async with scripted(short) as server:
        response = await client.request(server.url, "GET", "/", CIMultiDict(), b"")
        with pytest.raises(BodyBroken):
            await response.read()
        response.release()
        assert counts(client, server.url) == (0, 0)


async def test_a_cancelled_wait_for_the_head_gives_the_slot_back(client):
    async def silent(reader, writer, server):
        await read_request(reader)
        await reader.read()

    async with scripted(silent) as server:
        waiting = asyncio.ensure_future(
            client.request(server.url, "POST", "/", CIMultiDict(), b"x")
        )
        await asyncio.sleep(0.1)
        assert counts(client, server.url) == (1, 0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert counts(client, server.url) == (0, 0)
        await asyncio.wait_for(server.closed.wait(), 2.0)


async def test_releasing_twice_leaves_the_pooled_connection_in_service(client):
    async with scripted(keep_alive_echo) as server:
        first = await client.request(server.url, "GET", "/", CIMultiDict(), b"")
        await first.read()
        first.release()
        first.release()
        second = await client.request(server.url, "GET", "/", CIMultiDict(), b"")
        first.close()
        assert await second.read() == b"pong 2"
        second.release()
        assert counts(client, server.url) == (0, 1)
    assert server.connections == 1


async def test_a_pooled_connection_closed_under_the_request_is_retried_once_on_a_fresh_one(
    client,
):
    async def first_connection_drops_its_second_request(reader, writer, server):
        number = server.connections
        await read_request(reader)
        writer.write(ok(b"answer %d" % number))
        await writer.drain()
        if number == 1:
            await read_request(reader)  # as if the worker's idle timeout beat the request
            return
        await reader.read()

    async with scripted(first_connection_drops_its_second_request) as server:
        first = await client.request(server.url, "GET", "/", CIMultiDict(), b"")
        assert await first.read() == b"answer 1"
        first.release()
        second = await client.request(server.url, "GET", "/", CIMultiDict(), b"")
        assert await second.read() == b"answer 2"
        second.release()
        assert counts(client, server.url) == (0, 1)
    assert server.connections == 2


async def test_a_fresh_connection_closed_before_the_head_is_not_retried(client):
    async def drops(reader, writer, server):
        await read_request(reader)

    async with scripted(drops) as server:
        with pytest.raises(ClosedBeforeHead):
            await client.request(server.url, "GET", "/", CIMultiDict(), b"")
        assert counts(client, server.url) == (0, 0)
    assert server.connections == 1


HUGE_HEADS = {
    "one-long-header": ok(b"x", b"X-Big: " + b"a" * 200_000 + b"\r\n"),
    "many-headers": ok(b"x", b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 60) for i in range(3000))),
    "long-reason": b"HTTP/1.1 200 " + b"O" * 100_000 + b"\r\nContent-Length: 0\r\n\r\n",
    "interim-heads": b"HTTP/1.1 100 Continue\r\n\r\n" * 5000 + ok(b"x"),
}


@pytest.mark.parametrize("raw", HUGE_HEADS.values(), ids=HUGE_HEADS)
async def test_a_response_head_over_the_bound_is_a_protocol_error(client, raw):
    async with scripted(answer(raw, hold_open=True)) as server:
        with pytest.raises(HeadTooLarge, match=f"over {MAX_HEAD_BYTES} bytes"):
            await client.request(server.url, "POST", "/", CIMultiDict(), b"x")
        await asyncio.wait_for(server.closed.wait(), 5)  # the connection is dropped


async def test_a_header_line_that_never_ends_fails_once_past_the_bound_not_at_the_timeout(
    client,
):
    async def endless(reader, writer, server):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        for _ in range(100):  # up to 800 KiB, in pieces, never a line end
            writer.write(b"z" * 8192)
            await writer.drain()
            await asyncio.sleep(0.001)
        await reader.read()

    async with scripted(endless) as server:
        with pytest.raises(HeadTooLarge):
            await asyncio.wait_for(client.request(server.url, "GET", "/", CIMultiDict(), b""), 5)


async def test_a_head_just_under_the_bound_is_accepted(client):
    filler = b"X-Fill: " + b"f" * (MAX_HEAD_BYTES - 200) + b"\r\n"
    async with scripted(answer(ok(b"fine", filler), hold_open=True)) as server:
        response = await client.request(server.url, "GET", "/", CIMultiDict(), b"")
        assert response.status == 200 and await response.read() == b"fine"
        assert len(response.headers["x-fill"]) == MAX_HEAD_BYTES - 200
        response.release()
