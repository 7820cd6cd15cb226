"""The three load regimes `make bench-routing` measures, and what each must show.

- `light`: chat users on engine-like workers that never queue, with caches that never evict:
  the default must place every turn where `consistent_hash` does.
- `real`: the shape of production-stack's multi-round QA at a fixed rate on a busy fleet: the
  default must keep ≥ 95 % of the oracle hit ratio.
- `skew`: Zipf-distributed session activity on workers whose batch limit makes the hottest
  one queue at least half the time under `consistent_hash`: the default must cut TTFT p99 by
  ≥ 30 % while keeping its hit ratio within 5 points of `consistent_hash` and above the
  load-only policy's.
- `engine`: the chat load `make bench-engine` plays on two real llama.cpp servers, on two
  simulated workers whose profile (prefill and decode costs, batch limit = the servers'
  slots) stands for them: the TTFT p50 of its turns must be within 20 % of what the real
  servers gave, policy by policy (`loadtests/engine_reference.json`, written by
  `make bench-engine`).

Each regime also states the conditions that make it what it claims to be (no queueing, no
eviction, a queueing hot worker), checked on the same runs. Nothing here does I/O but reading
the committed llama.cpp reference when the `engine` target is checked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import median
from typing import Any

from loadtests.multiround import MultiRound, plan_multiround
from loadtests.oracle import CacheFigures
from loadtests.report import RunResult, same_placement
from loadtests.workload import Profile, SessionPlan, plan_users
from loadtests.zipf import ZipfActivity, plan_zipf
from router.tooling.fleet import LlamaSettings, SimSettings

POLICIES = ("consistent_hash", "cost_aware", "least_loaded", "round_robin")
DEFAULT = "cost_aware"
WORKERS = 4

Shape = Profile | MultiRound | ZipfActivity
Results = Mapping[int, Mapping[str, RunResult]]  # seed -> policy -> run
Oracles = Mapping[int, CacheFigures]


@dataclass(frozen=True, slots=True)
class Verdict:
    """One target (or regime condition) over every run: met only if met in each."""

    text: str
    met: bool
    detail: str


Check = Callable[[Results, Oracles], Verdict]


@dataclass(frozen=True, slots=True)
class Regime:
    """A workload, the workers it runs on, and the router knobs that depend on them."""

    name: str
    title: str
    shape: Shape
    sim: SimSettings
    max_running: int
    conditions: tuple[Check, ...]
    targets: tuple[Check, ...]
    stale_after: float = 1.0
    kv_usage: float = 0.95
    floor: int = 8
    workers: int = WORKERS

    def plan(self, seed: int) -> list[list[SessionPlan]]:
        shape = self.shape
        if isinstance(shape, MultiRound):
            return plan_multiround(shape, seed)
        if isinstance(shape, ZipfActivity):
            return plan_zipf(shape, seed)
        return plan_users(shape, seed)

    def describe_workload(self) -> str:
        shape = self.shape
        if isinstance(shape, Profile):
            return (
                f"{shape.users} chat users, {shape.turns_per_user} turns each (sessions of "
                f"{shape.min_turns}-{shape.max_turns} turns, Pareto {shape.pareto_alpha:g}), "
                f"think {shape.think[0]:g}-{shape.think[1]:g} s, {shape.user_words[0]}-"
                f"{shape.user_words[1]} words a message, answers {shape.max_tokens} tokens, "
                "six shared system prompts"
            )
        return shape.describe()

    def describe_workers(self) -> str:
        sim = self.sim
        return (
            f"{self.workers} simulated workers: --max-running {self.max_running}, prefix/KV "
            f"cache {sim.cache_tokens:,} tokens, prefill {sim.prefill_ms_per_token:g} ms/token "
            f"(serialised), decode {sim.decode_ms_per_token:g} ms/token "
            f"(+{sim.decode_batch_penalty:.0%} per running request), clock "
            f"x{1 / sim.time_scale:g} (time_scale {sim.time_scale:g})"
        )

    @property
    def interval(self) -> float:
        """`load.interval`: one simulated second, the router's default in real time."""
        return 1.0 * self.sim.time_scale

    @property
    def hold(self) -> float:
        """`routing.saturation.hold`: half a simulated second, the default in real time."""
        return 0.5 * self.sim.time_scale

    @property
    def prefill_rate(self) -> float:
        """`routing.cost.prefill_tokens_per_second`: the workers' prefill rate in wall time."""
        return 1000.0 / (self.sim.prefill_ms_per_token * self.sim.time_scale)

    def router_sections(self, policy: str, bytes_per_token: float) -> dict[str, Any]:
        """The config sections of a router running `policy` in this regime; `bytes_per_token`
        is measured on the run's own workload (`CacheFigures.bytes_per_token`)."""
        return {
            "load": {"interval": self.interval, "jitter": 0.1, "timeout": 0.5,
                     "stale_after": self.stale_after},
            "routing": {
                "policy": policy,
                "saturation": {"hold": self.hold, "kv_usage": self.kv_usage,
                               "floor": self.floor},
                "cost": {"prefill_tokens_per_second": round(self.prefill_rate, 1),
                         "bytes_per_token": round(bytes_per_token, 3)},
            },
        }  # fmt: skip

    @property
    def compared_turns(self) -> int:
        """The turn numbers every session reaches (1..this), compared turn by turn."""
        return self.shape.min_turns if isinstance(self.shape, Profile) else 1

    def describe_router(self, bytes_per_token: Sequence[float]) -> str:
        low, high = min(bytes_per_token), max(bytes_per_token)
        measured = f"{low:.2f}" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}"
        return (
            f"load.interval {self.interval:g} s (jitter 0.1), load.stale_after "
            f"{self.stale_after:g} s, routing.saturation.hold {self.hold:g} s, "
            f".kv_usage {self.kv_usage:g}, .floor {self.floor}, "
            f"routing.cost.prefill_tokens_per_second {self.prefill_rate:.0f}, "
            f".bytes_per_token {measured} (measured on each run's workload); wall seconds"
        )


