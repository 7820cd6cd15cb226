"""Where a Python proxy's time goes: four minimal proxies, measured like `kvrouter bench`.

  aiohttp-hello   aiohttp server answering from memory (no upstream at all): the server's cost
  aiohttp-proxy   aiohttp server + aiohttp ClientSession, nothing else: the client's cost on top
  lean-client     aiohttp server + a 60-line keep-alive upstream pool on an asyncio Protocol
  raw             that pool behind an equally small asyncio Protocol server

None of them does routing, retries, header rewriting or metrics, and the lean pieces know only
Content-Length framing: they bound what each layer costs, they are not proxies to deploy.

  python -m router.tooling.bench.layer_probe     # each variant pinned like the router in the bench
  python -m router.tooling.bench.layer_probe serve VARIANT --port P --upstream U   # one variant
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import sys
from contextlib import ExitStack
from typing import cast

import aiohttp
import uvloop
from aiohttp import web

_END = b"\r\n\r\n"
VARIANTS = ("aiohttp-hello", "aiohttp-proxy", "lean-client", "raw")
_CANNED = b'{"ok":true}'
_SKIPPED = frozenset({"host", "content-length", "connection", "transfer-encoding"})


def _frame(buffer: bytearray) -> tuple[bytes, bytes] | None:
    """Pop one Content-Length framed message (head, body) off `buffer`, if complete."""
    end = buffer.find(_END)
    if end < 0:
        return None
    head = bytes(buffer[:end])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    length = 0
    if at >= 0:
        stop = lower.find(b"\r\n", at + 2)
        length = int(lower[at + 17 : stop if stop >= 0 else None])
    total = end + 4 + length
    if len(buffer) < total:
        return None
    body = bytes(buffer[end + 4 : total])
    del buffer[:total]
    return head, body


class _Upstream(asyncio.Protocol):
    """One keep-alive upstream connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[bytes, bytes]] | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("upstream closed the connection"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        message = _frame(self._buffer)
        if message is not None and self.waiter is not None:
            waiter, self.waiter = self.waiter, None
            waiter.set_result(message)


class LeanPool:
    """Idle keep-alive connections to one upstream, reused last-in first-out."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._idle: collections.deque[_Upstream] = collections.deque()

    async def send(self, request: bytes) -> tuple[bytes, bytes]:
        loop = asyncio.get_running_loop()
        conn = self._idle.pop() if self._idle else None
        if conn is None or conn.transport is None:
            _, conn = await loop.create_connection(_Upstream, self._host, self._port)
        assert conn.transport is not None
        conn.waiter = loop.create_future()
        conn.transport.write(request)
        message = await conn.waiter
        self._idle.append(conn)
        return message


def _request_bytes(request: web.Request, body: bytes, upstream: str) -> bytes:
    lines = [f"{request.method} {request.rel_url.raw_path_qs} HTTP/1.1", f"Host: {upstream}"]
    lines += [f"{k}: {v}" for k, v in request.headers.items() if k.lower() not in _SKIPPED]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _aiohttp_app(variant: str, upstream: str) -> web.Application:
    app = web.Application()
    host, _, port = upstream.rpartition(":")
    pool = LeanPool(host, int(port))
    session: dict[str, aiohttp.ClientSession] = {}

    async def hello(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=_CANNED, content_type="application/json")

    async def via_aiohttp(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIPPED}
        url = f"http://{upstream}{request.rel_url.raw_path_qs}"
        async with session["client"].request(request.method, url, data=body, headers=headers) as r:
            return web.Response(body=await r.read(), status=r.status, content_type=r.content_type)

    async def via_lean(request: web.Request) -> web.Response:
        body = await request.read()
        head, answer = await pool.send(_request_bytes(request, body, upstream))
        return web.Response(body=answer, status=int(head[9:12]), content_type="application/json")

    async def client(app: web.Application):
        async with aiohttp.ClientSession(auto_decompress=False) as s:
            session["client"] = s
            yield

    handler = {"aiohttp-hello": hello, "aiohttp-proxy": via_aiohttp, "lean-client": via_lean}
    app.cleanup_ctx.append(client)
    app.router.add_route("*", "/{tail:.*}", handler[variant])
    return app


class _RawServer(asyncio.Protocol):
    """Answers each request, in order, with the upstream's head and body as they came."""

    def __init__(self, pool: LeanPool) -> None:
        self._pool = pool
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._next()

    def _next(self) -> None:
        if self._busy or self._transport is None:
            return
        message = _frame(self._buffer)
        if message is not None:
            self._busy = True
            asyncio.get_running_loop().create_task(self._relay(*message))

    async def _relay(self, head: bytes, body: bytes) -> None:
        answer_head, answer = await self._pool.send(head + _END + body)
        if self._transport is not None:
            self._transport.write(answer_head + _END + answer)
        self._busy = False
        self._next()


async def serve(variant: str, port: int, upstream: str) -> None:
    if variant == "raw":
        host, _, up_port = upstream.rpartition(":")
        pool = LeanPool(host, int(up_port))
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _RawServer(pool), "127.0.0.1", port)
        async with server:
            await server.serve_forever()
    runner = web.AppRunner(_aiohttp_app(variant, upstream), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run_all(seconds: int, rounds: int) -> None:
    """Each variant pinned like the router in `kvrouter bench`, against the same upstream."""
    from router.tooling.bench.measure import Plan, measure_rate
    from router.tooling.bench.targets import Cores, Endpoint, launch, start_fast_upstreams
    from router.tooling.launch import free_port, stop_process, wait_http_ok

    cores = Cores.split()
    plan = Plan(rounds, seconds, 1, 64, 0, 0, 1.0, 0.0, 0, 0, 0, 0.0)
    loadgen = "wrk" if shutil.which("wrk") else "python"
    print(f"{cores.describe()}; load generator: {loadgen}", file=sys.stderr)
    best: dict[str, tuple[float, float]] = {}
    with ExitStack() as stack:
        upstream = start_fast_upstreams(stack, cores, count=1)[0]
        for variant in VARIANTS:
            port = free_port()
            argv = [sys.executable, "-m", "router.tooling.bench.layer_probe", "serve", variant,
                    "--port", str(port), "--upstream", f"127.0.0.1:{upstream.port}"]  # fmt: skip
            proc = launch(stack, argv, cores.proxy)
            wait_http_ok(f"http://127.0.0.1:{port}/health", proc=proc)
            target = Endpoint(variant, port, proc.pid)
            for _ in range(rounds):
                result = measure_rate(target, plan, cores, loadgen)
                rps, cpu = result["rps"], result.get("cpu_us_per_request", float("nan"))
                print(f"  {variant:14s} {rps:9,.0f} req/s  {cpu:6.0f} us CPU/request",
                      file=sys.stderr)  # fmt: skip
                old = best.get(variant, (0.0, float("inf")))
                best[variant] = (max(old[0], rps), min(old[1], cpu))
            stop_process(proc)
    print(f"{'variant':14s} {'req/s':>9s} {'CPU us/req':>11s}")
    for variant, (rps, cpu) in best.items():
        print(f"{variant:14s} {rps:9,.0f} {cpu:11.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    one = sub.add_parser("serve")
    one.add_argument("variant", choices=VARIANTS)
    one.add_argument("--port", type=int, required=True)
    one.add_argument("--upstream", required=True, help="HOST:PORT")
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    ns = parser.parse_args()
    if ns.command == "serve":
        uvloop.run(serve(ns.variant, ns.port, ns.upstream))
    else:
        run_all(ns.seconds, ns.rounds)


if __name__ == "__main__":
    main()
