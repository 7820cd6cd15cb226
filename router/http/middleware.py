"""The app's middleware, outermost first: the access log when it is on
(`router.http.access_log`), errors become OpenAI-shaped JSON; then admission: each request
tells its connection's guard when it starts and ends (and is refused past the connection cap),
HTTP/0.9, absolute-form targets and paths with dot-segments are refused, API keys name the
tenant (a pass-through when no keys are configured); then the tenant's rate limits are checked
(`router.http.limits`; a pass-through when none is set)."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import unquote

import aiohttp
from aiohttp import web

from router.errors import (
    BadRequest,
    Misdirected,
    NotFound,
    PayloadTooLarge,
    RouterError,
    TooManyConnections,
)
from router.http.auth import TENANT
from router.http.common import ROOT, error_response, request_id_of
from router.http.limits import tenant_limits

if TYPE_CHECKING:
    from router.http.access_log import AccessLog
    from router.root import Router

log = logging.getLogger("kvrouter")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_ERRORS: dict[int, type[RouterError]] = {404: NotFound, 413: PayloadTooLarge}


@web.middleware
async def errors_to_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as OpenAI-shaped JSON with a request id; never a traceback."""
    try:
        return await handler(request)
    except RouterError as err:
        if err.status >= 500:
            request.app[ROOT].metrics.rejected.labels(err.code).inc()
        response = error_response(err, request_id_of(request))
        if err.close_connection:
            response.force_close()
        return response
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


_SEGMENT_SEPARATORS = re.compile(r"[/\\]")
_DECODINGS = 3


def has_dot_segment(raw_path: str) -> bool:
    """Whether the path, as sent or percent-decoded once or more, has a `.` or `..` segment,
    with `/` or `\\` as separators: `/v1/../x`, `/v1/%2e%2e/x`, `/v1/..%2fx`, `/v1/..\\x`,
    `/v1/./x`, `/v1/x/..`, `/v1/%252e%252e/x`. Dots inside a segment (`model.v2.gguf`) are
    not dot-segments."""
    path = raw_path
    for _ in range(_DECODINGS):
        if "." not in path and "%" not in path:
            return False
        if any(part in (".", "..") for part in _SEGMENT_SEPARATORS.split(path)):
            return True
        decoded = unquote(path, errors="surrogateescape")
        if decoded == path:
            return False
        path = decoded
    return any(part in (".", "..") for part in _SEGMENT_SEPARATORS.split(path))


def check_plain(request: web.Request) -> None:
    """The request must be HTTP/1.x and its target a plain path. An absolute-form target (`GET http://host/`)
    is what a client sends to a forward proxy: a 421, whatever the host, so the router never
    looks like an open proxy. A path with dot-segments is refused, never forwarded: it passes
    the `proxy.prefixes` check as sent, and a worker (or anything between) that resolves it
    would serve a path outside them. Refused rather than normalised, so the router and the
    worker can never disagree about which path was meant; no client library sends such
    paths."""
    if request.version < (1, 0):
        raise BadRequest("HTTP/0.9 requests are not served: send HTTP/1.0 or HTTP/1.1")
    target = request.raw_path
    if not target.startswith("/"):
        if "://" in target:
            raise Misdirected(
                "this router is a reverse proxy: send the path alone as the request target, "
                "not an absolute URL"
            )
        raise BadRequest("the request target must be a path starting with '/'")
    raw_path = request.rel_url.raw_path
    if has_dot_segment(raw_path):
        raise BadRequest(
            f"path {raw_path!r} has a '.' or '..' segment (also when percent-encoded or after "
            "a backslash); send the path without dot-segments"
        )


def authenticate(request: web.Request, root: Router) -> None:
    """With `auth.keys` set, requests under /v1/ and the proxied prefixes carry a valid key,
    whose tenant becomes `request[TENANT]`; without keys, everything passes."""
    authenticator = root.authenticator
    if authenticator.enabled and request.path.startswith(
        (*root.settings.proxy.prefixes, "/v1/")
    ):
        request[TENANT] = authenticator.tenant_of(request.headers.get("Authorization"))


@web.middleware
async def admission(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What a request passes before its handler, in this order (one middleware, since each
    layer of them costs a coroutine per request):

    1. the connection's guard (`router.http.connections`) is told that a request head came
       whole, and when its answer is done; on a connection past
       `limits.max_client_connections` the request is answered 503 and the connection closed
       (`/healthz` is answered, and the connection closed too);
    2. `check_plain`: HTTP/0.9, absolute-form targets and dot-segments are refused;
    3. `authenticate`: an API key names the tenant (a pass-through without keys)."""
    root = request.app[ROOT]
    guard = root.clients
    conn = guard.of(request)
    if conn is None:  # an app served without the guarded site
        check_plain(request)
        authenticate(request, root)
        return await handler(request)
    conn.request_started(request)
    try:
        if conn.refused and request.path != "/healthz":
            raise TooManyConnections(
                f"the router has {guard.open} client connections open, over its limit of "
                f"{guard.cap} (limits.max_client_connections); retry shortly"
            )
        check_plain(request)
        authenticate(request, root)
        response = await handler(request)
        if conn.refused:
            response.force_close()
        return response
    finally:
        conn.request_finished()


def middleware_stack(
    access_log: AccessLog | None = None,
) -> list[Callable[..., Awaitable[web.StreamResponse]]]:
    """The whole middleware order, outermost first; the access log, when it is on, outside
    everything, so it sees each answer as the client gets it."""
    stack = [errors_to_json, admission, tenant_limits]
    return stack if access_log is None else [access_log.middleware(), *stack]
