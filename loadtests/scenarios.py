"""The earlier policy comparison: chat workloads on workers without a batch limit whose
prefix caches cannot hold every session, one run per policy, against the oracle.

    python -m loadtests.compare_policies --scenarios uniform,skewed   # about 5 minutes

For each scenario and policy: prefix-cache hit ratio (cached / prompt tokens from `usage`) and
its fraction of the oracle's, TTFT p50/p99, throughput, and the busiest worker's in-flight load
over the mean. Saves a PNG and the figures under loadtests/out/.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from loadtests.measure import ROUTER_DEFAULTS, progress
from loadtests.oracle import CacheFigures, replay
from loadtests.player import Player
from loadtests.plots import OUT
from loadtests.report import Summary, summarise, table
from loadtests.workload import PROFILES, Profile, plan_users
from router.tooling.fleet import LocalFleet, SimSettings

WORKERS = 4


@dataclass(frozen=True, slots=True)
class Variant:
    label: str
    routing: dict[str, Any]
    session_ids: bool = True


@dataclass(frozen=True, slots=True)
class Scenario:
    profile: Profile
    sim: SimSettings
    variants: tuple[Variant, ...]


def _variants(*names: str) -> tuple[Variant, ...]:
    return tuple(Variant(name, {"policy": name}) for name in names)


SCENARIOS = {
    "uniform": Scenario(
        PROFILES["uniform"],
        SimSettings(cache_tokens=40_000),
        (
            *_variants(
                "consistent_hash", "bounded_load", "least_inflight", "round_robin", "random"
            ),
            Variant("bounded_load, no session id (prefix key)", {"policy": "bounded_load"}, False),
        ),
    ),
    "skewed": Scenario(
        PROFILES["skewed"],
        SimSettings(cache_tokens=56_000),
        _variants("consistent_hash", "bounded_load"),
    ),
    "fanout": Scenario(
        PROFILES["fanout"],
        SimSettings(cache_tokens=56_000),
        _variants("consistent_hash", "bounded_load"),
    ),
}


def quick(scenario: Scenario) -> Scenario:
    """About a minute in all: half the users and caches, a third of the turns, three policies."""
    profile = scenario.profile
    turns = max(4, profile.turns_per_user // 3)
    smaller = replace(profile, users=max(8, profile.users // 2), turns_per_user=turns)
    cache = scenario.sim.cache_tokens // 2
    keep = tuple(v for v in scenario.variants if v.label in QUICK_LABELS)
    return Scenario(smaller, replace(scenario.sim, cache_tokens=cache), keep)


QUICK_LABELS = {"consistent_hash", "bounded_load", "round_robin"}


def run_scenario(name: str, scenario: Scenario, seed: int) -> tuple[CacheFigures, list[Summary]]:
    users = plan_users(scenario.profile, seed)
    total = sum(len(t.users_text) for u in users for s in u for t in s.turns)
    print(f"[{name}] {len(users)} users, {total} requests; computing the oracle...",
          file=sys.stderr, flush=True)  # fmt: skip
    oracle = replay(users, WORKERS, scenario.sim.cache_tokens)
    summaries = []
    with LocalFleet(WORKERS, scenario.sim.flags(), router_defaults=ROUTER_DEFAULTS) as fleet:
        for variant in scenario.variants:
            fleet.reset_caches()
            with fleet.router_process(routing=variant.routing) as router:
                player = Player(
                    router.url,
                    scenario.sim.time_scale,
                    send_session_id=variant.session_ids,
                    on_record=progress(f"[{name}] {variant.label}", total),
                )
                wall = asyncio.run(player.run(users, seed))
            print(file=sys.stderr)
            summaries.append(summarise(variant.label, player.records, fleet.names, wall))
    return oracle, summaries


def render(name: str, oracle: CacheFigures, summaries: list[Summary], sim: SimSettings) -> str:
    scale = sim.time_scale
    header = ["policy", "hit ratio", "of oracle", "TTFT p50", "TTFT p99", "req/s",
              "peak/mean (instant)", "prefill busy", "spill", "fallback", "errors"]  # fmt: skip
    rows = []
    for s in summaries:
        busy = s.prefill_busy(WORKERS, sim.prefill_ms_per_token, scale)
        rows.append([
            s.label, f"{s.hit_ratio:.1%}", f"{s.hit_ratio / oracle.hit_ratio:.0%}",
            f"{s.ttft_p50 / scale * 1e3:.0f} ms", f"{s.ttft_p99 / scale * 1e3:.0f} ms",
            f"{s.throughput:.1f}",
            f"{s.spread.peak_over_mean:.2f} ({s.spread.instant:.2f})", f"{busy:.0%}",
            str(s.routes.get("spill", 0)), str(s.routes.get("fallback", 0)), str(s.errors),
        ])  # fmt: skip
    rows.append(["oracle", f"{oracle.hit_ratio:.1%}", "100%", *[""] * 8])
    return f"[{name}]\n" + table(rows, header)


def plot(name: str, oracle: CacheFigures, summaries: list[Summary], scale: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [s.label.replace(", ", ",\n").replace(" (", "\n(") for s in summaries]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    axes[0].bar(labels, [s.hit_ratio for s in summaries], color="tab:blue")
    axes[0].axhline(oracle.hit_ratio, color="black", linestyle="--", label="oracle")
    axes[0].set_title("prefix-cache hit ratio")
    axes[0].legend()
    p50 = [s.ttft_p50 / scale * 1e3 for s in summaries]
    p99 = [s.ttft_p99 / scale * 1e3 for s in summaries]
    xs = range(len(summaries))
    axes[1].bar([x - 0.2 for x in xs], p50, width=0.4, label="p50")
    axes[1].bar([x + 0.2 for x in xs], p99, width=0.4, label="p99")
    axes[1].set_xticks(list(xs), labels)
    axes[1].set_yscale("log")
    axes[1].set_title("TTFT (simulated ms)")
    axes[1].legend()
    axes[2].bar(labels, [s.spread.peak_over_mean for s in summaries], color="tab:orange")
    axes[2].axhline(1.3, color="black", linestyle="--", label="1.3")
    axes[2].set_title("busiest worker's in-flight / mean")
    axes[2].legend()
    for ax in axes:
        ax.tick_params(axis="x", labelsize=7, labelrotation=30)
    fig.suptitle(f"kvrouter placement policies, {name} workload, {WORKERS} workers")
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"policies-{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_json(name: str, oracle: CacheFigures, summaries: list[Summary]) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"policies-{name}.json"
    runs = [
        {
            **asdict(s),
            "routes": dict(s.routes),
            "rehomed": dict(s.rehomed),
            "hit_ratio": s.hit_ratio,
        }
        for s in summaries
    ]
    doc = {"oracle": {**asdict(oracle), "hit_ratio": oracle.hit_ratio}, "runs": runs}
    path.write_text(json.dumps(doc, indent=2, default=str))
    return path


def run_scenarios(names: list[str], quick_run: bool, seed: int, only: list[str]) -> None:
    """Run, print and plot each named scenario."""
    for name in names:
        scenario = SCENARIOS[name]
        if quick_run:
            scenario = quick(scenario)
        if only:
            wanted = set(only)
            scenario = replace(scenario, variants=tuple(v for v in scenario.variants
                                                        if v.label in wanted))  # fmt: skip
        oracle, summaries = run_scenario(name, scenario, seed)
        print(render(name, oracle, summaries, scenario.sim), flush=True)
        print(f"plot: {plot(name, oracle, summaries, scenario.sim.time_scale)}", flush=True)
        save_json(name, oracle, summaries)
        print(f"TTFT in simulated milliseconds (wall time / {scenario.sim.time_scale})\n",
              flush=True)  # fmt: skip
