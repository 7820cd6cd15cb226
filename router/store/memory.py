"""In-memory session state for a single router process: the embedded default, no Redis."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from router.store.base import StoredHistory
from router.store.keys import trim_slack


@dataclass(slots=True)
class _Conversation:
    expires: float
    entries: list[bytes] = field(default_factory=list)
    ops: set[str] = field(default_factory=set)
    trimmed: int = 0
    summary: bytes | None = None
    summary_through: int = -1


class MemoryStore:
    """Per-process state; expired entries are dropped when read and in periodic sweeps."""

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
    ):
        self._clock = clock
        self._max_pins = max_pins
        self._pins: dict[tuple[str, str], tuple[str, float]] = {}
        self._ttl = history_ttl
        self._max_messages = max_messages
        self._max_sessions = max_sessions
        self._sessions: dict[tuple[str, str], _Conversation] = {}

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

    def _live(self, tenant: str, session: str) -> _Conversation | None:
        conversation = self._sessions.get((tenant, session))
        if conversation is not None and conversation.expires <= self._clock():
            del self._sessions[(tenant, session)]
            return None
        return conversation

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
        if conversation is None:
            if len(self._sessions) >= self._max_sessions:
                self._sweep_sessions()
            conversation = self._sessions[(tenant, session)] = _Conversation(0.0)
        conversation.expires = self._clock() + self._ttl
        if op_id not in conversation.ops:
            conversation.ops.add(op_id)
            conversation.entries.extend(entries)
            excess = len(conversation.entries) - self._max_messages
            if excess > trim_slack(self._max_messages):
                del conversation.entries[:excess]
                conversation.trimmed += excess
        return conversation.trimmed + len(conversation.entries)

    async def read_and_append_history(
        self, tenant: str, session: str, op_id: str, entries: Sequence[bytes]
    ) -> StoredHistory:
        before = await self.read_history(tenant, session)
        await self.append_history(tenant, session, op_id, entries)
        return before

    def _sweep_sessions(self) -> None:
        now = self._clock()
        self._sessions = {k: v for k, v in self._sessions.items() if v.expires > now}
        if len(self._sessions) >= self._max_sessions:
            keep = sorted(self._sessions.items(), key=lambda kv: kv[1].expires)
            self._sessions = dict(keep[-(self._max_sessions // 2) :])

    async def set_summary(self, tenant: str, session: str, summary: bytes, through: int) -> bool:
        conversation = self._live(tenant, session)
        if conversation is None or through <= conversation.summary_through:
            return False
        conversation.summary, conversation.summary_through = summary, through
        return True

    async def forget(self, tenant: str, session: str) -> bool:
        pin = self._pins.pop((tenant, session), None)
        return self._sessions.pop((tenant, session), None) is not None or pin is not None

    async def close(self) -> None:
        self._pins.clear()
        self._sessions.clear()
