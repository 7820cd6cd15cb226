"""The HTTP side of per-tenant rate limits (`router.limits.limiter`): which requests count,
whose they are, and the x-ratelimit-* headers their answers carry.

A request counts when its route forwards it to a worker (the proxy routes and the chat route
of the orchestrator mode); the router's own endpoints (models, sessions, health, metrics) do
not. Its tenant is the API key's, else the tenant header's, else `session.default_tenant`: the
tenant its routing key and its stored history belong to. A request over its limit is refused
here, before its body is read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from router.http.auth import TENANT
from router.http.common import ROOT
from router.proxy.usage import METER

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

FORWARDING: web.AppKey[frozenset[Handler]] = web.AppKey("forwarding_handlers")
"""The handlers whose requests go on to a worker (set by the app that routes to them)."""
RATE_HEADERS = web.RequestKey("rate_headers", dict)


@web.middleware
async def tenant_limits(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Checks a forwarded request against its tenant's rate limits (a 429 past them) and, once
    it is answered, debits its reply's tokens; a pass-through while no limit is set."""
    root = request.app[ROOT]
    limiter = root.limiter
    if not limiter.enabled or request.match_info.handler not in request.app[FORWARDING]:
        return await handler(request)
    tenant = request.get(TENANT) or root.extractor.tenant(request.headers)
    account = await limiter.check(tenant)
    if account is None:
        return await handler(request)
    request[RATE_HEADERS] = account.headers
    if account.meter is not None:
        request[METER] = account.meter
    try:
        return await handler(request)
    finally:
        await limiter.settle(account)


async def rate_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: an allowed request's answer gets its tenant's x-ratelimit-*
    figures (a refused one has them on its 429 already)."""
    found = request.get(RATE_HEADERS)
    if found:
        response.headers.update(found)
