"""Stored history entries and their grouping into a conversation.

An entry is one message with the id of the turn (request) that produced it and its token count
measured when it was stored, so rebuilding a prompt never re-tokenizes the history. Entries are
kept as `tokens TAB role TAB turn TAB message`, the last three as JSON (which never contains a raw
tab or newline), so decoding a history splits bytes and never parses a message: the prompt is
spliced together from the stored message JSON as it is.

Messages are grouped by turn: a turn is the new messages of one request plus the assistant's
reply, kept or dropped whole. System messages form the system prompt: the latest turn that sent
any defines it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import orjson

from router.store import StoredHistory

Message = dict[str, Any]
SYSTEM_ROLES = frozenset({"system", "developer"})
_ROLES = {orjson.dumps(r): r for r in ("system", "developer", "user", "assistant", "tool")}


class Entry(NamedTuple):
    """One stored message; a named tuple because a history decodes thousands of them and a
    frozen dataclass costs several times more to build."""

    turn: bytes
    tokens: int
    role: str
    raw: bytes
    index: int = 0

    @property
    def message(self) -> Message:
        return orjson.loads(self.raw)


class Turn(NamedTuple):
    """The messages of one request and, when it completed, the assistant's reply."""

    key: bytes
    entries: tuple[Entry, ...]
    tokens: int = 0
    complete: bool = False

    @property
    def id(self) -> str:
        return orjson.loads(self.key)

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
    """A decoded history: the system prompt, turns in arrival order, and the running summary.

    `tokens` counts every stored entry, folded turns and superseded system prompts included.
    """

    system: tuple[Entry, ...] = ()
    turns: tuple[Turn, ...] = ()
    summary: Summary | None = None
    first_index: int = 0
    folded: tuple[Turn, ...] = field(default=(), repr=False)
    tokens: int = 0


def encode_entry(turn: str, tokens: int, message: Message) -> bytes:
    role = orjson.dumps(str(message.get("role", "")))
    return b"%d\t%b\t%b\t%b" % (tokens, role, orjson.dumps(turn), orjson.dumps(message))


def encode_summary(text: str, tokens: int) -> bytes:
    return orjson.dumps({"text": text, "n": tokens})


def decode_history(stored: StoredHistory) -> Conversation:
    """Group stored entries into a conversation; turns the summary covers are `folded`."""
    summary = None
    if stored.summary is not None:
        document = orjson.loads(stored.summary)
        summary = Summary(document["text"], document["n"], stored.summary_through)
    groups: dict[bytes, list[Any]] = {}
    system: list[Entry] = []
    system_turn = b""
    total = 0
    roles = _ROLES
    for index, line in enumerate(stored.entries, stored.first_index):
        count, role_json, turn, raw = line.split(b"\t", 3)
        role = roles.get(role_json) or orjson.loads(role_json)
        entry = Entry(turn, int(count), role, raw, index)
        total += entry.tokens
        if role in SYSTEM_ROLES:
            if turn != system_turn:
                system_turn, system = turn, []
            system.append(entry)
            continue
        group = groups.get(turn)
        if group is None:
            group = groups[turn] = [[], 0, False]
        group[0].append(entry)
        group[1] += entry.tokens
        group[2] = group[2] or role == "assistant"
    through = summary.through if summary is not None else -1
    turns, folded = [], []
    for turn, (entries, tokens, complete) in groups.items():
        made = Turn(turn, tuple(entries), tokens, complete)
        (folded if entries[-1].index <= through else turns).append(made)
    return Conversation(
        tuple(system),
        tuple(turns),
        summary,
        stored.first_index,
        tuple(folded),
        total,
    )


def without_turn(conversation: Conversation, turn: str) -> Conversation:
    """The conversation without an earlier try of this same turn (a client retry), so the
    retried messages are not sent twice."""
    key = orjson.dumps(turn)
    if not any(t.key == key for t in conversation.turns):
        return conversation
    turns = tuple(t for t in conversation.turns if t.key != key)
    return replace(conversation, turns=turns)


def prompt_body(document: dict[str, Any], messages: Sequence[bytes]) -> bytes:
    """The client's request body with `messages` replaced by already-encoded messages."""
    rest = {k: v for k, v in document.items() if k != "messages"}
    head = orjson.dumps({**rest, "messages": None})
    return head[: -len(b"null}")] + b"[" + b",".join(messages) + b"]}"
