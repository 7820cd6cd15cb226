"""Operator API under /admin/: list workers, drain and restore them, change weights, and say
where a session is placed. Off unless `admin.token` is set; every call needs that bearer token."""

from __future__ import annotations

import hmac

from aiohttp import web

from router.errors import BadRequest, NotFound, RouterError
from router.fleet.workers import Worker
from router.http.common import ROOT, json_response
from router.placement.session import RoutingKey
from router.root import Router


class Unauthorized(RouterError):
    status = 401
    error_type = "invalid_request_error"
    code = "invalid_admin_token"


def _authorized(request: web.Request) -> Router:
    """The root, once the caller has shown the admin token; 404 while no token is set."""
    root = request.app[ROOT]
    token = root.settings.admin.token
    if not token:
        raise NotFound(f"no route for {request.path} (the admin API is off: admin.token)")
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), f"Bearer {token}".encode()
    ):
        raise Unauthorized("admin calls need 'Authorization: Bearer <admin.token>'")
    return root


def _worker(root: Router, name: str) -> Worker:
    worker = root.pool.get(name)
    if worker is None:
        raise NotFound(f"no worker named {name!r}; known: {sorted(w.name for w in root.pool)}")
    return worker


def _describe(root: Router, worker: Worker) -> dict[str, object]:
    return {
        **worker.snapshot(),
        **root.passive.describe(worker),
        **root.loads.describe(worker),
        **root.drains.describe(worker),
    }


async def list_workers(request: web.Request) -> web.Response:
    root = _authorized(request)
    return json_response({"workers": [_describe(root, w) for w in root.pool]})


async def drain(request: web.Request) -> web.Response:
    """Session-aware drain (`router.fleet.drain`): no new sessions; the sessions the worker
    holds finish on it until idle or `drain.timeout`. The worker stays listed until undrained."""
    root = _authorized(request)
    worker = _worker(root, request.match_info["name"])
    root.drain(worker)
    return json_response(_describe(root, worker))


async def undrain(request: web.Request) -> web.Response:
    """Back into service, as health checks see it (they kept probing while it drained)."""
    root = _authorized(request)
    worker = _worker(root, request.match_info["name"])
    root.undrain(worker)
    return json_response(_describe(root, worker))


async def set_weight(request: web.Request) -> web.Response:
    root = _authorized(request)
    worker = _worker(root, request.match_info["name"])
    try:
        weight = float((await request.json())["weight"])
    except (ValueError, KeyError, TypeError):
        raise BadRequest('expected a JSON body like {"weight": 2}') from None
    if not 0 < weight <= 100:
        raise BadRequest("weight must be greater than 0 and at most 100")
    root.set_weight(worker, weight)
    return json_response(_describe(root, worker))


async def where(request: web.Request) -> web.Response:
    """Where a session's key hashes (its ring home), its pin, and where it would be served
    now: the same placement code a request takes, without counting or writing anything."""
    root = _authorized(request)
    tenant = request.query.get("tenant", "default")
    session = request.match_info["session"]
    key = RoutingKey(tenant, session)
    home = root.balancer.ring_home(key.hash_key or "")
    pinned, decision = await root.placement.preview(key)
    found: dict[str, object] = {
        "tenant": tenant, "session": session, "home": home and home.name, "pinned": pinned,
    }  # fmt: skip
    if decision is not None:
        found.update(worker=decision.worker.name, route=decision.route.value)
    return json_response(found)


ROUTES = [
    web.get("/admin/workers", list_workers),
    web.post("/admin/workers/{name}/drain", drain),
    web.post("/admin/workers/{name}/undrain", undrain),
    web.put("/admin/workers/{name}/weight", set_weight),
    web.get("/admin/sessions/{session}", where),
]
