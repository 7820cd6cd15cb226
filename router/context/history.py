"""Stored history entries and their grouping into a conversation.

An entry is one message with the id of the turn (request) that produced it and its token count
measured when it was stored, so rebuilding a prompt never re-tokenizes the history. Messages are
grouped by turn: a turn is the new messages of one request plus the assistant's reply, kept or
dropped whole. System messages form the system prompt: the latest turn that sent any defines it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from router.store import StoredHistory

Message = dict[str, Any]
SYSTEM_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True, slots=True)
class Entry:
    turn: str
    tokens: int
    message: Message
    index: int = 0

    @property
    def is_system(self) -> bool:
        return self.message.get("role") in SYSTEM_ROLES


@dataclass(frozen=True, slots=True)
class Turn:
    """The messages of one request and, when it completed, the assistant's reply."""

    id: str
    entries: tuple[Entry, ...]

    @property
    def tokens(self) -> int:
        return sum(e.tokens for e in self.entries)

    @property
    def complete(self) -> bool:
        return any(e.message.get("role") == "assistant" for e in self.entries)

    @property
    def last_index(self) -> int:
        return self.entries[-1].index

    @property
    def messages(self) -> list[Message]:
        return [e.message for e in self.entries]


@dataclass(frozen=True, slots=True)
class Summary:
    text: str
    tokens: int
    through: int

    def message(self) -> Message:
        return {"role": "system", "content": f"Summary of the earlier conversation: {self.text}"}


@dataclass(frozen=True, slots=True)
class Conversation:
    """A decoded history: the system prompt, turns in arrival order, and the running summary."""

    system: tuple[Entry, ...] = ()
    turns: tuple[Turn, ...] = ()
    summary: Summary | None = None
    first_index: int = 0
    next_index: int = 0
    folded: tuple[Turn, ...] = field(default=(), repr=False)

    @property
    def tokens(self) -> int:
        """Every token of the conversation, folded turns included."""
        whole = (*self.folded, *self.turns)
        return sum(e.tokens for e in self.system) + sum(t.tokens for t in whole)


def encode_entry(turn: str, tokens: int, message: Message) -> bytes:
    return orjson.dumps({"t": turn, "n": tokens, "m": message})


def encode_summary(text: str, tokens: int) -> bytes:
    return orjson.dumps({"text": text, "n": tokens})


def decode_entries(raw: Iterable[bytes], first_index: int = 0) -> list[Entry]:
    documents = orjson.loads(b"[" + b",".join(raw) + b"]")
    return [Entry(d["t"], d["n"], d["m"], first_index + i) for i, d in enumerate(documents)]


def decode_history(stored: StoredHistory) -> Conversation:
    """Group stored entries into a conversation; turns the summary covers are `folded`."""
    entries = decode_entries(stored.entries, stored.first_index)
    summary = None
    if stored.summary is not None:
        document = orjson.loads(stored.summary)
        summary = Summary(document["text"], document["n"], stored.summary_through)
    by_turn: dict[str, list[Entry]] = {}
    system_turn: str | None = None
    for entry in entries:
        if entry.is_system:
            system_turn = entry.turn
        by_turn.setdefault(entry.turn, []).append(entry)
    system = tuple(e for e in by_turn.get(system_turn or "", ()) if e.is_system)
    turns, folded = [], []
    for turn_id, group in by_turn.items():
        turn = Turn(turn_id, tuple(e for e in group if not e.is_system))
        if not turn.entries:
            continue
        (folded if summary and turn.last_index <= summary.through else turns).append(turn)
    return Conversation(
        system,
        tuple(turns),
        summary,
        stored.first_index,
        stored.first_index + len(entries),
        tuple(folded),
    )
