"""The reference point: the proxy anyone would write first with aiohttp.

An aiohttp server and one ClientSession, the default asyncio loop (no uvloop): read the body,
forward it to an upstream picked by hashing `x-session-id`, read the answer, return it. No
retries, health checks, metrics or streaming.

Usage: python -m router.tooling.bench.naive_proxy --port P --upstream http://127.0.0.1:U [...]
"""

from __future__ import annotations

import argparse
import zlib

import aiohttp
from aiohttp import web

HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "host", "content-length"})
SESSION = web.AppKey("session", aiohttp.ClientSession)


def build_app(upstreams: list[str]) -> web.Application:
    app = web.Application()

    async def lifecycle(app: web.Application):
        async with aiohttp.ClientSession() as session:
            app[SESSION] = session
            yield

    async def forward(request: web.Request) -> web.Response:
        key = request.headers.get("x-session-id", "")
        upstream = upstreams[zlib.crc32(key.encode()) % len(upstreams)]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        async with app[SESSION].request(
            request.method, upstream + request.rel_url.raw_path_qs, data=body, headers=headers
        ) as resp:
            data = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(body=data, status=resp.status, headers=out)

    app.cleanup_ctx.append(lifecycle)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", action="append", required=True)
    ns = parser.parse_args()
    web.run_app(build_app(ns.upstream), host=ns.host, port=ns.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
