"""In-memory session state for a single router process: the embedded default, no Redis.

Histories and pins are each kept in least-recently-used order, reads included, and capped
(`store.max_sessions`, `store.max_pins`). Expired ones are dropped when touched, and on every
insert a few from the least recently used end (a sweep that costs each insert a bounded amount
of work). Only when the cap is still reached is a live one evicted: the least recently used, one
at a time, each counted through `on_evict(kind)` and logged at most once a minute.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from router.limits.buckets import Buckets, Levels, Rule, full_in_ms, take
from router.store.base import SessionTooLarge, StoredHistory
from router.store.keys import trim_slack
from router.store.vectors import HEADER_BYTES, StoredVectors, VectorBatch, merge

log = logging.getLogger("kvrouter.store")

K = TypeVar("K")
V = TypeVar("V")
SWEEP_PER_INSERT = 8  # expired entries dropped from the least recently used end per insert
MAX_RATE_TENANTS = 100_000  # tenants whose rate buckets are kept (a full bucket is not kept)
EVICTION_LOG_INTERVAL = 60.0


@dataclass(slots=True)
class _Conversation:
    """One session's history; `size` counts its bytes as `store.max_session_bytes` does."""

    expires: float
    entries: list[bytes] = field(default_factory=list)
    owners: list[str] = field(default_factory=list)  # the op id that appended each entry
    ops: set[str] = field(default_factory=set)
    trimmed: int = 0
    summary: bytes | None = None
    summary_through: int = -1
    size: int = 0
    vectors: bytes = b""  # the turn embeddings' blob (router.store.vectors)


@dataclass(slots=True)
class _Pin:
    worker: str
    expires: float


@dataclass(slots=True)
class _Rate:
    """A tenant's rate buckets, until they are full again (`expires`)."""

    buckets: Buckets
    expires: float


class _Recent(Generic[K, V]):
    """Values in least-recently-used order, at most `cap` of them; `expires` tells when one
    expires."""

    def __init__(self, cap: int, expires: Callable[[V], float]) -> None:
        self.cap = cap
        self._expires = expires
        self._items: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K, now: float) -> V | None:
        """The live value, now the most recently used; an expired one is dropped."""
        value = self._items.get(key)
        if value is None:
            return None
        if self._expires(value) <= now:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V, now: float) -> int:
        """Store `value` as the most recently used; returns how many live values were evicted
        to make room."""
        if key in self._items:
            self._items[key] = value
            self._items.move_to_end(key)
            return 0
        self._sweep(now)
        evicted = 0
        while len(self._items) >= self.cap:
            self._items.popitem(last=False)
            evicted += 1
        self._items[key] = value
        return evicted

    def pop(self, key: K) -> V | None:
        return self._items.pop(key, None)

    def clear(self) -> None:
        self._items.clear()

    def _sweep(self, now: float) -> None:
        for _ in range(SWEEP_PER_INSERT):
            oldest = next(iter(self._items.items()), None)
            if oldest is None or self._expires(oldest[1]) > now:
                return
            del self._items[oldest[0]]


class _EvictionLog:
    """Counts each eviction through `on_evict` and logs them at most once per interval."""

    def __init__(
        self, clock: Callable[[], float], on_evict: Callable[[str], None] | None, caps: str
    ) -> None:
        self._clock = clock
        self._on_evict = on_evict
        self._caps = caps
        self._since: dict[str, int] = {"history": 0, "pin": 0, "rate": 0}
        self._logged = -math.inf

    def evicted(self, kind: str, count: int) -> None:
        if not count:
            return
        if self._on_evict is not None:
            for _ in range(count):
                self._on_evict(kind)
        self._since[kind] += count
        now = self._clock()
        if now - self._logged >= EVICTION_LOG_INTERVAL:
            window = "" if self._logged == -math.inf else f" in the last {now - self._logged:.0f}s"
            log.warning(
                "in-memory store evicted %d histories, %d pins and %d tenants' rate counts%s, "
                "least recently used first, to stay within %s; raise them or keep state in "
                "Redis (store.url)",
                self._since["history"], self._since["pin"], self._since["rate"], window,
                self._caps,
            )  # fmt: skip
            self._since = {"history": 0, "pin": 0, "rate": 0}
            self._logged = now


