"""A seeded chat workload: users running sessions of several turns with a growing history.

Pure and deterministic: the same seed gives the same sessions, messages and think times in
every process, so every policy is measured on the same work and the oracle can replay it.
Session lengths are heavy-tailed (Pareto), system prompts are shared across users, and in the
skewed profile some sessions are agents that fan out several requests per turn. Other shapes
(`loadtests.multiround`, `loadtests.zipf`) build the same plans with scheduled turns.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

_WORDS = (
    "cluster node pod deploy rollout canary region zone replica shard index query latency "
    "budget error retry timeout queue worker batch cache token prompt model tensor kernel "
    "memory page block prefix decode prefill stream socket header route proxy session tenant "
    "metric alert trace span log config secret volume disk network packet policy weight "
    "release version branch merge review test build image registry scale limit quota cost "
    "report summary table chart invoice customer ticket incident outage backup restore"
).split()

_ROLES = (
    "a site reliability engineer", "a release manager", "a data analyst", "a support agent",
    "a security reviewer", "a platform architect",
)  # fmt: skip


def _system_prompt(index: int) -> str:
    rng = random.Random(10_007 + index)
    rules = " ".join(
        f"Rule {i + 1}: {' '.join(rng.choices(_WORDS, k=rng.randint(12, 28)))}."
        for i in range(rng.randint(5, 8))
    )
    return f"You are {_ROLES[index % len(_ROLES)]}. Follow these rules exactly. {rules}"


SYSTEM_PROMPTS: tuple[str, ...] = tuple(_system_prompt(i) for i in range(6))
SYSTEM_POPULARITY = (0.35, 0.25, 0.15, 0.1, 0.1, 0.05)


@dataclass(frozen=True, slots=True)
class Profile:
    """The shape of a workload; times are simulated seconds (scaled by the workers' clock)."""

    name: str
    users: int
    turns_per_user: int
    pareto_alpha: float
    min_turns: int
    max_turns: int
    think: tuple[float, float]
    user_words: tuple[int, int]
    max_tokens: int
    agent_share: float = 0.0
    fanout: tuple[int, int] = (1, 1)


PROFILES = {
    "uniform": Profile(
        "uniform", users=64, turns_per_user=12, pareto_alpha=1.3, min_turns=4, max_turns=40,
        think=(2.0, 6.0), user_words=(80, 300), max_tokens=200,
    ),
    "skewed": Profile(
        "skewed", users=40, turns_per_user=24, pareto_alpha=1.1, min_turns=8, max_turns=80,
        think=(0.2, 1.0), user_words=(30, 120), max_tokens=96,
    ),
    "fanout": Profile(
        "fanout", users=32, turns_per_user=16, pareto_alpha=1.2, min_turns=6, max_turns=60,
        think=(0.5, 2.0), user_words=(30, 120), max_tokens=96, agent_share=0.3, fanout=(4, 8),
    ),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class TurnPlan:
    """One turn: the user's messages (several for an agent's fan-out; the first one continues
    the conversation) and the think time before it. A turn with `at` (simulated seconds from
    the start of the run) is scheduled instead: sent at `at`, or as soon as the previous
    reply is in if that comes later, as a chat client at a fixed rate would."""

    users_text: tuple[str, ...]
    max_tokens: int
    think: float
    at: float | None = None


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """One conversation; `system` is its system message ("" for none)."""

    id: str
    system: str
    turns: tuple[TurnPlan, ...]


def word_text(rng: random.Random, count: int) -> str:
    """`count` words of the workload's vocabulary: `count` tokens for the simulated worker."""
    return " ".join(rng.choices(_WORDS, k=count))


def chat_body(messages: Sequence[tuple[str, str]], max_tokens: int) -> bytes:
    """The request body the player sends for `(role, content)` messages."""
    return orjson.dumps(
        {"model": "sim-model", "messages": [{"role": r, "content": c} for r, c in messages],
         "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    )  # fmt: skip


def session_turns(rng: random.Random, profile: Profile) -> int:
    """Heavy-tailed: most sessions are short, a few run for many turns."""
    drawn = int(profile.min_turns * rng.paretovariate(profile.pareto_alpha))
    return max(profile.min_turns, min(profile.max_turns, drawn))


def user_text(rng: random.Random, words: tuple[int, int], turn: int) -> str:
    return f"Turn {turn}: {word_text(rng, rng.randint(*words))}?"


def _session(rng: random.Random, profile: Profile, sid: str, turns: int) -> SessionPlan:
    system = rng.choices(range(len(SYSTEM_PROMPTS)), weights=SYSTEM_POPULARITY)[0]
    agent = rng.random() < profile.agent_share
    plans = []
    for turn in range(1, turns + 1):
        width = rng.randint(*profile.fanout) if agent and turn > 1 else 1
        texts = tuple(user_text(rng, profile.user_words, turn) for _ in range(width))
        plans.append(TurnPlan(texts, profile.max_tokens, rng.uniform(*profile.think)))
    return SessionPlan(sid, SYSTEM_PROMPTS[system], tuple(plans))


def plan_users(profile: Profile, seed: int) -> list[list[SessionPlan]]:
    """Each user's sessions, back to back, adding up to exactly `turns_per_user` turns."""
    users = []
    for user in range(profile.users):
        rng = random.Random(seed * 1_000_003 + user)
        sessions: list[SessionPlan] = []
        left = profile.turns_per_user
        while left > 0:
            turns = min(left, session_turns(rng, profile))
            sid = f"{profile.name}-{seed}-u{user}-s{len(sessions)}"
            sessions.append(_session(rng, profile, sid, turns))
            left -= turns
        users.append(sessions)
    return users
