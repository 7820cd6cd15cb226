"""A chat load of the shape of production-stack's multi-round QA benchmark
(vllm-project/production-stack, benchmarks/multi-round-qa/multi-round-qa.py).

`users` users are in the system at once. Each user's first question carries a system prompt
shared by every user and a context of its own; every later question resends the whole
conversation. A user asks its next question `gap = users / qps` seconds after the previous one
(or as soon as the answer is in, if that is later). A new user joins every
`gap * (rounds - 1) / users` seconds and leaves after `rounds` questions, so requests arrive at
`qps * rounds / (rounds - 1)`, as in the original. At the start the population is already mixed
(users part-way through their rounds, with no history yet), as the original's ramp-up makes it.
Pure and deterministic: the same seed, the same plan.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from loadtests.workload import SessionPlan, TurnPlan, word_text


@dataclass(frozen=True, slots=True)
class MultiRound:
    """The original's flags; times in simulated seconds, lengths in tokens."""

    users: int  # --num-users
    rounds: int  # --num-rounds
    qps: float  # --qps
    system_tokens: int  # --shared-system-prompt
    history_tokens: int  # --user-history-prompt
    answer_tokens: int  # --answer-len
    duration: float  # --time

    @property
    def gap(self) -> float:
        """Seconds between two questions of one user."""
        return self.users / self.qps

    @property
    def join_every(self) -> float:
        """Seconds between two users joining."""
        return self.gap * (self.rounds - 1) / self.users

    @property
    def rate(self) -> float:
        """Requests per second in steady state: `qps`, plus the first question of each user
        joining (`rounds` questions per `rounds - 1` gaps), as in the original."""
        return self.qps * self.rounds / (self.rounds - 1)

    def describe(self) -> str:
        return (
            f"{self.users} users at once, {self.rounds} rounds each, --qps {self.qps:g} "
            f"({self.rate:.2f} requests/s in steady state: a question every {self.gap:.1f} s "
            f"per user, a user joins every {self.join_every:.2f} s), shared system prompt "
            f"{self.system_tokens} tokens, "
            f"own context {self.history_tokens} tokens, answers {self.answer_tokens} tokens, "
            f"{self.duration:g} s"
        )


def _shared_prompt(tokens: int) -> str:
    return word_text(random.Random(424_242), tokens)


def _question(number: int) -> str:
    return f"Here's question #{number}: can you tell me a new long story with a happy ending?"


def _user(
    shape: MultiRound, seed: int, user: int, first_question: int, first_at: float, shared: str
) -> list[SessionPlan]:
    """One user's conversation from `first_question` on, its first question at `first_at`."""
    rng = random.Random(seed * 1_000_003 + user)
    context = word_text(rng, shape.history_tokens)
    turns = []
    for number in range(first_question, shape.rounds + 1):
        at = first_at + (number - first_question) * shape.gap
        if at >= shape.duration:
            break
        text = _question(number)
        if not turns:
            text = (
                f"Hi, here's some system prompt: {shared}. For user {user}, here are some "
                f"other context: {context}. {text}"
            )
        turns.append(TurnPlan((text,), shape.answer_tokens, 0.0, at))
    if not turns:
        return []
    return [SessionPlan(f"mrqa-{seed}-u{user}", "", tuple(turns))]


def plan_multiround(shape: MultiRound, seed: int) -> list[list[SessionPlan]]:
    """Every user of the run, each one session; users with no question before the end are
    left out."""
    shared = _shared_prompt(shape.system_tokens)
    users: list[list[SessionPlan]] = []
    ramp = shape.users * shape.join_every
    for i in range(shape.users):  # already part-way through their rounds at the start
        offset = ramp - i * shape.join_every
        passed = int(offset / shape.gap) + 1
        users.append(_user(shape, seed, len(users), passed + 1, passed * shape.gap - offset,
                           shared))  # fmt: skip
    joined = 0
    while joined * shape.join_every < shape.duration:
        users.append(_user(shape, seed, len(users), 1, joined * shape.join_every, shared))
        joined += 1
    return [u for u in users if u]
