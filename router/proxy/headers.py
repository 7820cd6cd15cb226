"""Which headers cross the proxy: hop-by-hop ones stop here; X-Forwarded-* and the request id
are added on the way to the worker, the router's own `x-kvrouter-*` on the way back.

Forwarding headers (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`) say who the client is and how it
connected; only a proxy may say so. From a peer in `proxy.trusted_proxies` they are kept and
`X-Forwarded-For` is appended to; from any other peer (every peer by default) the client's are
dropped and replaced by what the router saw: the peer's address, the scheme and the Host.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

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


class TrustedProxies:
    """The peers whose forwarding headers are believed: `proxy.trusted_proxies`."""

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self._networks = tuple(ipaddress.ip_network(n) for n in networks)

    def trusts(self, peer: str | None) -> bool:
        if not self._networks or not peer:
            return False
        try:
            address = ipaddress.ip_address(peer.partition("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)


def _is_forwarding(name: str) -> bool:
    lowered = name.lower()
    return lowered in ("forwarded", "x-real-ip") or lowered.startswith("x-forwarded-")


def upstream_headers(
    request: web.BaseRequest,
    request_id: str,
    *,
    trusted: TrustedProxies,
    drop_authorization: bool = False,
) -> CIMultiDict[str]:
    """The client's headers without hop-by-hop ones, plus X-Forwarded-* and the request id;
    without `Authorization` when it carried the router's own API key. A peer that `trusted`
    does not name has its own forwarding headers replaced (see the module's docstring)."""
    headers = strip_hop_by_hop(request.headers)
    if drop_authorization:
        headers.popall("Authorization", None)
    # the body forwarded is the one the server decoded: a client's gzip is not passed on
    headers.popall("Content-Encoding", None)
    peer = request.remote or ""
    host = request.headers.get("Host")
    if trusted.trusts(peer):
        prior = ", ".join(headers.popall("X-Forwarded-For", ()))
        headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        headers.setdefault("X-Forwarded-Proto", request.scheme)
        if host:
            headers.setdefault("X-Forwarded-Host", host)
    else:
        for name in {n for n in headers if _is_forwarding(n)}:
            headers.popall(name, None)
        headers["X-Forwarded-For"] = peer
        headers["X-Forwarded-Proto"] = request.scheme
        if host:
            headers["X-Forwarded-Host"] = host
    headers["x-request-id"] = request_id
    return headers
