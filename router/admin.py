"""Operator API under /admin/: list workers, drain and restore them, change weights, and say
where a session is placed. Off unless `admin.token` is set; every call needs that bearer token."""

from __future__ import annotations

import hmac

from aiohttp import web

from router.errors import BadRequest, NotFound, RouterError
from router.workers import Worker, WorkerPool, WorkerState


class Unauthorized(RouterError):
    status = 401
    error_type = "invalid_request_error"
    code = "invalid_admin_token"


def _check_token(request: web.Request, token: str) -> None:
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise Unauthorized("admin calls need 'Authorization: Bearer <admin.token>'")


def _worker(pool: WorkerPool, name: str) -> Worker:
    worker = pool.get(name)
    if worker is None:
        raise NotFound(f"no worker named {name!r}; known: {sorted(w.name for w in pool)}")
    return worker


def admin_routes(pool: WorkerPool, token: str, locate) -> list[web.RouteDef]:
    """Routes bound to this app's pool; `locate(tenant, session)` says where a session goes."""

    async def list_workers(request: web.Request) -> web.Response:
        _check_token(request, token)
        return web.json_response({"workers": [w.snapshot() for w in pool]})

    async def drain(request: web.Request) -> web.Response:
        """New sessions and fallbacks avoid a draining worker; its open streams finish."""
        _check_token(request, token)
        worker = _worker(pool, request.match_info["name"])
        pool.set_state(worker, WorkerState.DRAINING)
        return web.json_response(worker.snapshot())

    async def undrain(request: web.Request) -> web.Response:
        """Back into service once `health.rise` probes pass: it may have been restarted."""
        _check_token(request, token)
        worker = _worker(pool, request.match_info["name"])
        if worker.state is WorkerState.DRAINING:
            pool.set_state(worker, WorkerState.UNHEALTHY)
        return web.json_response(worker.snapshot())

    async def set_weight(request: web.Request) -> web.Response:
        _check_token(request, token)
        worker = _worker(pool, request.match_info["name"])
        try:
            weight = float((await request.json())["weight"])
        except (ValueError, KeyError, TypeError):
            raise BadRequest('expected a JSON body like {"weight": 2}') from None
        if not 0 < weight <= 100:
            raise BadRequest("weight must be greater than 0 and at most 100")
        pool.set_weight(worker, weight)
        return web.json_response(worker.snapshot())

    async def where(request: web.Request) -> web.Response:
        _check_token(request, token)
        tenant = request.query.get("tenant", "default")
        return web.json_response(await locate(tenant, request.match_info["session"]))

    return [
        web.get("/admin/workers", list_workers),
        web.post("/admin/workers/{name}/drain", drain),
        web.post("/admin/workers/{name}/undrain", undrain),
        web.put("/admin/workers/{name}/weight", set_weight),
        web.get("/admin/sessions/{session}", where),
    ]
