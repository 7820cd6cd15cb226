"""Store writes off the request's path, each bounded by a timeout and owned until it ends.

A write to an in-process store is done at once (it cannot block); any other runs as a task of
its own, so the request that caused it never waits for the store. Each outcome is reported
(`ok` or `error`, by action); a failed write is logged at debug level and costs nothing more.
`close` lets pending writes finish, within the same timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("kvrouter.store")

WRITE_TIMEOUT = 2.0

Outcome = Callable[[str, str], None]
"""Called with (action, "ok" or "error") once a write ends."""


class BackgroundWrites:
    """The pending writes of one component (pins, token debits) to one store."""

    def __init__(
        self, in_process: bool, outcome: Outcome, what: str, timeout: float = WRITE_TIMEOUT
    ) -> None:
        self._in_process = in_process
        self._outcome = outcome
        self._what = what
        self._timeout = timeout
        self._pending: set[asyncio.Task[None]] = set()

    async def write(
        self, action: str, write: Coroutine[Any, Any, object], *, wait: float = 0.0
    ) -> None:
        """Done now for an in-process store; else started in the background, and waited for
        up to `wait` seconds (past that it goes on in the background, within its timeout)."""
        if self._in_process:
            await self._guarded(action, write, timed=False)
            return
        task = asyncio.get_running_loop().create_task(self._guarded(action, write))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        if wait > 0:
            await asyncio.wait((task,), timeout=wait)

    async def _guarded(
        self, action: str, write: Coroutine[Any, Any, object], *, timed: bool = True
    ) -> None:
        try:
            if timed:
                async with asyncio.timeout(self._timeout):
                    await write
            else:
                await write
        except Exception as err:  # a lost write costs what it recorded, never a request
            self._outcome(action, "error")
            log.debug("%s %s failed: %r", self._what, action, err)
            return
        self._outcome(action, "ok")

    async def close(self) -> None:
        """Let pending writes finish (bounded by their timeout)."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=self._timeout)
