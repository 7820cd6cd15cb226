"""History pruning under arbitrary conversations: stored turns of any roles and sizes (empty,
very long, images, unanswered turns, a running summary), a new request, a token budget and a
body limit, run through the orchestrator's steps (`build_prompt`, then `fit_body`, the new
messages alone first, as docs/state.md says) with the configured tokenizer.

What docs/state.md promises and these tests check: the prompt fits the budget counted with the
tokenizer, and the body fits the limit, or the request is refused (400
`context_length_exceeded` / 413) exactly when the system prompt and the new messages alone do
not fit; the system prompt comes first and whole (a new one replaces the stored one), the
summary follows it when it fits, then the newest complete turns, each whole and as stored, in
their order with no gap, then the new messages; a turn is dropped only when it does not fit;
unanswered and summarised turns are never sent; the same inputs give the same prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from hypothesis import event, given
from hypothesis import strategies as st

from router.config import TokenizerSettings
from router.errors import PayloadTooLarge
from router.orchestrator.history import (
    SYSTEM_ROLES,
    Conversation,
    Message,
    Summary,
    decode_history,
    encode_entry,
    encode_summary,
    prompt_body,
)
from router.orchestrator.prune import (
    REPLY_PRIMING_TOKENS,
    Budget,
    Prompt,
    PromptTooLarge,
    body_size,
    build_prompt,
    fit_body,
)
from router.orchestrator.tokenizer import MediaRule, SentCounter, bpe_tokenizer
from router.store import StoredHistory

CONFIGURED = TokenizerSettings()  # the defaults router.yaml ships: bpe cl100k_base
TOKENIZER = SentCounter(
    bpe_tokenizer(CONFIGURED.encoding, CONFIGURED.per_message_tokens),
    MediaRule(CONFIGURED.media_part_tokens, CONFIGURED.media_bytes_per_token),
)


def count(messages: Sequence[Message]) -> list[int]:
    """The configured tokenizer's counts; the local one never awaits, so it runs inline."""
    coroutine = TOKENIZER.count(messages)
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the local tokenizer awaited")


# -- conversations ---------------------------------------------------------------------------

short_texts = st.one_of(st.text(max_size=40), st.just(""))
texts = st.one_of(
    short_texts,
    short_texts,
    short_texts,
    st.integers(1, 30_000).map(lambda n: ("long words " * n)[:n]),
    st.integers(1, 3000).map(lambda n: "\U0001f600\u00e9" * n),
)
parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
    st.fixed_dictionaries(
        {"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": texts})}
    ),
)
contents = st.one_of(texts, st.lists(parts, max_size=3), st.none())


def message(roles: Sequence[str]) -> st.SearchStrategy[Message]:
    return st.fixed_dictionaries(
        {"role": st.sampled_from(roles), "content": contents},
        optional={"name": st.text(max_size=8), "tool_call_id": st.text(max_size=8)},
    )


NEW_ROLES = ["user", "user", "system", "developer", "tool", "assistant"]
REPLY = message(["assistant"])


@dataclass(frozen=True)
class StoredTurn:
    id: str
    messages: list[Message]
    reply: Message | None  # None: the stream broke, the turn was never answered


@st.composite
def stored_turns(draw: st.DrawFn) -> list[StoredTurn]:
    turns = []
    for index in range(draw(st.integers(0, 10))):
        messages = draw(st.lists(message(NEW_ROLES), min_size=1, max_size=3))
        reply = draw(REPLY) if draw(st.integers(0, 3)) else None  # most turns are answered
        turns.append(StoredTurn(f"turn-{index}", messages, reply))
    return turns


@dataclass(frozen=True)
class Case:
    turns: list[StoredTurn]
    first_index: int
    summary: str | None
    summary_through: int  # absolute index of the last entry the summary covers
    document: dict[str, Any]
    budget: Budget
    limit: int
    bound: str = ""  # which bound the case was drawn near, for --hypothesis-show-statistics


