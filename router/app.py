"""The aiohttp application: routes, the error middleware, and the lifecycle of background work.

Nothing runs at import. The client session, health checker and any other background task are
created in `cleanup_ctx` and closed or cancelled on shutdown.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from router.admin import admin_routes
from router.auth import TENANT
from router.balancer import Balancer
from router.config import Settings
from router.errors import BadRequest, NoHealthyWorker, NotFound, PayloadTooLarge, RouterError
from router.health import HealthChecker, PassiveHealth
from router.metrics import Metrics
from router.models import list_models
from router.placement import Placement
from router.proxy import Forwarder, Outgoing, upstream_headers
from router.session import KeyExtractor, RequestView, RoutingKey
from router.store import SessionStore, make_store
from router.upstream import UpstreamClient
from router.workers import WorkerPool

log = logging.getLogger("kvrouter")

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", WorkerPool)
BALANCER = web.AppKey("balancer", Balancer)
METRICS = web.AppKey("metrics", Metrics)
EXTRACTOR = web.AppKey("extractor", KeyExtractor)
PASSIVE = web.AppKey("passive", PassiveHealth)
CLIENT = web.AppKey("client", aiohttp.ClientSession)
FORWARDER = web.AppKey("forwarder", Forwarder)
STORE = web.AppKey("store", SessionStore)
PLACEMENT = web.AppKey("placement", Placement)
STOPPING = web.AppKey("stopping", dict[str, bool])

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None):
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


def error_response(err: RouterError, request_id: str) -> web.Response:
    return json_response(err.body(), err.status, {**err.headers, "x-request-id": request_id})


def request_id_of(request: web.Request) -> str:
    return request.headers.get("x-request-id") or secrets.token_hex(8)


_HTTP_ERRORS: dict[int, type[RouterError]] = {404: NotFound, 413: PayloadTooLarge}


@web.middleware
async def errors_to_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as OpenAI-shaped JSON with a request id; never a traceback."""
    try:
        return await handler(request)
    except RouterError as err:
        if err.status >= 500:
            request.app[METRICS].rejected.labels(err.code).inc()
        return error_response(err, request_id_of(request))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = _HTTP_ERRORS.get(exc.status, BadRequest)
        err = kind(exc.text if exc.status != 404 else f"no route for {request.path}")
        err.status = exc.status
        return error_response(err, request_id_of(request))
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        err = RouterError("internal router error; see the router log")
        return error_response(err, request_id_of(request))


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"request body of {request.content_length} bytes is over the {limit}-byte limit "
            "(limits.max_body_bytes)"
        )
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(
            f"request body is over the {limit}-byte limit (limits.max_body_bytes)"
        ) from None


async def proxy_handler(request: web.Request) -> web.StreamResponse:
    app = request.app
    body = await read_body(request, app[SETTINGS].limits.max_body_bytes)
    request_id = request_id_of(request)
    extractor = app[EXTRACTOR]
    view = RequestView(request.headers, request.query, body if extractor.needs_body else b"")
    key = extractor.extract(view, tenant=request.get(TENANT))
    out = Outgoing(
        request.method,
        request.rel_url.raw_path_qs,
        _without_router_key(upstream_headers(request, request_id), request),
        body,
        request_id,
        key,
    )
    return await app[FORWARDER].forward(request, out)


def _without_router_key(headers: CIMultiDict[str], request: web.Request) -> CIMultiDict[str]:
    """The router's own API key (auth on) is not passed on to workers."""
    if TENANT in request:
        headers.popall("Authorization", None)
    return headers