def _per_run(
    results: Results, value: Callable[[Mapping[str, RunResult], int], float]
) -> list[float]:
    return [value(runs, seed) for seed, runs in sorted(results.items())]


def _listed(values: Sequence[float], fmt: str) -> str:
    return "per run: " + ", ".join(fmt.format(v) for v in values)


def _all(values: Sequence[float], ok: Callable[[float], bool]) -> bool:
    return bool(values) and all(not math.isnan(v) and ok(v) for v in values)


def _needs(*policies: str) -> Callable[[Results], bool]:
    def present(results: Results) -> bool:
        return all(p in runs for runs in results.values() for p in policies)

    return present


def _skipped(text: str) -> Verdict:
    return Verdict(text, False, "not measured (a policy it compares was not run)")


# light load


def same_turn_placement(results: Results, oracles: Oracles) -> Verdict:
    text = f"{DEFAULT} places every turn on the same worker as consistent_hash (100 %)"
    if not _needs(DEFAULT, "consistent_hash")(results):
        return _skipped(text)
    shares = _per_run(results, lambda runs, _: same_placement(
        runs["consistent_hash"].placed, runs[DEFAULT].placed))  # fmt: skip
    return Verdict(text, _all(shares, lambda v: v == 1.0), _listed(shares, "{:.1%}"))


def hit_within(points: float) -> Check:
    """The default's hit ratio within `points` of consistent_hash's, in every run."""

    def check(results: Results, oracles: Oracles) -> Verdict:
        text = f"{DEFAULT} hit ratio within {points:g} points of consistent_hash"
        if not _needs(DEFAULT, "consistent_hash")(results):
            return _skipped(text)
        gaps = _per_run(results, lambda runs, _: (
            runs[DEFAULT].summary.hit_ratio - runs["consistent_hash"].summary.hit_ratio) * 100)
        return Verdict(
            text, _all(gaps, lambda v: abs(v) <= points), _listed(gaps, "{:+.2f} points")
        )

    return check


