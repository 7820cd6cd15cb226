"""Per-minute token buckets: what a request takes, what a reply debits, what clients are told."""

from __future__ import annotations

import pytest

from router.limits.buckets import Levels, Rule, duration, full_in_ms, headers, take

MINUTE = 60_000.0


def test_a_full_bucket_lets_a_minutes_worth_through_at_once_then_refuses():
    rule = Rule(requests=3)
    state, now = None, 1000.0
    for left in (2, 1, 0):
        state, levels = take(state, rule, now, 1, 0)
        assert levels.refused is None and levels.requests == left
    state, levels = take(state, rule, now, 1, 0)
    assert levels.refused == "requests" and levels.requests == 0
    assert state.requests == 0, "a refused request takes nothing"


def test_the_requests_bucket_refills_at_its_rate_and_never_past_full():
    rule = Rule(requests=60)  # one a second
    state = None
    for _ in range(60):
        state, _ = take(state, rule, 0.0, 1, 0)
    _, levels = take(state, rule, 999.0, 1, 0)
    assert levels.refused == "requests", "0.999 of a request back after 999 ms"
    state, levels = take(state, rule, 1000.0, 1, 0)
    assert levels.refused is None and levels.requests == pytest.approx(0.0)
    _, levels = take(state, rule, 1000.0 + 10 * MINUTE, 0, 0)
    assert levels.requests == 60, "capped at a minute's worth"


def test_tokens_are_debited_after_the_reply_and_may_overshoot_below_zero():
    rule = Rule(tokens=100)
    state, levels = take(None, rule, 0.0, 1, 0)
    assert levels.refused is None and levels.tokens == 100
    state, levels = take(state, rule, 0.0, 0, 130)  # a reply bigger than what was left
    assert levels.tokens == -30 and levels.refused is None, "a debit is never refused"
    state, levels = take(state, rule, 0.0, 1, 0)
    assert levels.refused == "tokens"
    _, levels = take(state, rule, 18_000.0, 1, 0)  # 30 tokens back in 18 s
    assert levels.refused == "tokens", "not while the bucket is not above zero"
    _, levels = take(state, rule, 18_600.0, 1, 0)
    assert levels.refused is None


def test_an_unlimited_dimension_keeps_no_state():
    state, _ = take(None, Rule(requests=5), 0.0, 1, 40)
    assert state.tokens is None and state.requests == 4


def test_the_state_is_forgettable_once_both_buckets_are_full_again():
    rule = Rule(requests=60, tokens=600)
    _, levels = take(None, rule, 0.0, 1, 0)
    assert full_in_ms(levels, rule) == pytest.approx(1000.0)
    _, debited = take(None, rule, 0.0, 0, 300)
    assert full_in_ms(debited, rule) == pytest.approx(30_000.0)


def test_headers_give_limit_remaining_and_reset_like_openai():
    rule = Rule(requests=60, tokens=150_000)
    found = headers(Levels(requests=59.4, tokens=0.0), rule)
    assert found == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "600ms",
        "x-ratelimit-limit-tokens": "150000",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "1m0s",
    }


def test_a_refusal_says_when_to_retry():
    rule = Rule(requests=6)  # one every 10 s
    found = headers(Levels(requests=0.25, tokens=0.0, refused="requests"), rule)
    assert found["Retry-After"] == "8" and found["retry-after-ms"] == "7500"
    tokens = headers(Levels(0.0, -50.0, "tokens"), Rule(tokens=600))  # 10 tokens a second
    assert tokens["Retry-After"] == "6" and tokens["retry-after-ms"] == "5001"
    assert "x-ratelimit-limit-requests" not in tokens


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "0ms"), (0.02, "20ms"), (1.0, "1s"), (1.5, "1.5s"), (59.9985, "59.999s"),
     (59.9995, "1m0s"), (360.0, "6m0s"), (90.25, "1m30.25s")],
)  # fmt: skip
def test_durations_read_as_openai_writes_them(seconds, text):
    assert duration(seconds) == text