class MemoryStore:
    """Per-process state, capped and least recently used out (see the module docstring)."""

    name = "memory"
    in_process = True

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        max_pins: int = 1_000_000,
        *,
        history_ttl: float = 24 * 3600.0,
        max_messages: int = 4096,
        max_sessions: int = 100_000,
        max_session_bytes: int = 8 * 1024 * 1024,
        on_evict: Callable[[str], None] | None = None,
    ):
        self._clock = clock
        self._max_bytes = max_session_bytes
        self._pins: _Recent[tuple[str, str], _Pin] = _Recent(max_pins, lambda p: p.expires)
        self._served: _Recent[tuple[str, str], _Pin] = _Recent(max_pins, lambda p: p.expires)
        self._ttl = history_ttl
        self._max_messages = max_messages
        self._sessions: _Recent[tuple[str, str], _Conversation] = _Recent(
            max_sessions, lambda c: c.expires
        )
        self._rates: _Recent[str, _Rate] = _Recent(MAX_RATE_TENANTS, lambda r: r.expires)
        caps = (
            f"store.max_sessions={max_sessions}, store.max_pins={max_pins} and "
            f"{MAX_RATE_TENANTS} tenants with rate limits"
        )
        self._evictions = _EvictionLog(clock, on_evict, caps)

    async def get_pin(self, tenant: str, session: str) -> str | None:
        pin = self._pins.get((tenant, session), self._clock())
        return pin.worker if pin is not None else None

    async def set_pin(self, tenant: str, session: str, worker: str, ttl: float) -> None:
        now = self._clock()
        evicted = self._pins.put((tenant, session), _Pin(worker, now + ttl), now)
        self._evictions.evicted("pin", evicted)

    async def delete_pin(self, tenant: str, session: str) -> None:
        self._pins.pop((tenant, session))

    async def get_served(self, tenant: str, session: str) -> str | None:
        served = self._served.get((tenant, session), self._clock())
        return served.worker if served is not None else None

    async def set_served(self, tenant: str, session: str, worker: str, ttl: float) -> None:
        now = self._clock()
        evicted = self._served.put((tenant, session), _Pin(worker, now + ttl), now)
        self._evictions.evicted("pin", evicted)

    async def take_rate(self, tenant: str, rule: Rule, requests: int, tokens: int) -> Levels:
        now = self._clock()
        found = self._rates.get(tenant, now)
        before = found.buckets if found is not None else None
        stored, levels = take(before, rule, now * 1000.0, requests, tokens)
        expires = now + full_in_ms(levels, rule) / 1000.0
        if found is not None:
            found.buckets, found.expires = stored, expires
        elif expires > now:
            self._evictions.evicted("rate", self._rates.put(tenant, _Rate(stored, expires), now))
        return levels

    def _live(self, tenant: str, session: str) -> _Conversation | None:
        return self._sessions.get((tenant, session), self._clock())

    async def read_history(self, tenant: str, session: str) -> StoredHistory:
        conversation = self._live(tenant, session)
        if conversation is None:
            return StoredHistory()
        return StoredHistory(
            tuple(conversation.entries),
            conversation.trimmed,
            conversation.summary,
            conversation.summary_through,
        )

    async def append_history(
        self, tenant: str, session: str, op_id: str, entries: Sequence[bytes]
    ) -> int:
        conversation = self._live(tenant, session)
        fresh = conversation is None
        if conversation is None:
            conversation = _Conversation(0.0)
        if op_id not in conversation.ops:
            drop, freed = self._admit(session, conversation, entries)
            conversation.ops.add(op_id)
            conversation.entries.extend(entries)
            conversation.owners.extend(op_id for _ in entries)
            conversation.size += sum(len(e) + 1 for e in entries) - freed
            if drop:
                del conversation.entries[:drop]
                del conversation.owners[:drop]
                conversation.trimmed += drop
        if fresh:
            evicted = self._sessions.put((tenant, session), conversation, self._clock())
            self._evictions.evicted("history", evicted)
        conversation.expires = self._clock() + self._ttl
        return conversation.trimmed + len(conversation.entries)

    def _admit(
        self, session: str, conversation: _Conversation, entries: Sequence[bytes]
    ) -> tuple[int, int]:
        """The entries the append trims (count, bytes) to stay within `max_messages`;
        `SessionTooLarge` if the session would still pass its byte limit."""
        adding = sum(len(e) + 1 for e in entries)
        drop = len(conversation.entries) + len(entries) - self._max_messages
        if drop <= trim_slack(self._max_messages):
            drop = 0
        dropped = itertools.islice(itertools.chain(conversation.entries, entries), drop)
        freed = sum(len(e) + 1 for e in dropped)
        if conversation.size + adding - freed > self._max_bytes:
            raise SessionTooLarge(session, conversation.size, adding, self._max_bytes, freed)
        return drop, freed

    async def read_and_append_history(
        self, tenant: str, session: str, op_id: str, entries: Sequence[bytes]
    ) -> StoredHistory:
        before = await self.read_history(tenant, session)
        await self.append_history(tenant, session, op_id, entries)
        return before

    async def discard_turn(self, tenant: str, session: str, op_id: str) -> bool:
        conversation = self._live(tenant, session)
        if conversation is None or op_id not in conversation.ops:
            return False
        conversation.ops.discard(op_id)
        owners = conversation.owners
        gone = [i for i, owner in enumerate(owners) if owner == op_id]
        if not gone:
            return False
        conversation.size -= sum(len(conversation.entries[i]) + 1 for i in gone)
        kept = [i for i, owner in enumerate(owners) if owner != op_id]
        conversation.entries = [conversation.entries[i] for i in kept]
        conversation.owners = [owners[i] for i in kept]
        through = conversation.summary_through - conversation.trimmed
        conversation.summary_through -= sum(1 for i in gone if i <= through)
        return True

    async def set_summary(self, tenant: str, session: str, summary: bytes, through: int) -> bool:
        conversation = self._live(tenant, session)
        if conversation is None or through <= conversation.summary_through:
            return False
        old = len(conversation.summary or b"")
        if conversation.size + len(summary) - old > self._max_bytes:
            raise SessionTooLarge(session, conversation.size, len(summary), self._max_bytes, old)
        conversation.summary, conversation.summary_through = summary, through
        conversation.size += len(summary) - old
        return True

    async def read_vectors(
        self, tenant: str, session: str, held: tuple[int, int] | None = None
    ) -> StoredVectors:
        """The whole blob, never a copy: it is replaced, never changed, by a write."""
        conversation = self._live(tenant, session)
        if conversation is None or not conversation.vectors:
            return StoredVectors()
        blob = conversation.vectors
        return StoredVectors(blob[:HEADER_BYTES], blob, 0)

    async def add_vectors(
        self, tenant: str, session: str, batch: VectorBatch, max_vectors: int
    ) -> int | None:
        conversation = self._live(tenant, session)
        if conversation is None:
            return None
        merged = merge(conversation.vectors, batch, max_vectors)
        if conversation.size + merged.adding - merged.freed > self._max_bytes:
            raise SessionTooLarge(
                session, conversation.size, merged.adding, self._max_bytes, merged.freed
            )
        conversation.vectors = merged.blob
        conversation.size += merged.adding - merged.freed
        return merged.stored

    async def forget(self, tenant: str, session: str) -> bool:
        pin = self._pins.pop((tenant, session))
        self._served.pop((tenant, session))
        return self._sessions.pop((tenant, session)) is not None or pin is not None

    async def close(self) -> None:
        self._pins.clear()
        self._served.clear()
        self._sessions.clear()
