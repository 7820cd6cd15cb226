"""The store interface every implementation passes the same test suite against.

Every key is scoped by tenant: one tenant can never read or change another's session.
History is kept as opaque encoded entries (see `router.orchestrator.history`), appended in arrival
order, each append at most once per operation id, so a retried write never duplicates a turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from router.limits.buckets import Levels, Rule
from router.store.vectors import StoredVectors, VectorBatch


class StoreUnavailable(Exception):
    """The backing store cannot be reached; the message names the store."""


class SessionTooLarge(Exception):
    """A write would take a session past `store.max_session_bytes`; nothing of it was stored.

    A session's bytes are those of its history entries (one separator each) and its summary,
    after any trim to `store.max_messages` the write causes; whatever else is stored per session
    later counts against the same limit."""

    def __init__(self, session: str, held: int, adding: int, limit: int, freed: int = 0) -> None:
        self.session, self.held, self.adding, self.limit = session, held, adding, limit
        super().__init__(
            f"session {session!r} would hold {held + adding - freed} bytes, over "
            f"store.max_session_bytes ({limit}): it holds {held} and this write adds {adding}"
        )


@dataclass(frozen=True, slots=True)
class StoredHistory:
    """A session's history as stored: encoded entries, oldest first.

    `first_index` is the absolute index of `entries[0]` (older entries were dropped by the size
    cap); `summary` folds every entry up to absolute index `summary_through` (-1: none yet).
    """

    entries: tuple[bytes, ...] = ()
    first_index: int = 0
    summary: bytes | None = None
    summary_through: int = -1


class SessionStore(Protocol):
    """Shared session state; implementations are safe for concurrent use by router replicas.

    Pin calls never raise because the store is unreachable: they answer None or do nothing, so
    routing degrades to the ring. History calls raise `StoreUnavailable` instead.
    """

    name: str
    in_process: bool  # True when a call never leaves the process (no I/O that could hang)

    async def get_pin(self, tenant: str, session: str) -> str | None:
        """The worker that holds this session's KV cache, if one was recorded and not expired."""

    async def set_pin(self, tenant: str, session: str, worker: str, ttl: float) -> None:
        """Record (or refresh) where the session's cache lives for `ttl` seconds."""

    async def delete_pin(self, tenant: str, session: str) -> None: ...

    async def get_served(self, tenant: str, session: str) -> str | None:
        """The worker recorded as serving the session's last turn, unless the record expired
        (how a draining worker tells its existing sessions from new ones). Never raises for
        an unreachable store: None."""

    async def set_served(self, tenant: str, session: str, worker: str, ttl: float) -> None:
        """Record that `worker` served the session's last turn, for `ttl` seconds."""

    async def read_history(self, tenant: str, session: str) -> StoredHistory:
        """The whole history in one consistent snapshot; empty for an unknown session."""

    async def append_history(
        self, tenant: str, session: str, op_id: str, entries: Sequence[bytes]
    ) -> int:
        """Append `entries` atomically after everything already stored, unless `op_id` was
        appended before; refresh the session's TTL. Returns the absolute entry count. Raises
        `SessionTooLarge`, storing nothing, when they would not fit the session's byte limit."""

    async def read_and_append_history(
        self, tenant: str, session: str, op_id: str, entries: Sequence[bytes]
    ) -> StoredHistory:
        """`append_history` and the history as it was just before it, in one atomic step (one
        round trip): how a turn stores its user message before it is forwarded. A call that
        raises `StoreUnavailable` never takes effect later (a shared store refuses a write that
        reaches it after its caller gave up), so a turn refused with a 503 leaves no trace."""

    async def discard_turn(self, tenant: str, session: str, op_id: str) -> bool:
        """Remove the entries appended under `op_id` and forget the op id, so a retry of it is
        stored again: how a turn answered with an error leaves no trace. Safe to repeat; a call
        that raises `StoreUnavailable` never takes effect later. True when entries went."""

    async def set_summary(self, tenant: str, session: str, summary: bytes, through: int) -> bool:
        """Store a summary of entries up to absolute index `through`, unless a summary that
        reaches as far is already stored. True when stored; `SessionTooLarge` when it would not
        fit the session's byte limit (in place of the previous summary)."""

    async def read_vectors(
        self, tenant: str, session: str, held: tuple[int, int] | None = None
    ) -> StoredVectors:
        """The session's turn embeddings (see `router.store.vectors`) in one round trip; with
        `held` (the generation and byte length of a copy the caller keeps) only what was
        appended since, when that copy is still a prefix of what is stored. Empty for none."""

    async def add_vectors(
        self, tenant: str, session: str, batch: VectorBatch, max_vectors: int
    ) -> int | None:
        """Append embeddings atomically (see `router.store.vectors.merge`), capped at
        `max_vectors` records, with the history's TTL; None when the session is gone (nothing
        is stored), else how many records were added. `SessionTooLarge`, storing nothing, when
        they would take the session past its byte limit."""
    async def take_rate(self, tenant: str, rule: Rule, requests: int, tokens: int) -> Levels:
        """Take `requests` from the tenant's per-minute buckets unless `rule` refuses them, and
        debit `tokens`, in one atomic step (one round trip) that every router sharing the store
        sees (`router.limits.buckets` says how). Raises `StoreUnavailable`."""

    async def forget(self, tenant: str, session: str) -> bool:
        """Drop the session's history, summary, embeddings and pin. True when there was
        something."""

    async def close(self) -> None: ...
