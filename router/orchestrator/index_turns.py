"""Embedding pruned turns in the background, so a later turn can recall them.

A turn is offered when it is pruned out of a prompt (or folded into the summary) and its
entries lie past the session's watermark (`router.store.vectors`). Offered turns wait in one
bounded queue; one task takes them in batches of `batch_size` (across sessions, after waiting
`batch_wait` for a batch to fill), asks the embeddings endpoint once per batch, retried with
a doubling back-off up to `attempts` tries, and stores each session's vectors with its new
watermark. A batch given up leaves its turns unrecallable: the watermark moves past them all
the same, so they are not offered again, and each is counted. Nothing here ever fails a
request. Batches run one at a time, so one session's turns are stored in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from router.config import RecallSettings
from router.metrics import Metrics
from router.orchestrator.embeddings import EmbeddingClient, EmbeddingFailed
from router.orchestrator.history import Turn
from router.orchestrator.tokenizer import content_text
from router.store import SessionStore, SessionTooLarge, StoreUnavailable
from router.store.vectors import VectorBatch, model_tag, turn_digest

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("kvrouter.recall")

FIRST_RETRY_DELAY = 0.1
MAX_RETRY_DELAY = 2.0
STORE_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Offered:
    """One turn waiting to be embedded."""

    tenant: str
    session: str
    key: bytes
    index: int  # the absolute index of the turn's last entry
    text: str


def turn_text(turn: Turn, max_chars: int) -> str:
    """What is embedded for a turn: its messages' text, one per line, cut to `max_chars`."""
    return "\n".join(content_text(m) for m in turn.messages)[:max_chars]


class TurnIndexer:
    """Owns the queue of turns to embed and the task that embeds them; `start` and `close`
    are the composition root's."""

    def __init__(
        self,
        settings: RecallSettings,
        client: EmbeddingClient,
        store: SessionStore,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._client = client
        self._store = store
        self._metrics = metrics
        self._queue: deque[Offered] = deque()
        self._queued: set[tuple[str, str, bytes]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.idle = asyncio.Event()
        self.idle.set()

    def reconfigure(self, settings: RecallSettings) -> None:
        self._settings = settings

    def offer(self, tenant: str, session: str, turns: Sequence[Turn], through: int) -> int:
        """Queue the complete turns past `through` not already waiting; returns how many.
        Turns that find the queue full are counted and offered again on a later turn."""
        settings = self._settings
        fresh = [
            t for t in turns
            if t.complete and t.last_index > through
            and (tenant, session, t.key) not in self._queued
        ]  # fmt: skip
        room = settings.queue_size - len(self._queue)
        if len(fresh) > room:
            lost = len(fresh) - max(room, 0)
            self._metrics.recall_embedding_failures.labels("turn", "queue_full").inc(lost)
            fresh = fresh[: max(room, 0)]
        for turn in fresh:
            text = turn_text(turn, settings.max_input_chars)
            self._queue.append(Offered(tenant, session, turn.key, turn.last_index, text))
            self._queued.add((tenant, session, turn.key))
        if fresh:
            self.idle.clear()
            self._wake.set()
        return len(fresh)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="kvrouter-recall-indexer")

    async def close(self) -> None:
        """Stop at once; turns still waiting are counted (`shutdown`) and offered again by the
        session's next turn after a restart."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._queue:
            self._metrics.recall_embedding_failures.labels("turn", "shutdown").inc(
                len(self._queue)
            )
            self._queue.clear()
            self._queued.clear()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self.idle.set()
                self._wake.clear()
                await self._wake.wait()
            settings = self._settings
            if len(self._queue) < settings.batch_size and settings.batch_wait:
                await asyncio.sleep(settings.batch_wait)
            count = min(settings.batch_size, len(self._queue))
            batch = [self._queue.popleft() for _ in range(count)]
            try:
                await self._index(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop indexing for good
                log.exception("embedding a batch of %d turns failed", len(batch))
            finally:
                for item in batch:
                    self._queued.discard((item.tenant, item.session, item.key))

    async def _index(self, batch: list[Offered]) -> None:
        vectors = await self._embed([item.text for item in batch])
        tag = model_tag(self._settings.model or "")
        sessions: dict[tuple[str, str], list[int]] = {}
        for position, item in enumerate(batch):
            sessions.setdefault((item.tenant, item.session), []).append(position)
        for (tenant, session), positions in sessions.items():
            through = max(batch[p].index for p in positions)
            if vectors is None:
                records: tuple[tuple[int, bytes], ...] = ()
                dim = 0
            else:
                dim = int(vectors.shape[1])
                records = tuple(
                    (batch[p].index, turn_digest(batch[p].key) + vectors[p].astype("<f4").tobytes())
                    for p in positions
                )  # fmt: skip
            await self._store_batch(tenant, session, VectorBatch(tag, dim, through, records))

    async def _embed(self, texts: list[str]) -> np.ndarray | None:
        """The batch's vectors, or None once every try failed (counted per turn)."""
        settings = self._settings
        self._metrics.recall_embeddings.labels("turn").inc(len(texts))
        delay = FIRST_RETRY_DELAY
        for attempt in range(1, settings.attempts + 1):
            started = time.perf_counter()
            try:
                vectors = await self._client.embed(texts, settings.timeout)
            except EmbeddingFailed as err:
                if attempt == settings.attempts:
                    self._metrics.recall_embedding_failures.labels("turn", err.reason).inc(
                        len(texts)
                    )
                    log.warning(
                        "embedding %d pruned turn(s) failed after %d tries, they stay "
                        "unrecallable: %s", len(texts), attempt, err,
                    )  # fmt: skip
                    return None
                await asyncio.sleep(delay)
                delay = min(MAX_RETRY_DELAY, delay * 2)
                continue
            self._metrics.recall_embedding_seconds.labels("turn").observe(
                time.perf_counter() - started
            )
            return vectors
        return None

    async def _store_batch(self, tenant: str, session: str, batch: VectorBatch) -> None:
        """Store one session's part of a batch (an empty one only moves the watermark)."""
        delay = FIRST_RETRY_DELAY
        lost = len(batch.records)
        for attempt in range(1, STORE_ATTEMPTS + 1):
            try:
                await self._store.add_vectors(
                    tenant, session, batch, self._settings.max_vectors
                )
                return
            except SessionTooLarge as err:
                self._metrics.recall_embedding_failures.labels("turn", "full").inc(lost)
                log.warning("embeddings of session %r (tenant %r) not stored: %s",
                            session, tenant, err)  # fmt: skip
                return
            except StoreUnavailable as err:
                if attempt == STORE_ATTEMPTS:
                    self._metrics.recall_embedding_failures.labels("turn", "store").inc(lost)
                    log.warning("embeddings of session %r (tenant %r) not stored: %s",
                                session, tenant, err)  # fmt: skip
                    return
                await asyncio.sleep(delay)
                delay = min(MAX_RETRY_DELAY, delay * 2)