def nobody_queues(results: Results, oracles: Oracles) -> Verdict:
    queued = [max(r.queued.values(), default=0.0) for runs in results.values()
              for r in runs.values()]  # fmt: skip
    peak_kv = max((r.peak_kv for runs in results.values() for r in runs.values()), default=0.0)
    return Verdict(
        "no worker saturated: no sample with a request waiting, KV usage below "
        "routing.saturation.kv_usage, in any run of any policy",
        _all(queued, lambda v: v == 0.0) and peak_kv < 0.95,
        f"largest share of samples with requests waiting {max(queued, default=0):.1%}, "
        f"peak KV usage {peak_kv:.0%}",
    )


def nothing_evicted(results: Results, oracles: Oracles) -> Verdict:
    fill = max((r.cache_fill for runs in results.values() for r in runs.values()), default=0.0)
    return Verdict(
        "caches never full, so nothing evicted (fullest cache after any run < capacity)",
        fill < 1.0,
        f"fullest cache at {fill:.0%} of capacity",
    )


# real client


def share_of_oracle(results: Results, oracles: Oracles) -> Verdict:
    text = f"{DEFAULT} reaches >= 0.95 of the oracle hit ratio"
    if not _needs(DEFAULT)(results):
        return _skipped(text)
    shares = _per_run(results, lambda runs, seed: (
        runs[DEFAULT].summary.hit_ratio / oracles[seed].hit_ratio))
    return Verdict(text, _all(shares, lambda v: v >= 0.95), _listed(shares, "{:.3f}"))


# saturating skew


def hottest_queues_half_the_time(results: Results, oracles: Oracles) -> Verdict:
    text = "under consistent_hash the hottest worker queues >= 50 % of the time"
    if not _needs("consistent_hash")(results):
        return _skipped(text)
    runs = [results[s]["consistent_hash"] for s in sorted(results)]
    shares = [r.hottest_queued for r in runs]
    named = ", ".join(f"{r.hottest} {r.hottest_queued:.0%}" for r in runs)
    return Verdict(text, _all(shares, lambda v: v >= 0.5), f"per run: {named} of samples")


def p99_cut(results: Results, oracles: Oracles) -> Verdict:
    text = f"{DEFAULT} cuts TTFT p99 by >= 30 % against consistent_hash"
    if not _needs(DEFAULT, "consistent_hash")(results):
        return _skipped(text)
    cuts = _per_run(results, lambda runs, _: (
        1 - runs[DEFAULT].summary.ttft_p99 / runs["consistent_hash"].summary.ttft_p99))
    return Verdict(text, _all(cuts, lambda v: v >= 0.3), _listed(cuts, "{:.0%}"))


def hit_above_load_only(results: Results, oracles: Oracles) -> Verdict:
    text = f"{DEFAULT} hit ratio above least_loaded's"
    if not _needs(DEFAULT, "least_loaded")(results):
        return _skipped(text)
    gaps = _per_run(results, lambda runs, _: (
        runs[DEFAULT].summary.hit_ratio - runs["least_loaded"].summary.hit_ratio) * 100)
    return Verdict(text, _all(gaps, lambda v: v > 0), _listed(gaps, "{:+.1f} points"))


# engine: the real servers and the simulated profile that stands for them


ENGINE_REFERENCE = Path(__file__).resolve().parent / "engine_reference.json"
ENGINE_TOLERANCE = 0.2


def _llama_reference() -> dict[str, Any] | None:
    try:
        return dict(json.loads(ENGINE_REFERENCE.read_text()))
    except FileNotFoundError:
        return None


