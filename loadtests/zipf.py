"""Sessions whose activity is Zipf-distributed: a few hot conversations and a long tail.

Session k (k = 1..n) asks questions at `rate * k^-s / sum(j^-s for j = 1..n)` per simulated
second, as a Poisson process, until `duration`; each question resends the growing history (a
shared system prompt, then the session's own turns). A question is sent at its time or as soon
as the previous answer is in, if that comes later. Which sessions are hot has nothing to do with
their ids, so where they land on the ring is left to the hash. Pure and deterministic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from loadtests.workload import (
    SYSTEM_POPULARITY,
    SYSTEM_PROMPTS,
    SessionPlan,
    TurnPlan,
    user_text,
)


@dataclass(frozen=True, slots=True)
class ZipfActivity:
    """Times in simulated seconds."""

    sessions: int
    exponent: float
    rate: float  # questions per second, all sessions together
    duration: float
    user_words: tuple[int, int]
    answer_tokens: int

    def rates(self) -> list[float]:
        """Each session's rate, hottest first."""
        weights = [k**-self.exponent for k in range(1, self.sessions + 1)]
        total = sum(weights)
        return [self.rate * w / total for w in weights]

    def describe(self) -> str:
        rates = self.rates()
        top = sum(rates[: max(1, self.sessions // 10)]) / self.rate
        return (
            f"{self.sessions} sessions, Zipf exponent {self.exponent:g}, {self.rate:g} "
            f"questions/s in all (hottest session {rates[0]:.2f}/s, coldest {rates[-1]:.3f}/s; "
            f"the hottest tenth asks {top:.0%}), {self.user_words[0]}-{self.user_words[1]} "
            f"words a question, answers {self.answer_tokens} tokens, {self.duration:g} s"
        )


def plan_zipf(shape: ZipfActivity, seed: int) -> list[list[SessionPlan]]:
    """One user per session; sessions that would ask nothing before the end are left out."""
    users = []
    for rank, rate in enumerate(shape.rates()):
        rng = random.Random(seed * 1_000_003 + rank)
        sid = f"zipf-{seed}-{rng.getrandbits(32):08x}"  # the same whatever the rate and length
        system = rng.choices(range(len(SYSTEM_PROMPTS)), weights=SYSTEM_POPULARITY)[0]
        turns = []
        at = rng.expovariate(rate)
        while at < shape.duration:
            text = user_text(rng, shape.user_words, len(turns) + 1)
            turns.append(TurnPlan((text,), shape.answer_tokens, 0.0, at))
            at += rng.expovariate(rate)
        if turns:
            users.append([SessionPlan(sid, SYSTEM_PROMPTS[system], tuple(turns))])
    return users
