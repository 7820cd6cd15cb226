"""The consistent-hash ring (uhashring's continuum), walked without copying it.

Every configured worker is on the ring whatever its health, so a key's place never depends on
health; walks go from the key's position to the next distinct workers.
"""

from __future__ import annotations

from bisect import bisect
from collections.abc import Iterator, Sequence
from hashlib import md5

from uhashring import HashRing

from router.fleet.workers import Worker


def key_point(key: str) -> int:
    """Where `key` falls on the ring: uhashring's default hash (the MD5 digest as a number),
    computed without its hex round trip; `Ring` checks once that the two agree."""
    return int.from_bytes(md5(key.encode()).digest())


class Ring:
    """Immutable once built; rebuild it when membership or weights change."""

    __slots__ = ("_last", "_owners", "_points", "_size")

    def __init__(self, workers: Sequence[Worker], vnodes: int) -> None:
        nodes = {
            w.name: {"instance": w, "weight": 1, "vnodes": max(1, round(vnodes * w.weight))}
            for w in workers
        }
        ring = HashRing(nodes=nodes)
        if ring.hashi("ring") != key_point("ring"):
            raise RuntimeError("uhashring's key hash is no longer MD5: see Ring.key_point")
        by_name = {w.name: w for w in workers}
        points = ring.get_points()
        self._points = [point for point, _ in points]
        self._owners = [by_name[name] for _, name in points]
        self._size = len(by_name)
        self._last: tuple[str, int] | None = None

    def __len__(self) -> int:
        """How many workers are on the ring."""
        return self._size

    def start(self, key: str) -> int:
        """The index of the first ring point at or after the key's position (the key's ring
        home owns it); the ring must not be empty. The last key's is kept: placement asks for
        the ring home of the key it has just placed (to keep its pin in step), and an MD5 is
        the dearest step of a decision."""
        last = self._last
        if last is not None and last[0] == key:
            return last[1]
        index = bisect(self._points, key_point(key))
        if index == len(self._points):
            index = 0
        self._last = (key, index)
        return index

    def owner(self, index: int) -> Worker:
        return self._owners[index]

    def home(self, key: str) -> Worker | None:
        """The first worker at or after the key's position, whatever its health."""
        if not self._size:
            return None
        return self._owners[self.start(key)]

    def walk(self, key: str) -> Iterator[Worker]:
        """Each worker once, in ring order from the key's position."""
        if not self._size:
            return iter(())
        index = self.start(key)
        return self._walk(index, self._owners[index])

    def after(self, index: int) -> Iterator[Worker]:
        """Each worker but the owner of `index` once, in ring order after it (lazily: nothing
        is done until the first worker is asked for)."""
        return self._walk(index, None)

    def _walk(self, index: int, first: Worker | None) -> Iterator[Worker]:
        owners = self._owners
        count = len(owners)
        if first is not None:
            yield first
        seen = {owners[index].name}
        if len(seen) == self._size:
            return
        for step in range(1, count):
            worker = owners[(index + step) % count]
            if worker.name not in seen:
                seen.add(worker.name)
                yield worker
                if len(seen) == self._size:
                    return
