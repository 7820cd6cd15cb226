"""What every discovery source shares: the member it reports and the two calls it makes.

A source runs until cancelled. Each time it learns the whole list of workers it calls
`sink.publish(members)` with all of them (not a difference: the membership works the
difference out, so a missed event cannot leave a worker behind). When a lookup fails it calls
`sink.failed(reason)` and keeps trying, with its own backoff; the membership keeps the last
good list meanwhile. A source never touches the pool itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Member:
    """One worker as a source sees it. `name` is its identity (a pod name, `host:port`);
    `ready` False means it still serves but is on its way out (a terminating pod): it is
    drained, not dropped. `engine` None means the top-level `engine`."""

    name: str
    url: str
    weight: float = 1.0
    engine: str | None = None
    ready: bool = True


class Sink(Protocol):
    """Where a source reports to (the membership)."""

    def publish(self, members: Sequence[Member]) -> None:
        """The complete current list of workers."""

    def failed(self, reason: str) -> None:
        """A lookup failed; `reason` is one line naming what failed."""


class Source(Protocol):
    """A discovery source: `kind` is its name in `discovery.source`."""

    kind: str

    async def run(self, sink: Sink) -> None:
        """Publish the list whenever it is known or changes; report failures and retry;
        return only by being cancelled."""
