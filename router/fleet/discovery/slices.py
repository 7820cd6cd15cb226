"""From EndpointSlices (discovery.k8s.io/v1, as the API server's JSON) to the endpoints to route to.

Pure: no I/O. The slices are the wire objects (camelCase keys, `null` where Go has nil), not
the generated client models, which refuse a slice whose `endpoints` is null (a Service with no
pods has such a placeholder slice).

Per endpoint, as the API reference defines its conditions:
- `ready` true, or unset (nil means true): routed to (`ready=True`).
- not ready, but `serving` (nil: the value of ready) and `terminating` (nil: false): still
  answering but on its way out, so drained (`ready=False`).
- anything else (not yet ready, or no longer serving): left out.

The address is the endpoint's first one (the EndpointSlice controller writes exactly one). The
port is the slice port named `port_name` if set, else `port` if set, else the slice's only
port; a slice with several ports and no choice is an error naming `port_name`. Only slices
with an endpoint to route to need a port (a Service's placeholder slice has none).

The name is the pod's (`targetRef.name` when `targetRef.kind` is Pod), else `address:port`. An
endpoint seen in two slices (during slice churn, or once per address family of a dual-stack
Service) is kept once: the ready one wins, then IPv4 over IPv6 over FQDN, then the slice that
sorts first by name. The result is sorted by name.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from router.config import KubernetesDiscoverySettings

Json = Mapping[str, Any]

MAX_WEIGHT = 100.0
_FAMILY_ORDER = {"IPv4": 0, "IPv6": 1, "FQDN": 2}


class SliceError(ValueError):
    """The slices cannot be turned into workers as configured; the message says why and which
    setting fixes it."""


@dataclass(frozen=True, slots=True)
class PodRef:
    """The pod behind an endpoint: its name and, when the slice gives it, its uid."""

    name: str
    uid: str | None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One worker as the slices show it; `ready` False means draining."""

    name: str
    url: str
    ready: bool
    pod: PodRef | None


def endpoint_state(conditions: Json | None) -> bool | None:
    """True: ready; False: serving but terminating (drain it); None: leave it out."""
    conditions = conditions or {}
    ready = conditions.get("ready")
    if ready is None or ready:
        return True
    serving = conditions.get("serving")
    serving = False if serving is None else bool(serving)  # nil: ready's value, false here
    terminating = bool(conditions.get("terminating"))  # nil: not terminating
    return False if serving and terminating else None


def slice_name(item: Json) -> str:
    return str((item.get("metadata") or {}).get("name") or "(unnamed)")


def _port_label(port: Json) -> str:
    return f"{port.get('name') or '(unnamed)'}={port.get('port')}"


def slice_port(item: Json, settings: KubernetesDiscoverySettings) -> int:
    """The port every endpoint of `item` is reached at (see the module's docstring)."""
    ports: list[Json] = list(item.get("ports") or [])
    name = slice_name(item)
    listed = ", ".join(_port_label(p) for p in ports) or "none"
    if settings.port_name is not None:
        for port in ports:
            if port.get("name") == settings.port_name and port.get("port"):
                return int(port["port"])
        raise SliceError(
            f"EndpointSlice {name} has no port named {settings.port_name!r} (its ports: {listed})"
        )
    if settings.port is not None:
        return settings.port
    if len(ports) == 1 and ports[0].get("port"):
        return int(ports[0]["port"])
    if len(ports) > 1:
        raise SliceError(
            f"EndpointSlice {name} has several ports ({listed}): set "
            "discovery.kubernetes.port_name to pick one"
        )
    raise SliceError(
        f"EndpointSlice {name} gives no port number (its ports: {listed}): set "
        "discovery.kubernetes.port"
    )


def host_port(address: str, port: int) -> str:
    """`address:port`, an IPv6 address in brackets."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _endpoints_of(item: Json, settings: KubernetesDiscoverySettings) -> list[Endpoint]:
    found: list[tuple[Json, str, bool]] = []
    for endpoint in item.get("endpoints") or []:
        addresses = endpoint.get("addresses") or []
        state = endpoint_state(endpoint.get("conditions"))
        if addresses and state is not None:
            found.append((endpoint, str(addresses[0]), state))
    if not found:
        return []
    port = slice_port(item, settings)
    result = []
    for endpoint, address, ready in found:
        where = host_port(address, port)
        ref = endpoint.get("targetRef") or {}
        pod = None
        if ref.get("kind") == "Pod" and ref.get("name"):
            pod = PodRef(str(ref["name"]), ref.get("uid"))
        name = pod.name if pod is not None else where
        result.append(Endpoint(name, f"{settings.scheme}://{where}", ready, pod))
    return result


def endpoints(slices: Iterable[Json], settings: KubernetesDiscoverySettings) -> list[Endpoint]:
    """Every endpoint to route to or drain, once each, sorted by name. Raises `SliceError` when
    a slice's port cannot be chosen."""
    ordered = sorted(
        slices, key=lambda s: (_FAMILY_ORDER.get(s.get("addressType"), 3), slice_name(s))
    )
    chosen: dict[str, Endpoint] = {}
    for item in ordered:
        for endpoint in _endpoints_of(item, settings):
            seen = chosen.get(endpoint.name)
            if seen is None or (endpoint.ready and not seen.ready):
                chosen[endpoint.name] = endpoint
    return [chosen[name] for name in sorted(chosen)]


def parse_weight(raw: object) -> float | None:
    """An annotation's weight: a number in (0, 100]; None when absent or not such a number."""
    if not isinstance(raw, str):
        return None
    try:
        weight = float(raw.strip())
    except ValueError:
        return None
    if not math.isfinite(weight) or not 0 < weight <= MAX_WEIGHT:
        return None
    return weight
