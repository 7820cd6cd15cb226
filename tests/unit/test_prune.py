"""Pruning to the token budget and the body limit: plain values, no I/O."""

from __future__ import annotations

import orjson
import pytest

from router.errors import PayloadTooLarge
from router.orchestrator.history import decode_history, encode_entry, prompt_body
from router.orchestrator.prune import (
    REPLY_PRIMING_TOKENS,
    Budget,
    PromptTooLarge,
    body_size,
    build_prompt,
    fit_body,
)
from router.store import StoredHistory


def conversation(*turns: tuple[str, list[tuple[str, str, int]]], summary=None, through=-1):
    raw = [
        encode_entry(turn, tokens, {"role": role, "content": text})
        for turn, messages in turns
        for role, text, tokens in messages
    ]
    return decode_history(StoredHistory(tuple(raw), 0, summary, through))


def turn(i: int, user: int = 10, reply: int = 10, system: bool = False):
    messages = [("system", "be brief", 5)] if system else []
    messages += [("user", f"q{i}", user), ("assistant", f"a{i}", reply)]
    return (f"t{i}", messages)


def contents(prompt) -> list[str]:
    return [orjson.loads(m)["content"] for m in prompt.messages]


def test_everything_is_sent_when_it_fits():
    history = conversation(turn(0, system=True), turn(1))
    prompt = build_prompt(history, [{"role": "user", "content": "q2"}], [10], Budget(1000, 100))
    assert contents(prompt) == ["be brief", "q0", "a0", "q1", "a1", "q2"]
    assert prompt.tokens == 5 + 20 + 20 + 10 + REPLY_PRIMING_TOKENS
    assert prompt.dropped == ()
    assert prompt.history_tokens == prompt.tokens


def test_oldest_turns_are_dropped_whole_and_the_system_prompt_stays():
    history = conversation(turn(0, system=True), turn(1), turn(2), turn(3))
    budget = Budget(5 + 10 + REPLY_PRIMING_TOKENS + 2 * 20 + 15 + 50, 50)
    prompt = build_prompt(history, [{"role": "user", "content": "q4"}], [10], budget)
    assert contents(prompt) == ["be brief", "q2", "a2", "q3", "a3", "q4"]
    assert [t.id for t in prompt.dropped] == ["t0", "t1"]
    assert prompt.history_tokens - prompt.tokens == 40


def test_a_turn_is_never_split_even_if_half_of_it_would_fit():
    history = conversation(turn(0, system=True), turn(1, user=30, reply=30))
    budget = Budget(5 + 10 + REPLY_PRIMING_TOKENS + 45, 0)
    prompt = build_prompt(history, [{"role": "user", "content": "q2"}], [10], budget)
    assert contents(prompt) == ["be brief", "q2"]
    assert [t.id for t in prompt.dropped] == ["t0", "t1"]


def test_pruning_stops_at_the_first_turn_that_does_not_fit_so_no_gap_appears():
    history = conversation(turn(0, system=True, user=1, reply=1), turn(1, 50, 50), turn(2))
    budget = Budget(5 + 10 + REPLY_PRIMING_TOKENS + 20 + 10, 0)
    prompt = build_prompt(history, [{"role": "user", "content": "q3"}], [10], budget)
    assert contents(prompt) == ["be brief", "q2", "a2", "q3"]
    assert [t.id for t in prompt.dropped] == ["t0", "t1"]


def test_the_newest_message_alone_over_the_budget_is_refused_with_the_numbers():
    history = conversation(turn(0, system=True))
    with pytest.raises(PromptTooLarge) as caught:
        build_prompt(history, [{"role": "user", "content": "big"}], [990], Budget(1000, 100))
    assert caught.value.status == 400
    assert "990 tokens" in caught.value.message and "max_tokens 100" in caught.value.message


def test_turns_without_a_reply_are_not_sent():
    history = conversation(turn(0, system=True), ("t1", [("user", "lost", 10)]), turn(2))
    prompt = build_prompt(history, [{"role": "user", "content": "q3"}], [10], Budget(1000, 10))
    assert "lost" not in contents(prompt)


def test_new_system_messages_replace_the_stored_system_prompt():
    history = conversation(turn(0, system=True))
    new = [{"role": "system", "content": "be verbose"}, {"role": "user", "content": "q1"}]
    prompt = build_prompt(history, new, [6, 10], Budget(1000, 10))
    assert contents(prompt) == ["be verbose", "q0", "a0", "q1"]


