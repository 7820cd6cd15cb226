"""History writes off the request path: retried until a deadline, counted, never dropped silently.

A write the session has no room for (`store.max_session_bytes`) is not retried: it is lost at
once, logged and counted like one given up.

Each write is an append with an operation id, so retrying one whose first try did land (a
timeout after Redis applied it) stores it once. The entries may be produced by a coroutine (the
reply's token count may need the worker's tokenizer), which is retried the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from router.errors import HistoryUnavailable
from router.metrics import Metrics
from router.store import SessionStore, SessionTooLarge, StoreUnavailable

log = logging.getLogger("kvrouter.persist")

Entries = Sequence[bytes] | Callable[[], Awaitable[Sequence[bytes]]]
FIRST_RETRY_DELAY = 0.05
MAX_RETRY_DELAY = 2.0


class Persister:
    """Owns the background write tasks; `close` lets pending ones finish within a grace."""

    def __init__(self, store: SessionStore, metrics: Metrics, deadline: float) -> None:
        self._store = store
        self._metrics = metrics
        self._deadline = deadline
        self._tasks: set[asyncio.Task[bool]] = set()

    def append(
        self,
        tenant: str,
        session: str,
        op_id: str,
        entries: Entries,
        *,
        op: str,
    ) -> asyncio.Task[bool]:
        """Start writing; the task's result says whether the write landed."""
        task = asyncio.create_task(self._write(tenant, session, op_id, entries, op))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _write(
        self,
        tenant: str,
        session: str,
        op_id: str,
        entries: Entries,
        op: str,
    ) -> bool:
        payload = entries if not callable(entries) else None
        give_up = time.monotonic() + self._deadline
        delay = FIRST_RETRY_DELAY
        while True:
            try:
                if payload is None:
                    payload = await entries()  # type: ignore[operator]
                with self._metrics.store_call("append", self._store.name):
                    await self._store.append_history(tenant, session, op_id, payload)
            except SessionTooLarge as err:  # trying again cannot help
                self._metrics.persist_failures.labels(op).inc()
                log.error("history write %s of session %r (tenant %r) lost: %s",
                          op_id, session, tenant, err)  # fmt: skip
                return False
            except (StoreUnavailable, HistoryUnavailable) as err:
                if time.monotonic() + delay > give_up:
                    self._metrics.persist_failures.labels(op).inc()
                    log.error(
                        "history write %s of session %r (tenant %r) lost after retrying for "
                        "%.0fs: %s", op_id, session, tenant, self._deadline, err,
                    )  # fmt: skip
                    return False
                self._metrics.persist_retries.labels(op).inc()
                await asyncio.sleep(delay)
                delay = min(MAX_RETRY_DELAY, delay * 2)
                continue
            return True

    async def close(self, grace: float) -> None:
        """Wait up to `grace` for pending writes, then cancel and count the rest as failed."""
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in late:
                task.cancel()
                self._metrics.persist_failures.labels("shutdown").inc()
            if late:
                log.error("%d history write(s) cancelled at shutdown", len(late))
                await asyncio.wait(late)
