"""The proxy's HTTP/1.1 client: pooled keep-alive connections to workers, parsed by httptools.

A general-purpose client pays for features a reverse proxy never uses on its hot path (cookie
jars, redirects, decompression, per-request timer objects, several layers of stream readers).
This one sends a request it is handed as bytes and parses the answer with `httptools` (llhttp,
the parser Node.js uses) straight into a `Response`: status, headers, and the body as chunks,
de-chunked when the worker used chunked encoding.

Errors say where the exchange failed, which is what the retry decision needs:
`ConnectFailed` (nothing was sent; `refused` when nothing listens), `ClosedBeforeHead` (the
worker took the request and closed without a status line), `ProtocolError` (including
`HeadTooLarge`, a head over `MAX_HEAD_BYTES`), and
`BodyBroken` (the body stopped short). Waiting for the head is bounded by the caller's
timeout; waiting between body chunks by `idle`.

One job per module, each importing only the ones listed before it:
  errors      the error classes
  request     `Origin` and the request as bytes on the wire
  connection  one connection: writes a request, parses its answer, back-pressure; no pool
  pool        per-worker idle connections and cap; `ConnectionLease` is the only way back
  exchange    `Response`: the caller's view of one answer, holding its lease
  client      `UpstreamClient`: a pool per worker, connecting, the stale-connection retry
"""

from router.proxy.upstream.client import UpstreamClient
from router.proxy.upstream.connection import HIGH_WATER, MAX_HEAD_BYTES
from router.proxy.upstream.errors import (
    BodyBroken,
    ClosedBeforeHead,
    ConnectFailed,
    HeadTooLarge,
    ProtocolError,
    UpstreamFailure,
)
from router.proxy.upstream.exchange import Response
from router.proxy.upstream.pool import IDLE_KEEPALIVE
from router.proxy.upstream.request import Origin, encode_request

__all__ = [
    "HIGH_WATER",
    "IDLE_KEEPALIVE",
    "MAX_HEAD_BYTES",
    "BodyBroken",
    "ClosedBeforeHead",
    "ConnectFailed",
    "HeadTooLarge",
    "Origin",
    "ProtocolError",
    "Response",
    "UpstreamClient",
    "UpstreamFailure",
    "encode_request",
]
