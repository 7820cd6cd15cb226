"""The access log (`logging.access`): one record per request, written when its answer is done.

Off by default, and then not in the middleware stack at all, so it costs nothing. On, it is the
outermost middleware: it sees every answer as the client gets it, the router's own errors
included, and a client that went away as status 499. The router's own endpoints (`/healthz`,
`/readyz`, `/metrics`) are not logged: probes and scrapes would drown the traffic.

The session id is never written: `session` is a keyed BLAKE2b hash of the tenant and the id
(`logging.access.hash_key`), the same for every turn of a session and every replica sharing the
key, so a session's requests can be followed without the log holding what identifies it. The
query string is never written either (a session id may be sent there).

Fields (stable, documented API): `request_id`, `tenant`, `session`, `method`, `path`, `status`,
`worker`, `route`, `rehomed`, `duration_ms` (head in to answer done), `first_byte_ms` (head in to
the answer's first byte: a stream's first event; for an answer sent whole, when it was ready),
`bytes` (body bytes sent) and `client` (the peer's address). A field with no value (no worker
for a request the router refused) is left out.

Records are written straight to stderr, one `write` each, in the shape of every other record
(`router.logs`): with `logging.format: json` an object with `time`, `level`, `logger`
(`kvrouter.access`) and `message`, then the fields; with `text` a line like the other log
lines. Not through the logging module: at one record a request its record machinery and JSON
formatter cost about 50 us a request, this about 6 us
(`python -m router.tooling.bench.access_log_cost` measures the whole difference).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from hashlib import blake2b
from typing import Any

import orjson
from aiohttp import web

from router.config import LoggingSettings
from router.http.auth import TENANT
from router.logs import ACCESS_LOGGER, utf8_text
from router.placement.session import RoutingKey
from router.proxy.headers import REHOMED_HEADER, ROUTE_HEADER, WORKER_HEADER
from router.proxy.relay import FIRST_BYTE_AT

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]

# The request's routing key, set by the handlers that extract one; the session hash needs it.
ROUTING_KEY = web.RequestKey("routing_key", RoutingKey)

UNLOGGED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
CLIENT_GONE = 499  # nginx's status for a request whose client closed the connection
HASH_BYTES = 8


class AccessLog:
    """Writes the access records of one router."""

    def __init__(self, settings: LoggingSettings, fd: int | None = None) -> None:
        key = settings.access.hash_key
        self._key = key.encode() if key else b""
        self._json = settings.format == "json"
        self._fd = sys.stderr.fileno() if fd is None else fd

    def session_hash(self, key: RoutingKey | None) -> str | None:
        """The hex hash logged for `key`'s session, or None without a session."""
        if key is None or key.session is None:
            return None
        raw = f"{key.tenant}\x1f{key.session}".encode("utf-8", "surrogateescape")
        return blake2b(raw, key=self._key, digest_size=HASH_BYTES).hexdigest()

    def middleware(self) -> Middleware:
        """The middleware that writes one record per request (outermost in the stack)."""

        @web.middleware
        async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path in UNLOGGED_PATHS:
                return await handler(request)
            started = time.perf_counter()
            try:
                response = await handler(request)
            except (asyncio.CancelledError, ConnectionResetError):
                self.write(self.fields(request, None, started))
                raise
            self.write(self.fields(request, response, started))
            return response

        return access_log

    def fields(
        self, request: web.Request, response: web.StreamResponse | None, started: float
    ) -> dict[str, Any]:
        """One record's fields; `response` None: the client went away first."""
        now = time.perf_counter()
        key = request.get(ROUTING_KEY)
        tenant = request.get(TENANT) or (key.tenant if key is not None else None)
        found: dict[str, Any] = {
            "request_id": request.headers.get("x-request-id"),
            "tenant": tenant,
            "session": self.session_hash(key),
            "method": request.method,
            "path": request.rel_url.raw_path,
            "status": CLIENT_GONE,
            "duration_ms": round((now - started) * 1000, 3),
            "client": request.remote,
        }
        if response is not None:
            headers = response.headers
            first = response.get(FIRST_BYTE_AT, now)
            found.update(
                request_id=headers.get("x-request-id", found["request_id"]),
                status=response.status,
                worker=headers.get(WORKER_HEADER),
                route=headers.get(ROUTE_HEADER),
                rehomed=headers.get(REHOMED_HEADER),
                first_byte_ms=round((first - started) * 1000, 3),
                bytes=response.body_length if response.prepared else response.content_length,
            )
        return {name: value for name, value in found.items() if value is not None}

    def write(self, fields: dict[str, Any]) -> None:
        """One record, as one line written whole."""
        now = datetime.now(UTC)
        line = json_line(now, fields) if self._json else text_line(now, fields)
        while line:
            line = line[os.write(self._fd, line) :]


def json_line(now: datetime, fields: dict[str, Any]) -> bytes:
    """The record as `router.logs`' JSON formatter shapes every other one."""
    record = {"time": now.isoformat(), "level": "INFO", "logger": ACCESS_LOGGER,
              "message": "request", **fields}  # fmt: skip
    try:
        return orjson.dumps(record) + b"\n"
    except orjson.JSONEncodeError:  # a lone surrogate (a header byte that was not UTF-8)
        clean = {k: utf8_text(v) if isinstance(v, str) else v for k, v in record.items()}
        return orjson.dumps(clean) + b"\n"


def text_line(now: datetime, fields: dict[str, Any]) -> bytes:
    """The record as a text log line (`router.logs.TEXT_FORMAT`), its fields as name=value."""
    local = now.astimezone()
    stamp = local.strftime("%Y-%m-%d %H:%M:%S,") + f"{local.microsecond // 1000:03d}"
    pairs = " ".join(f"{name}={value}" for name, value in fields.items())
    return f"{stamp} INFO {ACCESS_LOGGER}: {pairs}\n".encode("utf-8", "backslashreplace")
