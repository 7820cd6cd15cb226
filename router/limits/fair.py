"""Weighted round robin across tenants: who leaves a queue next.

Each tenant waits in a line of its own. Turns go to tenants, not to requests: a tenant with
share s gets s turns for every one of a tenant with share 1, however many requests each has
waiting (stride scheduling: each tenant's next turn is at a virtual time that advances by 1/s
when it takes one, and the earliest goes first; ties go to the tenant that has waited longest).
A tenant that had nothing waiting starts level with the turn being served, so idle time earns
no credit and a burst after it cannot starve the others. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Items waiting per tenant, taken in weighted round robin (see the module docstring)."""

    def __init__(self) -> None:
        self._lines: dict[str, deque[T]] = {}
        self._turn: dict[str, float] = {}  # virtual time of each tenant's next turn
        self._shares: dict[str, float] = {}
        self._now = 0.0  # virtual time of the last turn taken
        self._length = 0

    def __len__(self) -> int:
        return self._length

    def waiting(self, tenant: str) -> int:
        line = self._lines.get(tenant)
        return len(line) if line is not None else 0

    def push(self, tenant: str, item: T, share: float = 1.0) -> None:
        line = self._lines.get(tenant)
        if line is None:
            line = self._lines[tenant] = deque()
            self._turn[tenant] = max(self._turn.get(tenant, self._now), self._now)
        self._shares[tenant] = share
        line.append(item)
        self._length += 1

    def pop(self) -> T:
        """The head of the line whose turn comes first; IndexError when nothing waits."""
        if not self._lines:
            raise IndexError("pop from an empty FairQueue")
        return self._take(min(self._lines, key=self._turn.__getitem__))

    def _take(self, tenant: str) -> T:
        line = self._lines[tenant]
        item = line.popleft()
        self._length -= 1
        self._now = max(self._now, self._turn[tenant])
        self._turn[tenant] += 1.0 / self._shares[tenant]
        if not line:
            self._idle(tenant)
        return item

    def pop_first(self, may_go: Callable[[str, int], bool]) -> T | None:
        """The head of the first line, in turn order, whose tenant `may_go(tenant, waiting)`
        allows; None if none does. A line passed over keeps its turn."""
        turn = self._turn
        for tenant in sorted(self._lines, key=turn.__getitem__):
            if may_go(tenant, len(self._lines[tenant])):
                return self._take(tenant)
        return None

    def remove(self, tenant: str, item: T) -> bool:
        """Take `item` out of its tenant's line (it stopped waiting); False if not there."""
        line = self._lines.get(tenant)
        if line is None:
            return False
        try:
            line.remove(item)
        except ValueError:
            return False
        self._length -= 1
        if not line:
            self._idle(tenant)
        return True

    def heaviest(self) -> str | None:
        """The tenant with the most waiting for its share (the one to refuse when full)."""
        if not self._lines:
            return None
        return max(self._lines, key=lambda t: len(self._lines[t]) / self._shares[t])

    def pop_newest(self, tenant: str) -> T:
        """The last item in `tenant`'s line (the one that has waited least)."""
        line = self._lines[tenant]
        item = line.pop()
        self._length -= 1
        if not line:
            self._idle(tenant)
        return item

    def _idle(self, tenant: str) -> None:
        """The tenant has nothing waiting: drop its line; forget turns that carry no debt."""
        del self._lines[tenant]
        if len(self._turn) > 2 * len(self._lines) + 64:
            now = self._now
            for name in [n for n, at in self._turn.items() if n not in self._lines and at <= now]:
                del self._turn[name]
                self._shares.pop(name, None)
