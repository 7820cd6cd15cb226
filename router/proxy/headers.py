"""Which headers cross the proxy: hop-by-hop ones stop here; X-Forwarded-* and the request id
are added on the way to the worker, the router's own `x-kvrouter-*` on the way back."""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
        "te", "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length",
        "expect",
    }
)  # fmt: skip
WORKER_HEADER = "x-kvrouter-worker"
ROUTE_HEADER = "x-kvrouter-route"
REHOMED_HEADER = "x-kvrouter-rehomed"


def strip_hop_by_hop(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    """Copy end-to-end headers only, including any named by the Connection header."""
    kept = headers.copy()
    for name in HOP_BY_HOP.intersection(map(str.lower, headers.keys())):
        kept.popall(name, None)
    connection = headers.get("connection")
    if connection:
        for token in connection.split(","):
            kept.popall(token.strip(), None)
    return kept


def upstream_headers(
    request: web.BaseRequest, request_id: str, *, drop_authorization: bool = False
) -> CIMultiDict[str]:
    """The client's headers without hop-by-hop ones, plus X-Forwarded-* and the request id;
    without `Authorization` when it carried the router's own API key."""
    headers = strip_hop_by_hop(request.headers)
    if drop_authorization:
        headers.popall("Authorization", None)
    peer = request.remote or ""
    prior = headers.get("x-forwarded-for")
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    headers["X-Forwarded-Proto"] = request.scheme
    if request.host:
        headers.setdefault("X-Forwarded-Host", request.host)
    headers["x-request-id"] = request_id
    return headers