@st.composite
def cases(draw: st.DrawFn) -> Case:
    turns = draw(stored_turns())
    entries = sum(len(t.messages) + (t.reply is not None) for t in turns)
    first_index = draw(st.integers(0, 5))
    summary = draw(texts) if draw(st.integers(0, 2)) == 0 else None
    through = -1  # the summary covers the first k turns, or stops inside one
    if summary is not None and entries:
        sizes = [len(t.messages) + (t.reply is not None) for t in turns]
        at_turn = st.integers(0, len(turns)).map(lambda k: first_index + sum(sizes[:k]) - 1)
        through = draw(st.one_of(at_turn, st.integers(-1, entries - 1).map(
            lambda i: first_index + i)))  # fmt: skip
    new = draw(st.lists(message(NEW_ROLES), min_size=1, max_size=3))
    document: dict[str, Any] = {"model": "m", "messages": new, "stream": draw(st.booleans())}
    max_tokens = draw(st.one_of(st.integers(1, 64), st.integers(1, 4000)))
    if draw(st.booleans()):
        document["max_tokens"] = max_tokens
    else:
        max_tokens = 512  # history.default_max_tokens, reserved when the request sets none
    # Budgets and limits anywhere, or near the sizes at stake: the fixed part (system prompt
    # and new messages) alone, or with the newest k answered turns, where pruning decides.
    fixed = [*_system_of(turns, new), *(m for m in new if m["role"] not in SYSTEM_ROLES)]
    fixed_tokens = sum(count(fixed)) + REPLY_PRIMING_TOKENS
    fixed_bytes = len(prompt_body(document, [orjson.dumps(m) for m in fixed]))
    answered = [  # as the decoder groups them: a turn with an assistant message is complete
        own
        for t in turns
        if (own := [m for m in (*t.messages, t.reply) if m and m["role"] not in SYSTEM_ROLES])
        and any(m["role"] == "assistant" for m in own)
    ]
    newest = draw(st.integers(min(1, len(answered)), len(answered)))
    turn_tokens = sum(sum(count(own)) for own in answered[len(answered) - newest :])
    turn_bytes = sum(
        len(orjson.dumps(m)) + 1 for o in answered[len(answered) - newest :] for m in o
    )
    near = draw(st.integers(-2, 2))
    loose_tokens, loose_bytes = max_tokens + 10**7, 16 * 1024 * 1024  # nothing pruned for it
    tight = draw(
        st.sampled_from(["tokens", "bytes"] * 2 + ["fixed tokens", "fixed bytes", "neither"])
    )
    if tight == "tokens":
        max_prompt, limit = max_tokens + fixed_tokens + turn_tokens + near, loose_bytes
    elif tight == "bytes":
        max_prompt, limit = loose_tokens, fixed_bytes + turn_bytes + near
    elif tight == "fixed tokens":
        max_prompt, limit = max_tokens + fixed_tokens + near, loose_bytes
    elif tight == "fixed bytes":
        max_prompt, limit = loose_tokens, fixed_bytes + near
    else:
        max_prompt = draw(st.one_of(st.integers(16, 6000), st.integers(16, 10**6)))
        limit = draw(st.integers(1024, 400_000))
    budget = Budget(max(16, max_prompt), max_tokens)  # history.max_prompt_tokens >= 16
    limit = max(1024, limit)  # limits.max_body_bytes >= 1024
    bound = f"{tight} {near:+d}, {newest} of {len(answered)} turns" if tight != "neither" else tight
    return Case(turns, first_index, summary, through, document, budget, limit, bound)


def stored(case: Case) -> StoredHistory:
    entries = []
    for turn in case.turns:
        messages = [*turn.messages, *([turn.reply] if turn.reply is not None else [])]
        entries.extend(
            encode_entry(turn.id, n, m) for m, n in zip(messages, count(messages), strict=True)
        )
    summary = None
    if case.summary is not None:
        tokens = count([Summary(case.summary, 0, 0).message()])[0]
        summary = encode_summary(case.summary, tokens)
    return StoredHistory(tuple(entries), case.first_index, summary, case.summary_through)


def run(case: Case) -> tuple[Prompt, Conversation] | PromptTooLarge | PayloadTooLarge:
    """What `Orchestrator.handle` does between reading the history and forwarding."""
    new = case.document["messages"]
    new_tokens = count(new)
    frame = len(prompt_body(case.document, []))
    try:
        alone = build_prompt(Conversation(), new, new_tokens, case.budget)
        fit_body(alone, frame, case.limit)
        conversation = decode_history(stored(case))
        prompt = build_prompt(conversation, new, new_tokens, case.budget)
        return fit_body(prompt, frame, case.limit), conversation
    except (PromptTooLarge, PayloadTooLarge) as err:
        return err


# -- the properties --------------------------------------------------------------------------


def _system_of(turns: list[StoredTurn], new: list[Message]) -> list[Message]:
    """The system prompt sent: the new request's system messages, else those of the latest
    stored turn that sent any."""
    latest = [m for m in new if m["role"] in SYSTEM_ROLES]
    for turn in [] if latest else turns:
        latest = [m for m in turn.messages if m["role"] in SYSTEM_ROLES] or latest
    return latest


def _expected_system(case: Case) -> list[bytes]:
    return [orjson.dumps(m) for m in _system_of(case.turns, case.document["messages"])]


