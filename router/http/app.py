"""The aiohttp applications over a composition root: the public app (routes, the middleware
order, and the root's lifecycle tied to the app's) and the admin app, served on a listener of
its own (`admin.listen`). Neither holds wiring of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from router.http import admin
from router.http.common import ROOT
from router.http.handlers import healthz, metrics_handler, models_handler, proxy_handler, readyz
from router.http.limits import FORWARDING, rate_headers
from router.http.middleware import errors_to_json, middleware_stack
from router.orchestrator import http as history_http
from router.root import Router


def build_app(root: Router) -> web.Application:
    """The router's app; start it with aiohttp's AppRunner (see router.server)."""
    settings = root.settings
    app = web.Application(
        middlewares=middleware_stack(root.access_log),
        client_max_size=settings.limits.max_body_bytes,
    )
    app[ROOT] = root
    app[FORWARDING] = frozenset({proxy_handler, history_http.chat_handler})
    app.on_response_prepare.append(rate_headers)
    app.cleanup_ctx.append(_lifecycle)
    app.on_response_prepare.append(history_http.recalled_header)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/v1/models", models_handler)
    app.router.add_routes(history_http.routes(settings.proxy.prefixes))
    for prefix in settings.proxy.prefixes:
        app.router.add_route("*", prefix.rstrip("/") + "/{tail:.*}", proxy_handler)
    return app


ADMIN_BODY_BYTES = 64 * 1024


def build_admin_app(root: Router) -> web.Application:
    """The operator API (`/admin/...`) over the same root, for the admin listener only. The
    root's lifecycle belongs to the public app: start this one after it, stop it before."""
    app = web.Application(middlewares=[errors_to_json], client_max_size=ADMIN_BODY_BYTES)
    app[ROOT] = root
    app.router.add_routes(admin.ROUTES)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    root = app[ROOT]
    await root.start()
    try:
        yield
    finally:
        await root.stop()