def ttft_near_llama(results: Results, oracles: Oracles) -> Verdict:
    """TTFT p50 over every turn (median over runs) within 20 % of the real servers', for every
    policy measured on both."""
    text = (f"TTFT p50 over the turns within {ENGINE_TOLERANCE:.0%} of llama-server's, each "
            f"policy ({ENGINE_REFERENCE.name})")  # fmt: skip
    found = _llama_reference()
    if found is None:
        return Verdict(text, False, f"no {ENGINE_REFERENCE.name}: run `make bench-engine`")
    real: dict[str, float] = found["ttft_p50_ms"]
    ratios = {
        policy: median(r[policy].summary.ttft_p50 for r in results.values()) * 1e3 / wanted
        for policy, wanted in sorted(real.items())
        if all(policy in r for r in results.values())
    }
    if not ratios:
        return _skipped(text)
    return Verdict(
        text, _all(list(ratios.values()), lambda v: abs(v - 1) <= ENGINE_TOLERANCE),
        "sim/llama: " + ", ".join(f"{p} {v:.2f}" for p, v in ratios.items()),
    )  # fmt: skip


ENGINE_LLAMA = LlamaSettings(slots=4, threads=1, context=8192, cache_ram_mib=64)
# Fitted to `make bench-engine`'s TTFT p50 (engine_reference.json): the servers' prefill rate
# under this load, a decode step that slows by half for each other slot decoding with it on one
# thread, and about what the slots (8,192 tokens) and the host cache (64 MiB at 4 KiB a token)
# hold between them.
ENGINE_SIM = SimSettings(
    cache_tokens=24_000, prefill_ms_per_token=0.38, decode_ms_per_token=3.0, time_scale=1.0,
    decode_batch_penalty=0.5,
)  # fmt: skip
_ENGINE = Profile(
    "engine", users=16, turns_per_user=12, pareto_alpha=1.3, min_turns=4, max_turns=8,
    think=(0.5, 2.0), user_words=(40, 100), max_tokens=32,
)  # fmt: skip

_LIGHT = Profile(
    "light", users=24, turns_per_user=8, pareto_alpha=1.3, min_turns=4, max_turns=40,
    think=(2.0, 6.0), user_words=(80, 300), max_tokens=120,
)  # fmt: skip
_REAL = MultiRound(
    users=32, rounds=10, qps=5.0, system_tokens=1000, history_tokens=2000, answer_tokens=100,
    duration=80.0,
)  # fmt: skip
_SKEW = ZipfActivity(
    sessions=64, exponent=0.8, rate=3.5, duration=72.0, user_words=(30, 80), answer_tokens=64
)


def _regimes(
    light: Profile, real: MultiRound, skew: ZipfActivity, engine: Profile
) -> dict[str, Regime]:
    return {
        "light": Regime(
            "light", "light load", light, SimSettings(cache_tokens=200_000), 16,
            (nobody_queues, nothing_evicted), (same_turn_placement, hit_within(0.5)),
        ),
        "real": Regime(
            "real", "real client (multi-round QA shape)", real,
            SimSettings(cache_tokens=96_000), 8, (), (share_of_oracle,),
        ),
        "skew": Regime(
            "skew", "saturating skew (Zipf session activity)", skew,
            SimSettings(cache_tokens=96_000), 2, (hottest_queues_half_the_time,),
            (p99_cut, hit_within(5), hit_above_load_only),
        ),
        "engine": Regime(
            "engine", "engine-sized chat (the llama.cpp profile)", engine, ENGINE_SIM,
            ENGINE_LLAMA.slots, (), (ttft_near_llama,), workers=2,
        ),
    }  # fmt: skip


REGIMES = _regimes(_LIGHT, _REAL, _SKEW, _ENGINE)
QUICK_REGIMES = _regimes(
    replace(_LIGHT, users=16, turns_per_user=4),
    replace(_REAL, duration=32.0),
    replace(_SKEW, duration=40.0, rate=4.0),
    _ENGINE,  # the workload the real servers' reference was measured on: 1 run instead of 3
)