async def models_handler(request: web.Request) -> web.Response:
    app = request.app
    healthy = app[POOL].healthy()
    if not healthy:
        raise NoHealthyWorker()
    timeout = app[SETTINGS].timeouts.probe
    listing = await list_models(app[CLIENT], healthy, timeout)
    return json_response(listing, headers={"x-request-id": request_id_of(request)})


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    healthy = [w.name for w in app[POOL].healthy()]
    if app[STOPPING]["value"]:
        return json_response({"status": "stopping", "healthy_workers": healthy}, 503)
    if not healthy:
        return json_response({"status": "no healthy worker", "healthy_workers": []}, 503)
    return json_response({"status": "ready", "healthy_workers": healthy})


async def metrics_handler(request: web.Request) -> web.Response:
    app = request.app
    metrics = app[METRICS]
    for worker in app[POOL]:
        metrics.worker_healthy.labels(worker.name).set(1 if worker.available else 0)
        metrics.worker_inflight.labels(worker.name).set(worker.inflight)
    return web.Response(body=metrics.render(), headers={"Content-Type": metrics.content_type})


def client_session(settings: Settings) -> aiohttp.ClientSession:
    """The app's one general HTTP client (health probes, model listing, summaries; proxied
    traffic goes through `router.upstream`): keep-alive connections, no cookie jar."""
    connector = aiohttp.TCPConnector(
        limit=0,
        limit_per_host=settings.limits.max_connections_per_worker,
        keepalive_timeout=30,
        ttl_dns_cache=10,
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.timeouts.connect),
    )


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    settings, metrics, pool = app[SETTINGS], app[METRICS], app[POOL]
    session = client_session(settings)
    app[CLIENT] = session
    placement = Placement(app[BALANCER], app[STORE], settings.routing.pins, metrics)
    app[PLACEMENT] = placement
    upstream = UpstreamClient(
        connect_timeout=settings.timeouts.connect,
        max_per_worker=settings.limits.max_connections_per_worker,
    )
    app[FORWARDER] = Forwarder(
        upstream, placement, app[PASSIVE], metrics, settings.retries, settings.timeouts
    )
    checker = HealthChecker(pool, settings.health, session, metrics)
    checker.start()
    try:
        yield
    finally:
        await checker.stop()
        await placement.close()
        await upstream.close()
        await session.close()
        await app[STORE].close()


def session_locator(app: web.Application):
    """For the admin API: where a session's key hashes and where it would be served now."""

    async def locate(tenant: str, session: str) -> dict[str, object]:
        key = RoutingKey(tenant, session).hash_key or ""
        home = app[BALANCER].home(key)
        pinned = await app[STORE].get_pin(tenant, session)
        where: dict[str, object] = {
            "tenant": tenant,
            "session": session,
            "home": home and home.name,
            "pinned": pinned,
        }
        try:
            decision = app[BALANCER].choose(key, (), pinned)
        except NoHealthyWorker:
            return where
        return {**where, "worker": decision.worker.name, "route": decision.route.value}

    return locate


def build_app(settings: Settings) -> web.Application:
    """A router for `settings`; start it with aiohttp's AppRunner (see router.server)."""
    app = web.Application(
        middlewares=[errors_to_json], client_max_size=settings.limits.max_body_bytes
    )
    pool = WorkerPool.from_settings(settings.workers)
    metrics = Metrics(settings.metrics.prefix)
    app[SETTINGS] = settings
    app[POOL] = pool
    app[METRICS] = metrics
    app[BALANCER] = Balancer(pool, settings.routing)
    app[EXTRACTOR] = KeyExtractor(settings.session, settings.routing.prefix)
    app[PASSIVE] = PassiveHealth(pool, settings.health.passive, metrics)
    app[STORE] = make_store(settings.store)
    app[STOPPING] = {"value": False}
    app.cleanup_ctx.append(_lifecycle)
    from router.history_http import install_history

    install_history(app, settings)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/v1/models", models_handler)
    if settings.admin.token:
        app.router.add_routes(admin_routes(pool, settings.admin.token, session_locator(app)))
    for prefix in settings.proxy.prefixes:
        app.router.add_route("*", prefix.rstrip("/") + "/{tail:.*}", proxy_handler)
    return app
