"""Fit a conversation into the prompt token budget, and the body into the router's body limit.
Pure: plain values in, plain values out.

The system prompt is never pruned and the summary follows it; turns are dropped oldest first
and whole (a user message with its reply), and only complete turns are sent; if the new messages
do not fit beside the system prompt, the request is refused with a message that says why. The
same holds for bytes: older turns are dropped until the forwarded body is within
`limits.max_body_bytes`, and if the system prompt and new messages alone are over it, the
request is refused (413).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from router.errors import BadRequest, PayloadTooLarge
from router.orchestrator.history import SYSTEM_ROLES, Conversation, Message, Turn

REPLY_PRIMING_TOKENS = 3


@dataclass(frozen=True, slots=True)
class Budget:
    """The prompt's token budget: `max_prompt_tokens` less the completion's `max_tokens`;
    `reserved` of it is held back from the history's turns (for recalled ones)."""

    max_prompt_tokens: int
    max_tokens: int
    reserved: int = 0

    @property
    def tokens(self) -> int:
        return self.max_prompt_tokens - self.max_tokens


@dataclass(frozen=True, slots=True)
class Prompt:
    """`messages` are encoded JSON, ready to splice into the forwarded body; the first `head`
    are the system prompt and summary, then come the `kept` turns' entries, then the new
    messages."""

    messages: list[bytes]
    tokens: int
    history_tokens: int
    dropped: tuple[Turn, ...]
    head: int = 0
    kept: tuple[Turn, ...] = ()


class PromptTooLarge(BadRequest):
    code = "context_length_exceeded"


def build_prompt(
    conversation: Conversation,
    new_messages: Sequence[Message],
    new_tokens: Sequence[int],
    budget: Budget,
) -> Prompt:
    """The prompt to send: system prompt, summary, the newest complete turns that fit, new.

    System messages among the new ones replace the stored system prompt for this request.
    """
    new_system = [(m, n) for m, n in zip(new_messages, new_tokens, strict=True) if _is_system(m)]
    rest = [orjson.dumps(m) for m in new_messages if not _is_system(m)]
    rest_tokens = sum(new_tokens) - sum(n for _, n in new_system)
    if new_system:
        system = [orjson.dumps(m) for m, _ in new_system]
        system_tokens = sum(n for _, n in new_system)
    else:
        system = [e.raw for e in conversation.system]
        system_tokens = sum(e.tokens for e in conversation.system)
    fixed = system_tokens + rest_tokens + REPLY_PRIMING_TOKENS
    if fixed > budget.tokens:
        raise PromptTooLarge(
            f"the newest message needs {rest_tokens} tokens and the system prompt {system_tokens}, "
            f"over the prompt budget of {budget.tokens} tokens (history.max_prompt_tokens "
            f"{budget.max_prompt_tokens} minus max_tokens {budget.max_tokens})"
        )
    summary = conversation.summary
    if summary is not None and fixed + summary.tokens <= budget.tokens:
        fixed += summary.tokens
        system.append(orjson.dumps(summary.message()))
    kept, dropped = _fit(conversation.turns, budget.tokens - fixed - budget.reserved)
    messages = [*system, *(e.raw for turn in kept for e in turn.entries), *rest]
    history = conversation.tokens + sum(new_tokens) + REPLY_PRIMING_TOKENS
    tokens = fixed + sum(t.tokens for t in kept)
    return Prompt(messages, tokens, history, dropped, len(system), tuple(kept))


def body_size(frame: int, messages: Sequence[bytes]) -> int:
    """Bytes of a body whose messages array is `messages`, given the `frame` bytes it has
    with no messages (the rest of the request)."""
    return frame + sum(len(m) for m in messages) + max(len(messages) - 1, 0)


def fit_body(prompt: Prompt, frame: int, limit: int) -> Prompt:
    """`prompt` with its oldest turns dropped until the body (`frame` bytes around the
    messages) is at most `limit` bytes; the system prompt, summary and new messages stay, and
    if they alone are over, the request is refused with a 413 naming the limit."""
    size = body_size(frame, prompt.messages)
    if size <= limit:
        return prompt
    kept = list(prompt.kept)
    while kept and size > limit:
        size -= sum(len(e.raw) + 1 for e in kept.pop(0).entries)
    if size > limit:
        raise PayloadTooLarge(
            f"the prompt for this turn is {size} bytes with only the system prompt and the new "
            f"messages, over the {limit}-byte limit (limits.max_body_bytes)"
        )
    gone = prompt.kept[: len(prompt.kept) - len(kept)]
    cut = prompt.head + sum(len(t.entries) for t in gone)
    return dataclasses.replace(
        prompt,
        messages=[*prompt.messages[: prompt.head], *prompt.messages[cut:]],
        tokens=prompt.tokens - sum(t.tokens for t in gone),
        dropped=(*prompt.dropped, *gone),
        kept=tuple(kept),
    )


def _is_system(message: Message) -> bool:
    return message.get("role") in SYSTEM_ROLES


def _fit(turns: Sequence[Turn], room: int) -> tuple[list[Turn], tuple[Turn, ...]]:
    """The newest complete turns whose tokens fit in `room`, oldest first, and those left out."""
    kept: list[Turn] = []
    complete = [t for t in turns if t.complete]
    for position in range(len(complete) - 1, -1, -1):
        turn = complete[position]
        if turn.tokens > room:
            return kept[::-1], tuple(complete[: position + 1])
        room -= turn.tokens
        kept.append(turn)
    return kept[::-1], ()
