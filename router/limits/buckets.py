"""Per-minute rate limits as token buckets: the arithmetic, and what a client is told.

A limit of N per minute is a bucket of N that refills at N/60 a second, so a client may spend
a whole minute's allowance at once and then one more every 60/N seconds; a bucket that has not
been touched for a minute is full (and its stored state may go). A request takes one from the
requests bucket and is refused when less than one is left; tokens are debited after the reply,
so the tokens bucket may go below zero (a tenant overshoots by the replies in flight when it
ran out), and a request is refused while it is not above zero.

`take` is the reference the stores implement: the in-memory store calls it, the Redis store
runs the same steps in one Lua script. Pure: no I/O, no clock of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MINUTE_MS = 60_000.0


@dataclass(frozen=True, slots=True)
class Rule:
    """A tenant's limits per minute; 0 means none on that dimension."""

    requests: int = 0
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class Levels:
    """What is left in each bucket after a call, and which limit refused it (`requests`,
    `tokens`, or None: allowed)."""

    requests: float
    tokens: float
    refused: str | None = None


@dataclass(frozen=True, slots=True)
class Buckets:
    """One tenant's stored state: each bucket's level (None: not limited when last written)
    and when they were written (ms)."""

    requests: float | None
    tokens: float | None
    at: float


def level(stored: float | None, at: float, limit: int, now_ms: float) -> float:
    """A bucket's level now: `stored` at `at`, refilled since, at most full (`limit`); a
    bucket never stored is full."""
    if limit <= 0:
        return 0.0
    if stored is None:
        return float(limit)
    return min(float(limit), stored + max(0.0, now_ms - at) * limit / MINUTE_MS)


def take(
    state: Buckets | None, rule: Rule, now_ms: float, requests: int, tokens: int
) -> tuple[Buckets, Levels]:
    """Take `requests` (1 for a request, 0 for a debit) unless a limit refuses it; debit
    `tokens` (the reply's, after it). Returns the state to store and the levels."""
    before = state or Buckets(None, None, now_ms)
    r = level(before.requests, before.at, rule.requests, now_ms)
    t = level(before.tokens, before.at, rule.tokens, now_ms)
    refused = None
    if requests > 0:
        if rule.requests > 0 and r < requests:
            refused = "requests"
        elif rule.tokens > 0 and t <= 0:
            refused = "tokens"
        else:
            r -= requests
    if rule.tokens > 0:
        t -= tokens
    stored = Buckets(r if rule.requests > 0 else None, t if rule.tokens > 0 else None, now_ms)
    return stored, Levels(r, t, refused)


def full_in_ms(levels: Levels, rule: Rule) -> float:
    """How long until both buckets are full again: after that the state can be forgotten."""
    waits = [0.0]
    if rule.requests > 0:
        waits.append((rule.requests - levels.requests) * MINUTE_MS / rule.requests)
    if rule.tokens > 0:
        waits.append((rule.tokens - levels.tokens) * MINUTE_MS / rule.tokens)
    return max(waits)


def retry_after(levels: Levels, rule: Rule) -> float:
    """Seconds until the refused limit would let a request through."""
    if levels.refused == "requests":
        return max(0.0, (1.0 - levels.requests) * 60.0 / rule.requests)
    if levels.refused == "tokens":
        return max(0.0, -levels.tokens * 60.0 / rule.tokens) + 0.001
    return 0.0


def duration(seconds: float) -> str:
    """A duration as OpenAI's x-ratelimit-reset-* headers give it: `20ms`, `1s`, `1.5s`,
    `6m0s`."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))  # 0.6000000000000014 s is 600 ms
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest = divmod(ms, 60_000)
    text = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{minutes}m{text}" if minutes else text


def headers(levels: Levels, rule: Rule) -> dict[str, str]:
    """The x-ratelimit-* headers (limit, remaining, reset) of each limited dimension, and
    Retry-After (whole seconds) with retry-after-ms when a limit refused the request."""
    found: dict[str, str] = {}
    for name, limit, left in (
        ("requests", rule.requests, levels.requests),
        ("tokens", rule.tokens, levels.tokens),
    ):
        if limit <= 0:
            continue
        found[f"x-ratelimit-limit-{name}"] = str(limit)
        found[f"x-ratelimit-remaining-{name}"] = str(max(0, math.floor(left)))
        found[f"x-ratelimit-reset-{name}"] = duration((limit - left) * 60.0 / limit)
    if levels.refused is not None:
        wait = retry_after(levels, rule)
        found["Retry-After"] = str(max(1, math.ceil(wait)))
        found["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
    return found
