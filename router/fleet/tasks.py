"""One background task per worker in the pool, kept in step with membership.

The health checker and the load monitor each run a loop per worker; this owns those tasks: it
starts one for every worker the pool gains, cancels the task of every worker it loses (and
says so, so per-worker state can be dropped), and cancels them all on `stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from router.fleet.workers import Worker, WorkerPool

Loop = Callable[[Worker], Coroutine[Any, Any, None]]


class PerWorkerTasks:
    def __init__(
        self,
        pool: WorkerPool,
        name: str,
        loop: Loop,
        on_removed: Callable[[str], None] = lambda _: None,
    ) -> None:
        self._pool = pool
        self._name = name
        self._loop = loop
        self._on_removed = on_removed
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._unsubscribe: Callable[[], None] | None = None

    def start(self) -> None:
        if self._unsubscribe is None:
            self._unsubscribe = self._pool.subscribe(self._reconcile)

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _reconcile(self, pool: WorkerPool) -> None:
        for name in list(self._tasks):
            if name not in pool:
                self._tasks.pop(name).cancel()
                self._on_removed(name)
        for worker in pool:
            if worker.name not in self._tasks:
                self._tasks[worker.name] = asyncio.get_running_loop().create_task(
                    self._loop(worker), name=f"{self._name}:{worker.name}"
                )
