"""The aiohttp application of one simulated worker; all its state hangs off the app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from router.sim import completions, embeddings, endpoints
from router.sim.appkeys import ENGINE, REGISTRY
from router.sim.engine import SimEngine
from router.sim.metrics import build_registry
from router.sim.options import SimOptions

_MAX_BODY_BYTES = 64 * 1024 * 1024
WORKER_HEADER = "x-sim-worker"


def build_sim_app(opts: SimOptions) -> web.Application:
    """A fresh worker: its own engine, prefix cache and metrics registry."""
    app = web.Application(client_max_size=_MAX_BODY_BYTES)
    engine = SimEngine(opts)
    app[ENGINE] = engine
    app[REGISTRY] = build_registry(engine)
    app.on_response_prepare.append(_worker_header(opts.name))
    app.router.add_routes(
        [
            web.post("/v1/chat/completions", completions.chat_completions),
            web.post("/v1/completions", completions.text_completions),
            web.post("/v1/embeddings", embeddings.embeddings),
            web.get("/v1/models", endpoints.models),
            web.get("/health", endpoints.health),
            web.get("/metrics", endpoints.metrics),
            web.post("/tokenize", endpoints.tokenize_prompt),
            web.get("/sim/stats", endpoints.stats),
            web.get("/sim/fault", endpoints.show_faults),
            web.post("/sim/fault", endpoints.change_faults),
            web.post("/sim/reset-cache", endpoints.reset_cache),
        ]
    )
    return app


def _worker_header(
    name: str,
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    async def add_header(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers[WORKER_HEADER] = name

    return add_header
