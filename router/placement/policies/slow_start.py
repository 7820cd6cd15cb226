"""Slow start: a worker that rejoins gets its share back gradually over a window.

Its share grows linearly from `min_share` to 1. Load-aware policies scale its weight by the
share; hash policies send it a key only when the key's stable fraction is below the share, so
as the share grows more of its own keys come back and none flaps back and forth.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence

from router.config import SlowStartSettings
from router.fleet.workers import Worker

Clock = Callable[[], float]
_FRACTION_SCALE = float(1 << 32)


def key_fraction(key: str) -> float:
    """A stable number in [0, 1) for `key`, the same in every router replica."""
    return zlib.crc32(key.encode()) / _FRACTION_SCALE


class SlowStart:
    """Tracks which workers rejoined within the window. Workers that become available while
    none was (the pool's first view, a discovery source's first list) are not rejoining:
    there is no one to shield them from."""

    def __init__(self, settings: SlowStartSettings, clock: Clock = time.monotonic) -> None:
        self._window = settings.window
        self._min_share = settings.min_share
        self._clock = clock
        self._since: dict[str, float] = {}
        self._available: set[str] | None = None

    def observe(self, workers: Sequence[Worker]) -> None:
        """Called on every pool change: a worker newly available (or newly added) rejoins."""
        available = {w.name for w in workers if w.available}
        if self._available and self._window > 0:  # with none available, nothing to protect
            now = self._clock()
            for name in available - self._available:
                self._since[name] = now
        for name in list(self._since):
            if name not in available:
                del self._since[name]
        self._available = available

    @property
    def warming(self) -> bool:
        """Whether any worker is still ramping up; workers past the window are dropped."""
        if not self._since:
            return False
        now = self._clock()
        for name in [n for n, since in self._since.items() if now - since >= self._window]:
            del self._since[name]
        return bool(self._since)

    def share(self, worker: Worker) -> float:
        """1.0 for a worker at full share; less while it warms up."""
        if not self._since:
            return 1.0
        since = self._since.get(worker.name)
        if since is None:
            return 1.0
        elapsed = self._clock() - since
        if elapsed >= self._window:
            del self._since[worker.name]
            return 1.0
        return max(self._min_share, elapsed / self._window)

    def weight(self, worker: Worker) -> float:
        """The worker's configured weight scaled by its current share."""
        return worker.weight * self.share(worker) if self._since else worker.weight

    def admits(self, worker: Worker, key: str) -> bool:
        """Whether a warming worker takes `key` yet; always True for a worker at full share."""
        if not self._since:
            return True
        share = self.share(worker)
        return share >= 1.0 or key_fraction(key) < share
