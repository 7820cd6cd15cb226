"""What every handler shares: the app's one key (the composition root), JSON answers, the
request id, and reading a bounded body."""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from router.errors import BadRequest, PayloadTooLarge, RequestTimeout, RouterError
from router.http.client_errors import client_fault, describe

if TYPE_CHECKING:
    from router.root import Router

ROOT: web.AppKey[Router] = web.AppKey("root")


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


def error_response(err: RouterError, request_id: str) -> web.Response:
    return json_response(err.body(), err.status, {**err.headers, "x-request-id": request_id})


def request_id_of(request: web.Request) -> str:
    """The client's `x-request-id`, or 16 new hex digits. Request ids name requests in logs
    and are no secret: drawn from `random` (reseeded in every forked process), not from the
    system's entropy source, which costs a system call per request."""
    return request.headers.get("x-request-id") or f"{random.getrandbits(64):016x}"


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """The whole body, within `limit` bytes (`limits.max_body_bytes`) and `timeout` seconds
    from when the handler asks for it (`limits.body_timeout`); a 413 or a 408 otherwise."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"request body of {request.content_length} bytes is over the {limit}-byte limit "
            "(limits.max_body_bytes)"
        )
    try:
        content = request.content
        if content.is_eof():  # the whole body came with the head: take it, nothing to wait for
            body = content.read_nowait()
            if len(body) > limit:
                raise web.HTTPRequestEntityTooLarge(limit, len(body))
            return body
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        request.app[ROOT].metrics.client_timeouts.labels("body").inc()
        raise RequestTimeout(
            f"the request body did not arrive whole within {timeout}s (limits.body_timeout)"
        ) from None
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(
            f"request body is over the {limit}-byte limit (limits.max_body_bytes)"
        ) from None
    except web.RequestPayloadError as err:  # a broken chunked or compressed body
        fault = client_fault(err)
        what = describe(fault) if fault is not None else "it ended before its end"
        raise BadRequest(f"request body is malformed: {what}") from None
