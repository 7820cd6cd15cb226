"""In-memory session state for a single router process: the embedded default, no Redis."""

from __future__ import annotations

import time
from collections.abc import Callable


class MemoryStore:
    """Per-process state; expired entries are dropped when read and in periodic sweeps."""

    name = "memory"

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_pins: int = 1_000_000):
        self._clock = clock
        self._max_pins = max_pins
        self._pins: dict[tuple[str, str], tuple[str, float]] = {}

    async def get_pin(self, tenant: str, session: str) -> str | None:
        entry = self._pins.get((tenant, session))
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._pins[(tenant, session)]
            return None
        return entry[0]

    async def set_pin(self, tenant: str, session: str, worker: str, ttl: float) -> None:
        if len(self._pins) >= self._max_pins:
            self.sweep()
        self._pins[(tenant, session)] = (worker, self._clock() + ttl)

    async def delete_pin(self, tenant: str, session: str) -> None:
        self._pins.pop((tenant, session), None)

    def sweep(self) -> int:
        """Drop expired pins; if still full, the oldest-expiring ones. Returns how many went."""
        now = self._clock()
        before = len(self._pins)
        self._pins = {k: v for k, v in self._pins.items() if v[1] > now}
        if len(self._pins) >= self._max_pins:
            keep = sorted(self._pins.items(), key=lambda kv: kv[1][1])[-(self._max_pins // 2) :]
            self._pins = dict(keep)
        return before - len(self._pins)

    async def close(self) -> None:
        self._pins.clear()
