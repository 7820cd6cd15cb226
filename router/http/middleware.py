"""The app's middleware, outermost first: errors become OpenAI-shaped JSON, then API keys name
the tenant (a pass-through when no keys are configured)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from router.errors import BadRequest, NotFound, PayloadTooLarge, RouterError
from router.http.auth import TENANT
from router.http.common import ROOT, error_response, request_id_of

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


@web.middleware
async def api_keys(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With `auth.keys` set, requests under /v1/ and the proxied prefixes carry a valid key,
    whose tenant becomes `request[TENANT]`; without keys, everything passes."""
    root = request.app[ROOT]
    authenticator = root.authenticator
    if authenticator.enabled and request.path.startswith(
        (*root.settings.proxy.prefixes, "/v1/")
    ):
        request[TENANT] = authenticator.tenant_of(request.headers.get("Authorization"))
    return await handler(request)


def middleware_stack() -> list[Callable[..., Awaitable[web.StreamResponse]]]:
    """The whole middleware order, outermost first."""
    return [errors_to_json, api_keys]
