"""The router's own endpoints and the catch-all proxy handler."""

from __future__ import annotations

from aiohttp import web

from router.errors import NoHealthyWorker
from router.http.access_log import ROUTING_KEY
from router.http.auth import TENANT
from router.http.common import ROOT, json_response, read_body, request_id_of
from router.http.models import list_models
from router.placement.session import RequestView, query_values
from router.proxy.forward import Outgoing
from router.proxy.headers import upstream_headers


async def proxy_handler(request: web.Request) -> web.StreamResponse:
    """Any request under a proxied prefix: extract its key, forward it unchanged."""
    root = request.app[ROOT]
    limits = root.settings.limits
    body = await read_body(request, limits.max_body_bytes, limits.body_timeout)
    request_id = request_id_of(request)
    extractor = root.extractor
    query = query_values(request.rel_url.raw_query_string)
    view = RequestView(request.headers, query, body if extractor.needs_body else b"")
    tenant = request.get(TENANT)  # set (never to None) when an API key named the tenant
    key = request[ROUTING_KEY] = extractor.extract(view, tenant=tenant)
    headers = upstream_headers(
        request, request_id, trusted=root.trusted_proxies, drop_authorization=tenant is not None
    )
    out = Outgoing(request.method, request.rel_url.raw_path_qs, headers, body, request_id, key)
    return await root.forwarder.forward(request, out)


async def models_handler(request: web.Request) -> web.Response:
    root = request.app[ROOT]
    healthy = root.pool.healthy()
    if not healthy:
        raise NoHealthyWorker()
    listing = await list_models(root.client, healthy, root.settings.timeouts.probe)
    return json_response(listing, headers={"x-request-id": request_id_of(request)})


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    root = request.app[ROOT]
    healthy = [w.name for w in root.pool.healthy()]
    discovery = root.membership.status.describe()
    if root.stopping:
        status = {"status": "stopping", "healthy_workers": healthy, "discovery": discovery}
        return json_response(status, 503)
    if not healthy:
        status = {"status": "no healthy worker", "healthy_workers": [], "discovery": discovery}
        return json_response(status, 503)
    return json_response({"status": "ready", "healthy_workers": healthy, "discovery": discovery})


async def metrics_handler(request: web.Request) -> web.Response:
    root = request.app[ROOT]
    root.refresh_gauges()
    metrics = root.metrics
    return web.Response(body=metrics.render(), headers={"Content-Type": metrics.content_type})
