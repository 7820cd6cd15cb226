"""A turn answered with an error leaves no trace in the store.

The turn's user messages are stored before it is forwarded. If the answer turns out to be an
error (a worker's error status relayed, or an error raised instead of an answer), they are
taken back out by the operation id that stored them, before the client sees the answer end, so
the client's retry is stored once and a turn it was told failed never shows up in its history.
A turn whose stream broke after a 200 stays stored, unanswered, and is never sent.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from router.metrics import Metrics
from router.proxy.relay import ResponseObserver
from router.store import SessionStore, StoreUnavailable

log = logging.getLogger("kvrouter.persist")


class TurnOutcome:
    """A `ResponseObserver` around the reply collector: watches the answer's status and, when it
    is an error, runs `discard` (once) before the answer ends."""

    __slots__ = ("_collector", "_discard", "_discarded", "status")

    def __init__(
        self, collector: ResponseObserver, discard: Callable[[], Awaitable[None]]
    ) -> None:
        self._collector = collector
        self._discard = discard
        self._discarded = False
        self.status = 0

    @property
    def succeeded(self) -> bool:
        return 200 <= self.status < 300

    def start(self, status: int, streaming: bool) -> None:
        self.status = status
        self._collector.start(status, streaming)

    def feed(self, chunk: bytes) -> bytes:
        return self._collector.feed(chunk)

    async def finish(self) -> bytes:
        if not self.succeeded:
            await self.discard()
        return await self._collector.finish()

    async def discard(self) -> None:
        """Take the turn back out of the store; later calls do nothing."""
        if not self._discarded:
            self._discarded = True
            await self._discard()


async def discard_turn(
    store: SessionStore, metrics: Metrics, tenant: str, session: str, op_id: str
) -> None:
    """Remove the entries `op_id` stored. A store that cannot is logged and counted
    (`persist_failures{op="discard"}`); the turn then stays, unanswered and never sent."""
    try:
        with metrics.store_call("discard", store.name):
            await store.discard_turn(tenant, session, op_id)
    except StoreUnavailable as err:
        metrics.persist_failures.labels("discard").inc()
        log.error(
            "turn %s of session %r (tenant %r) was answered with an error but stays stored: %s",
            op_id, session, tenant, err,
        )  # fmt: skip
