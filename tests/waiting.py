"""Helpers the async tests share: waiting for a condition, and a discovery sink that records."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from router.fleet.discovery.base import Member


async def until(
    check: Callable[[], object], what: str = "the condition", timeout: float = 3.0
) -> None:
    """Wait until `check()` is true, polling every 10 ms; fail naming `what` after `timeout`."""
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not reached within {timeout:g}s: {what}")


class RecordingSink:
    """A discovery sink that keeps every list published and every failure reported."""

    def __init__(self) -> None:
        self.published: list[list[Member]] = []
        self.failures: list[str] = []

    def publish(self, members: Sequence[Member]) -> None:
        self.published.append(list(members))

    def failed(self, reason: str) -> None:
        self.failures.append(reason)

    @property
    def latest(self) -> dict[str, Member]:
        return {m.name: m for m in self.published[-1]} if self.published else {}