def test_the_latest_system_prompt_stored_is_the_one_used():
    history = conversation(turn(0, system=True), ("t1", [("system", "new rules", 3),
                           ("user", "q1", 10), ("assistant", "a1", 10)]))  # fmt: skip
    prompt = build_prompt(history, [{"role": "user", "content": "q2"}], [10], Budget(1000, 10))
    assert contents(prompt) == ["new rules", "q0", "a0", "q1", "a1", "q2"]


def test_the_summary_follows_the_system_prompt_and_folded_turns_are_not_resent():
    summary = b'{"text": "they said hello", "n": 7}'
    history = conversation(turn(0, system=True), turn(1), turn(2), summary=summary, through=4)
    prompt = build_prompt(history, [{"role": "user", "content": "q3"}], [10], Budget(1000, 10))
    assert contents(prompt) == [
        "be brief", "Summary of the earlier conversation: they said hello", "q2", "a2", "q3",
    ]  # fmt: skip
    assert prompt.dropped == ()


def test_body_size_is_the_length_of_the_forwarded_body():
    document = {"model": "m", "messages": [], "max_tokens": 5}
    messages = [orjson.dumps({"role": "user", "content": c}) for c in ("a", "bb", "ccc")]
    frame = len(prompt_body(document, []))
    assert body_size(frame, messages) == len(prompt_body(document, messages))
    assert body_size(frame, []) == frame


def test_oldest_turns_are_dropped_until_the_body_fits_keeping_system_and_new():
    history = conversation(turn(0, system=True), turn(1), turn(2))
    new = [{"role": "user", "content": "q3"}]
    prompt = build_prompt(history, new, [10], Budget(1000, 100))
    whole = body_size(0, prompt.messages)
    one_byte_short = whole - 1
    fitted = fit_body(prompt, 0, one_byte_short)
    assert contents(fitted) == ["be brief", "q1", "a1", "q2", "a2", "q3"]
    assert [t.id for t in fitted.dropped] == ["t0"]
    assert fitted.tokens == prompt.tokens - 20
    assert body_size(0, fitted.messages) <= one_byte_short
    assert fit_body(prompt, 0, whole) is prompt


def test_the_system_prompt_and_new_messages_alone_over_the_body_limit_are_a_413():
    history = conversation(turn(0, system=True), turn(1))
    prompt = build_prompt(history, [{"role": "user", "content": "q2"}], [10], Budget(1000, 100))
    alone = body_size(0, [prompt.messages[0], prompt.messages[-1]])
    assert contents(fit_body(prompt, 0, alone)) == ["be brief", "q2"]
    with pytest.raises(PayloadTooLarge, match=r"limits\.max_body_bytes"):
        fit_body(prompt, 0, alone - 1)


def test_a_reserved_share_of_the_budget_is_held_back_from_the_turns_only():
    history = conversation(turn(0, system=True), turn(1), turn(2), turn(3))
    new = [{"role": "user", "content": "q4"}]
    room = 5 + 10 + REPLY_PRIMING_TOKENS + 2 * 20 + 15
    assert contents(build_prompt(history, new, [10], Budget(room + 50, 50)))[1:3] == ["q2", "a2"]
    held = build_prompt(history, new, [10], Budget(room + 50, 50, reserved=20))
    assert contents(held) == ["be brief", "q3", "a3", "q4"]
    # the new message is judged against the whole budget: a reserve never makes a turn a 400
    alone = Budget(5 + 10 + REPLY_PRIMING_TOKENS, 0, reserved=100)
    assert contents(build_prompt(history, new, [10], alone)) == ["be brief", "q4"]


def test_the_recall_message_goes_before_the_new_messages_or_after_the_system_prompt():
    from router.orchestrator.recall import with_recall

    history = conversation(turn(0, system=True), turn(1))
    prompt = build_prompt(history, [{"role": "user", "content": "q2"}], [10], Budget(1000, 0))
    recall = orjson.dumps({"role": "system", "content": "R"})
    last = with_recall(prompt, recall, 7, "before_last")
    assert contents(last) == ["be brief", "q0", "a0", "q1", "a1", "R", "q2"]
    assert last.tokens == prompt.tokens + 7 and last.head == prompt.head
    first = with_recall(prompt, recall, 7, "after_system")
    assert contents(first) == ["be brief", "R", "q0", "a0", "q1", "a1", "q2"]
    assert first.head == prompt.head + 1
