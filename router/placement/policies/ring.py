"""The consistent-hash ring (uhashring's continuum), walked without copying it.

Every configured worker is on the ring whatever its health, so a key's place never depends on
health; walks go from the key's position to the next distinct workers.
"""

from __future__ import annotations

from bisect import bisect
from collections.abc import Iterator, Sequence

from uhashring import HashRing

from router.fleet.workers import Worker


class Ring:
    """Immutable once built; rebuild it when membership or weights change."""

    __slots__ = ("_hash", "_owners", "_points", "_size")

    def __init__(self, workers: Sequence[Worker], vnodes: int) -> None:
        nodes = {
            w.name: {"instance": w, "weight": 1, "vnodes": max(1, round(vnodes * w.weight))}
            for w in workers
        }
        ring = HashRing(nodes=nodes)
        by_name = {w.name: w for w in workers}
        points = ring.get_points()
        self._points = [point for point, _ in points]
        self._owners = [by_name[name] for _, name in points]
        self._hash = ring.hashi
        self._size = len(by_name)

    def _start(self, key: str) -> int:
        index = bisect(self._points, self._hash(key))
        return 0 if index == len(self._points) else index

    def home(self, key: str) -> Worker | None:
        """The first worker at or after the key's position, whatever its health."""
        if not self._size:
            return None
        return self._owners[self._start(key)]

    def walk(self, key: str) -> Iterator[Worker]:
        """Each worker once, in ring order from the key's position."""
        if not self._size:
            return
        owners = self._owners
        count = len(owners)
        index = self._start(key)
        first = owners[index]
        yield first
        seen = {first.name}
        for step in range(1, count):
            worker = owners[(index + step) % count]
            if worker.name not in seen:
                seen.add(worker.name)
                yield worker
                if len(seen) == self._size:
                    return
