"""Semantic recall: bring back the few pruned turns most relevant to the new message.

With `history.recall.enabled`, a turn starts two reads before its history is in, so they run
beside the history round trip: the session's stored vectors (`VectorCache`: only what was
appended since the last turn, for a store out of process) and the new message's embedding.
Once the prompt is pruned, the turns it left out (and those the summary folded) are offered to
the background indexer, and, if both reads came back within `query_timeout` of the start,
the stored vectors are scored against the message (`router.orchestrator.similarity`) and up
to `top_k` turns above `min_similarity`, none of them in the window, are inserted as one
marked system message within the recall budget (`max_tokens`, held back from the prompt
budget whether or not anything is recalled, so the window does not move with recall). Where
it goes is `position`: `before_last` (just before the new message: the history before it is
the prefix the worker cached on the previous turn) or `after_system`.

A slow or failed embedding, an unreachable store, vectors of another model: no recall for
that turn, counted; never an error for the request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from router.config import RecallSettings
from router.metrics import Metrics
from router.orchestrator.embeddings import EmbeddingClient, EmbeddingFailed
from router.orchestrator.history import SYSTEM_ROLES, Conversation, Message, Turn
from router.orchestrator.index_turns import TurnIndexer
from router.orchestrator.prune import Budget, Prompt, body_size
from router.orchestrator.tokenizer import content_text
from router.orchestrator.vector_cache import Blob, VectorCache
from router.store import SessionStore
from router.store.vectors import (
    HEADER_BYTES,
    digests_of,
    model_tag,
    parse_header,
    turn_digest,
)

if TYPE_CHECKING:  # numpy is imported only once recall runs
    import numpy as np

    from router.orchestrator.similarity import Recalled

RECALLED = web.RequestKey("kvrouter_recalled", int)  # how many turns a request recalled
RECALLED_HEADER = "x-kvrouter-recalled"
INTRO = (
    "Recalled from earlier in this conversation (turns no longer in the context above, most "
    "relevant first):"
)
INTRO_TOKENS = 32  # the intro line and the separators, with room to spare in any tokenizer
DIGESTS_KEPT = 1 << 16


@dataclass(frozen=True, slots=True)
class Vectors:
    blob: Blob
    seconds: float


@dataclass(slots=True)
class Lookup:
    """The reads one turn started: the session's vectors and the new message's embedding."""

    tenant: str
    session: str
    started: float
    vectors: asyncio.Task[Vectors]
    query: asyncio.Task[np.ndarray] | None

    def cancel(self) -> None:
        self.vectors.cancel()
        if self.query is not None:
            self.query.cancel()


def query_text(new: Sequence[Message], max_chars: int) -> str:
    """What is embedded for a turn's lookup: its new messages' text, system ones left out."""
    return "\n".join(content_text(m) for m in new if m.get("role") not in SYSTEM_ROLES)[
        :max_chars
    ]


def recall_message(chosen: Sequence[Recalled]) -> Message:
    blocks = [
        "\n".join(f"{m.get('role', '')}: {content_text(m)}" for m in r.turn.messages)
        for r in chosen
    ]
    return {"role": "system", "content": INTRO + "\n\n" + "\n\n".join(blocks)}


def with_recall(prompt: Prompt, message: bytes, tokens: int, position: str) -> Prompt:
    """`prompt` with the recall message after the system prompt and summary, or just before
    the new messages."""
    messages = prompt.messages
    if position == "after_system":
        at, head = prompt.head, prompt.head + 1
    else:
        history = prompt.head + sum(len(t.entries) for t in prompt.kept)
        at, head = history, prompt.head
    return dataclasses.replace(
        prompt,
        messages=[*messages[:at], message, *messages[at:]],
        tokens=prompt.tokens + tokens,
        head=head,
    )


def _records(blob: Blob) -> int:
    header = parse_header(blob)
    return 0 if header is None else (len(blob) - HEADER_BYTES) // header.record


class Recall:
    """The request side of recall; the background side is the `TurnIndexer` it offers
    pruned turns to."""

    def __init__(
        self,
        settings: RecallSettings,
        store: SessionStore,
        client: EmbeddingClient,
        indexer: TurnIndexer,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._client = client
        self._indexer = indexer
        self._metrics = metrics
        self._cache = VectorCache(0 if store.in_process else settings.cache_bytes)
        self._settings = settings
        # a turn's digest never changes: hashing a long session's turns on every turn cost
        # more than scoring its vectors
        self._digest = functools.lru_cache(maxsize=DIGESTS_KEPT)(turn_digest)

    def reconfigure(self, settings: RecallSettings) -> None:
        self._settings = settings
        self._cache.reconfigure(0 if self._store.in_process else settings.cache_bytes)

    @property
    def enabled(self) -> bool:
        return self._settings.enabled

    def budget(self, max_prompt_tokens: int, max_tokens: int) -> Budget:
        """The prompt budget, with the recall budget held back from the turns when on."""
        reserved = self._settings.max_tokens if self._settings.enabled else 0
        return Budget(max_prompt_tokens, max_tokens, reserved)

    def look_up(self, tenant: str, session: str, new: Sequence[Message]) -> Lookup | None:
        """Start the turn's reads; None when recall is off (then nothing at all is done)."""
        settings = self._settings
        if not settings.enabled:
            return None
        vectors = asyncio.create_task(self.read_vectors(tenant, session))
        text = query_text(new, settings.max_input_chars)
        query = asyncio.create_task(self._embed_query(text)) if text.strip() else None
        return Lookup(tenant, session, time.monotonic(), vectors, query)

    async def read_vectors(self, tenant: str, session: str) -> Vectors:
        """The first step of a recall: the session's vectors, and how long reading took."""
        started = time.perf_counter()
        blob = await self._cache.read(self._store, tenant, session)
        return Vectors(blob, time.perf_counter() - started)

    async def _embed_query(self, text: str) -> np.ndarray:
        self._metrics.recall_embeddings.labels("query").inc()
        started = time.perf_counter()
        try:
            vectors = await self._client.embed([text], self._settings.query_timeout)
        except EmbeddingFailed as err:
            self._metrics.recall_embedding_failures.labels("query", err.reason).inc()
            raise
        self._metrics.recall_embedding_seconds.labels("query").observe(
            time.perf_counter() - started
        )
        return vectors[0]

    async def apply(
        self,
        lookup: Lookup,
        conversation: Conversation,
        prompt: Prompt,
        budget: Budget,
        frame: int,
        max_body_bytes: int,
    ) -> tuple[Prompt, int]:
        """`prompt` with the recalled turns (and how many), or as it is when nothing is
        recalled; offers the turns the prompt left out to the indexer either way."""
        pruned = [*conversation.folded, *prompt.dropped]
        deadline = lookup.started + self._settings.query_timeout
        vectors = await self._vectors_in_time(lookup, pruned, deadline)
        if vectors is None:
            self._observe(0, 0)
            return prompt, 0
        query = await self._query_in_time(lookup, deadline)
        started = time.perf_counter()
        chosen = self.choose(vectors.blob, query, conversation, prompt, budget)
        recalled = prompt
        if chosen:
            tokens = sum(r.turn.tokens for r in chosen) + INTRO_TOKENS
            message = orjson.dumps(recall_message(chosen))
            recalled = with_recall(prompt, message, tokens, self._settings.position)
            if body_size(frame, recalled.messages) > max_body_bytes:
                recalled, chosen = prompt, []
        if query is not None:
            seconds = vectors.seconds + time.perf_counter() - started
            self._metrics.recall_seconds.observe(seconds)
        self._observe(len(chosen), recalled.tokens - prompt.tokens)
        return recalled, len(chosen)

    def _observe(self, turns: int, tokens: int) -> None:
        self._metrics.recalled_turns.observe(turns)
        self._metrics.recalled_tokens.observe(tokens)

    async def _vectors_in_time(
        self, lookup: Lookup, pruned: list[Turn], deadline: float
    ) -> Vectors | None:
        """The session's vectors if they came in time and there are any; the pruned turns
        are offered once they are in (later, in the background, if they come late)."""
        task = lookup.vectors
        if not task.done():
            await asyncio.wait([task], timeout=max(0.0, deadline - time.monotonic()))
        if not task.done():
            task.add_done_callback(lambda t: self._offer(lookup, t, pruned))
            if lookup.query is not None:
                lookup.query.cancel()
            return None
        self._offer(lookup, task, pruned)
        if task.exception() is None and _records(task.result().blob):
            return task.result()
        if lookup.query is not None:
            lookup.query.cancel()
        return None

    def _offer(self, lookup: Lookup, task: asyncio.Task[Vectors], pruned: list[Turn]) -> None:
        if task.cancelled() or task.exception() is not None:
            return  # the store failed (and said so); the next turn offers them again
        header = parse_header(task.result().blob)
        through = header.through if header is not None else -1
        self._indexer.offer(lookup.tenant, lookup.session, pruned, through)

    async def _query_in_time(self, lookup: Lookup, deadline: float) -> np.ndarray | None:
        task = lookup.query
        if task is None:
            return None
        if not task.done():
            await asyncio.wait([task], timeout=max(0.0, deadline - time.monotonic()))
        if not task.done():
            task.cancel()
            self._metrics.recall_embedding_failures.labels("query", "timeout").inc()
            return None
        if task.cancelled() or task.exception() is not None:
            return None  # counted where it failed
        return task.result()

    def choose(
        self,
        blob: Blob,
        query: np.ndarray | None,
        conversation: Conversation,
        prompt: Prompt,
        budget: Budget,
    ) -> list[Recalled]:
        """The second step: the turns to recall for `query` among those `prompt` left out."""
        header = parse_header(blob)
        settings = self._settings
        if query is None or header is None or header.dim != query.shape[0]:
            return []
        if header.tag != model_tag(settings.model or ""):
            return []
        room = min(settings.max_tokens, budget.tokens - prompt.tokens) - INTRO_TOKENS
        if room <= 0:
            return []
        kept = {t.key for t in prompt.kept}
        candidates = {
            self._digest(t.key): t
            for t in (*conversation.folded, *conversation.turns)
            if t.complete and t.key not in kept
        }
        from router.orchestrator import similarity  # numpy: loaded only once recall runs

        found = similarity.scores(blob, header, query)
        return similarity.choose(
            blob, header, found, candidates,
            top_k=settings.top_k, threshold=settings.min_similarity, room=room,
        )  # fmt: skip

    async def embedded(self, tenant: str, session: str) -> set[bytes] | None:
        """The digests of the session's turns that have an embedding; None with recall off."""
        if not self._settings.enabled:
            return None
        stored = await self._store.read_vectors(tenant, session)
        header = stored.header
        if header is None:
            return set()
        return set(digests_of(stored.data, header.dim))