@given(cases())
def test_a_pruned_prompt_fits_or_the_request_is_refused_when_its_fixed_part_cannot(
    case: Case,
) -> None:
    outcome = run(case)
    new = case.document["messages"]
    rest = [orjson.dumps(m) for m in new if m["role"] not in SYSTEM_ROLES]
    system = _expected_system(case)
    fixed_tokens = sum(count([orjson.loads(m) for m in [*system, *rest]])) + REPLY_PRIMING_TOKENS
    frame = len(prompt_body(case.document, []))
    new_system = [orjson.dumps(m) for m in new if m["role"] in SYSTEM_ROLES]
    event(f"outcome: {type(outcome).__name__}")
    if isinstance(outcome, PromptTooLarge):
        assert fixed_tokens > case.budget.tokens
        assert outcome.status == 400 and outcome.code == "context_length_exceeded"
        return
    assert fixed_tokens <= case.budget.tokens
    # the summary is part of the fixed part when it fits the budget beside it (docs/state.md:
    # "if the system prompt, summary and new messages alone are over it, ... a 413")
    summary = []
    if case.summary is not None:
        message = Summary(case.summary, 0, 0).message()
        if fixed_tokens + count([message])[0] <= case.budget.tokens:
            summary = [orjson.dumps(message)]
    over = body_size(frame, [*new_system, *rest]) > case.limit or (
        body_size(frame, [*system, *summary, *rest]) > case.limit
    )
    if isinstance(outcome, PayloadTooLarge):
        assert outcome.status == 413 and "limits.max_body_bytes" in outcome.message
        assert over
        return
    assert not over
    prompt, _ = outcome
    sent = [orjson.loads(m) for m in prompt.messages]
    assert sum(count(sent)) + REPLY_PRIMING_TOKENS == prompt.tokens <= case.budget.tokens
    body = prompt_body(case.document, prompt.messages)
    assert len(body) == body_size(frame, prompt.messages) <= case.limit
    assert orjson.loads(body)["messages"] == sent


def _sendable(case: Case) -> list[tuple[str, list[bytes]]]:
    """The stored turns a prompt may carry, oldest first, with their entries as stored:
    answered (an assistant message among them), not covered by the summary; system messages
    are the system prompt's, not the turn's."""
    index = case.first_index
    sendable = []
    for turn in case.turns:
        messages = [*turn.messages, *([turn.reply] if turn.reply is not None else [])]
        index += len(messages)
        own = [m for m in messages if m["role"] not in SYSTEM_ROLES]
        last = (
            index
            - 1
            - next(
                (i for i, m in enumerate(reversed(messages)) if m["role"] not in SYSTEM_ROLES), 0
            )
        )
        answered = any(m["role"] == "assistant" for m in own)
        if own and answered and last > case.summary_through:
            sendable.append((turn.id, [orjson.dumps(m) for m in own]))
    return sendable


@given(cases())
def test_the_prompt_is_system_summary_newest_whole_turns_then_the_new_messages(
    case: Case,
) -> None:
    outcome = run(case)
    if not isinstance(outcome, tuple):
        return
    prompt, conversation = outcome
    messages = prompt.messages
    system = _expected_system(case)
    rest = [orjson.dumps(m) for m in case.document["messages"] if m["role"] not in SYSTEM_ROLES]

    assert messages[: len(system)] == system
    assert messages[len(messages) - len(rest) :] == rest
    summary = conversation.summary
    summarised = summary is not None and messages[len(system) : len(system) + 1] == [
        orjson.dumps(summary.message())
    ]
    assert prompt.head == len(system) + summarised
    middle = messages[prompt.head : len(messages) - len(rest)]

    # the newest answered turns, each whole and as stored, oldest first, with no gap
    sendable = _sendable(case)
    kept = [(turn.id, [entry.raw for entry in turn.entries]) for turn in prompt.kept]
    event(f"bound: {case.bound}")
    event(f"turns: {'all' if len(kept) == len(sendable) else 'some' if kept else 'none'} sent")
    event(f"summary: {'none' if summary is None else 'sent' if summarised else 'left out'}")
    event(f"turns summarised: {len(conversation.folded)}")
    assert kept == sendable[len(sendable) - len(kept) :]
    assert middle == [raw for _, entries in kept for raw in entries]

    # a turn is left out only when it does not fit: with the next older one, a bound breaks
    if len(kept) < len(sendable):
        _, older = sendable[len(sendable) - len(kept) - 1]
        with_it = [*messages[: prompt.head], *older, *messages[prompt.head :]]
        older_tokens = sum(count([orjson.loads(raw) for raw in older]))
        frame = len(prompt_body(case.document, []))
        assert (
            prompt.tokens + older_tokens > case.budget.tokens
            or body_size(frame, with_it) > case.limit
        )
    # the summary is left out only when it does not fit beside the system prompt and new
    if summary is not None and not summarised:
        fixed = prompt.tokens - sum(turn.tokens for turn in prompt.kept)
        assert fixed + summary.tokens > case.budget.tokens


@given(cases())
def test_pruning_is_deterministic(case: Case) -> None:
    def outcome() -> Any:
        result = run(case)
        if isinstance(result, tuple):
            prompt, _ = result
            return prompt.messages, prompt.tokens, [t.key for t in prompt.dropped]
        return type(result), result.message

    assert outcome() == outcome()
