"""What every placement policy shares: the decision it returns, the protocol it implements,
and the one test of whether a worker may take a request.

Policies are pure and synchronous: they read worker state (health, weight, in-flight count)
and never do I/O, so they are tested with plain values and cost microseconds.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from typing import NamedTuple, Protocol

from router.fleet.workers import Worker, WorkerState


class Route(enum.StrEnum):
    """Why a request went where it went; sent as `x-kvrouter-route`."""

    AFFINITY = "affinity"
    SPILL = "spill"
    FALLBACK = "fallback"
    UNKEYED = "unkeyed"


class Rehome(enum.StrEnum):
    """Why a keyed request landed away from the worker holding its cache."""

    DEAD = "dead"
    EJECTED = "ejected"
    DRAINING = "draining"
    OVERLOADED = "overloaded"
    RETRY = "retry"
    SLOW_START = "slow_start"
    RETURN_HOME = "return_home"
    SATURATED = "saturated"


class Decision(NamedTuple):
    """Where a request goes, why, which worker holds its key's cache (`cache_holder`: the
    pinned worker after a move, else the ring home), and, when those differ, why it was moved
    (`rehomed`). A named tuple: immutable like a frozen dataclass, and a third of its cost to
    build (one is built per attempt)."""

    worker: Worker
    route: Route
    cache_holder: Worker | None = None
    rehomed: Rehome | None = None


def can_take(worker: Worker, exclude: Collection[str]) -> bool:
    """The one availability test every policy applies: healthy, not ejected, not draining,
    and not already tried for this request."""
    return worker.available and worker.name not in exclude


def available(workers: Sequence[Worker]) -> tuple[Worker, ...]:
    """The workers that can take new requests. A worker's state changes only through the
    pool, which tells every policy, so policies keep this snapshot and refresh it then."""
    return tuple(w for w in workers if w.available)


def candidates(ready: Sequence[Worker], exclude: Collection[str]) -> Sequence[Worker]:
    """`ready` (an `available` snapshot) without the workers already tried for this request:
    the set `can_take` accepts, without testing each worker's state again."""
    if not exclude:
        return ready
    return [w for w in ready if w.name not in exclude]


class Rotation:
    """Picks the worker with the lowest score, rotating among ties so that equal workers
    share the load."""

    __slots__ = ("_turn",)

    def __init__(self) -> None:
        self._turn = 0

    def lowest(self, pool: Sequence[Worker], scores: list[float]) -> Worker:
        self._turn = turn = (self._turn + 1) % len(pool)
        best = min(scores)
        try:
            return pool[scores.index(best, turn)]
        except ValueError:
            return pool[scores.index(best)]


def why_not(worker: Worker, exclude: Collection[str], now: float) -> Rehome:
    """Why `worker` cannot take this request, for a worker `can_take` refused."""
    if worker.draining:
        return Rehome.DRAINING
    if worker.state is WorkerState.UNHEALTHY:
        return Rehome.EJECTED if worker.ejected_until > now else Rehome.DEAD
    return Rehome.RETRY


class Policy(Protocol):
    """Chooses a worker for a key. `keyed` policies place by key (and so honour pins and
    count re-homing); the others ignore keys and report every request as `unkeyed`."""

    name: str
    keyed: bool

    def update(self, workers: Sequence[Worker]) -> None:
        """Membership, state or weights changed; rebuild whatever depends on them."""

    def ring_home(self, key: str) -> Worker | None:
        """Where `key` belongs when every worker is up; None for policies that ignore keys."""

    def choose(
        self,
        key: str | None,
        exclude: Collection[str] = (),
        prefer: Worker | None = None,
        size: int = 0,
    ) -> Decision:
        """A worker for `key`, never one in `exclude`; `prefer` (a pinned worker) is tried
        first by keyed policies; `size` is the request body's length in bytes (what a move
        would recompute). Raises NoHealthyWorker when no worker can take it."""
