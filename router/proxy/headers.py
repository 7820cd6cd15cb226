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


# never crosses to the worker: hop-by-hop, and the client's Content-Encoding (the body
# forwarded is the one the server decoded: a client's gzip is not passed on); from a peer not
# trusted, the forwarding headers too (and every `X-Forwarded-*`)
_NOT_FORWARDED = HOP_BY_HOP | {"content-encoding"}
_FORWARDING = frozenset({"forwarded", "x-real-ip"})
_DROPPED = {
    (trusted, with_key): _NOT_FORWARDED
    | (frozenset() if trusted else _FORWARDING)
    | ({"authorization"} if with_key else frozenset())
    for trusted in (False, True)
    for with_key in (False, True)
}


def upstream_headers(
    request: web.BaseRequest,
    request_id: str,
    *,
    trusted: TrustedProxies,
    drop_authorization: bool = False,
) -> CIMultiDict[str]:
    """The client's headers without hop-by-hop ones, plus X-Forwarded-* and the request id;
    without `Authorization` when it carried the router's own API key. A peer that `trusted`
    does not name has its own forwarding headers replaced (see the module's docstring).

    One pass over the client's headers, in their order; the request id takes the place of
    the client's own `x-request-id` (its first), or comes last."""
    source = request.headers
    peer = request.remote or ""
    trust = trusted.trusts(peer)
    dropped = _DROPPED[trust, drop_authorization]
    connection = source.get("connection")
    if connection:
        dropped = dropped | {token.strip().lower() for token in connection.split(",")}
    headers: CIMultiDict[str] = CIMultiDict()
    add = headers.add
    has_id = False
    for name, value in source.items():
        lowered = name.lower()
        if lowered in dropped or (not trust and lowered.startswith("x-forwarded-")):
            continue
        if lowered == "x-request-id":
            if not has_id:
                add("x-request-id", request_id)
                has_id = True
            continue
        add(name, value)
    host = source.get("Host")
    if trust:
        prior = ", ".join(headers.popall("X-Forwarded-For", ()))
        headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        headers.setdefault("X-Forwarded-Proto", request.scheme)
        if host:
            headers.setdefault("X-Forwarded-Host", host)
    else:
        add("X-Forwarded-For", peer)
        add("X-Forwarded-Proto", request.scheme)
        if host:
            add("X-Forwarded-Host", host)
    if not has_id:
        add("x-request-id", request_id)
    return headers
