"""Where the worker list comes from: static settings, DNS, or Kubernetes EndpointSlices.

Each source reports whole lists to the membership (`router.fleet.membership`), the one path
by which workers join, change and leave.
"""

from __future__ import annotations

from router.config import Settings
from router.fleet.discovery.base import Member, Sink, Source

__all__ = ["Member", "Sink", "Source", "build_source"]


def build_source(settings: Settings) -> Source:
    """The source `discovery.source` names, built from its settings (the Kubernetes client
    library is imported only when that source is used)."""
    discovery = settings.discovery
    if discovery.source == "dns" and discovery.dns is not None:
        from router.fleet.discovery.dns import DnsSource

        return DnsSource(discovery.dns, settings.engine)
    if discovery.source == "kubernetes" and discovery.kubernetes is not None:
        from router.fleet.discovery.kubernetes import KubernetesSource

        return KubernetesSource(discovery.kubernetes, settings.engine)
    from router.fleet.discovery.static import StaticSource

    return StaticSource(settings.workers, settings.engine)
