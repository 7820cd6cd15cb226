"""The static source: `workers:` from router.yaml, published once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from router.config import WorkerSettings
from router.fleet.discovery.base import Member, Sink


def static_members(workers: Sequence[WorkerSettings], default_engine: str) -> list[Member]:
    return [
        Member(w.display_name, w.url, w.weight, w.engine or default_engine) for w in workers
    ]


class StaticSource:
    """Publishes the configured list at once, then waits; a reload starts a new one."""

    kind = "static"

    def __init__(self, workers: Sequence[WorkerSettings], default_engine: str) -> None:
        self._members = static_members(workers, default_engine)

    async def run(self, sink: Sink) -> None:
        sink.publish(self._members)
        await asyncio.Event().wait()
