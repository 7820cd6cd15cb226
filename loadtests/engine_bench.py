"""Placement policies on real llama.cpp servers: does the affinity win hold on a real engine?

    python -m loadtests.engine_bench            # 3 seeded runs per policy, under 15 minutes
    python -m loadtests.engine_bench --quick    # 1 run per policy

Two `llama-server` processes (the cached build, `router.tooling.engine.build`; the tiny model
with random weights, `router.tooling.engine.model`) behind a router process per policy, each
playing the `engine` regime's multi-turn chat load (`loadtests.regimes`), which is sized to the
servers' slots and context so that reuse is possible at all. Servers restart before each run,
so each starts cold. It prints TTFT p50/p99 and the cached-token ratio per policy (ranges over
the runs) and the TTFT p50 of each turn number, saves a PNG and the figures under
loadtests/out/, and writes the TTFT p50 of each policy (and of each turn number) to
`loadtests/engine_reference.json`, which the simulator's `engine` regime in `make bench-routing`
is checked against.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import median

from loadtests.measure import ROUTER_DEFAULTS, measure
from loadtests.plots import OUT, plot_engine
from loadtests.regimes import ENGINE_LLAMA, QUICK_REGIMES, REGIMES, Regime
from loadtests.report import RunResult, span, table
from router.tooling.fleet import LocalFleet, llama_cpus

POLICIES = ("consistent_hash", "cost_aware", "round_robin")
REFERENCE = Path(__file__).resolve().parent / "engine_reference.json"
Results = Mapping[int, Mapping[str, RunResult]]


def _runs(results: Results, policy: str) -> list[RunResult]:
    return [runs[policy] for _, runs in sorted(results.items()) if policy in runs]


def render(results: Results, policies: Sequence[str]) -> str:
    header = ["policy", "cached-token ratio", "TTFT p50 ms", "TTFT p99 ms",
              "sessions on one server", "requests", "errors"]  # fmt: skip
    rows = []
    for policy in policies:
        s = [r.summary for r in _runs(results, policy)]
        rows.append([
            policy, span([x.hit_ratio for x in s]),
            span([x.ttft_p50 * 1e3 for x in s], "{:.0f}"),
            span([x.ttft_p99 * 1e3 for x in s], "{:.0f}"),
            span([x.one_worker for x in s], "{:.0%}"),
            span([x.requests for x in s], "{:.0f}"), span([x.errors for x in s], "{:.0f}"),
        ])  # fmt: skip
    return table(rows, header)


def turn_p50(results: Results, policy: str, turns: int) -> list[float]:
    """Per turn number, the median over runs of that turn's TTFT p50, in ms."""
    runs = _runs(results, policy)
    return [median(r.turn_ttft_p50[t] for r in runs) * 1e3 for t in range(turns)]


def render_turns(results: Results, policies: Sequence[str], turns: int) -> str:
    header = ["policy", *[f"turn {t + 1}" for t in range(turns)]]
    rows = [[p, *[f"{v:.0f}" for v in turn_p50(results, p, turns)]] for p in policies]
    return table(rows, header)


def reference(regime: Regime, results: Results, policies: Sequence[str]) -> dict[str, object]:
    turns = regime.compared_turns
    return {
        "what": "llama-server TTFT p50 (ms) of each turn number, median over runs, per policy; "
                "written by `python -m loadtests.engine_bench`",
        "workload": regime.describe_workload(),
        "servers": describe_servers(regime),
        "runs": len(results),
        "turn_ttft_p50_ms": {p: [round(v, 1) for v in turn_p50(results, p, turns)]
                             for p in policies},
        "ttft_p50_ms": {p: round(median(r.summary.ttft_p50 for r in _runs(results, p)) * 1e3, 1)
                        for p in policies},
    }  # fmt: skip


def describe_servers(regime: Regime) -> str:
    s, m = ENGINE_LLAMA, ENGINE_LLAMA.model
    cores = ", ".join(f"llama-{i} on core {sorted(c)[0]}"
                      for i, c in zip(range(regime.workers), llama_cpus() * regime.workers,
                                      strict=False))  # fmt: skip
    return (
        f"{regime.workers} llama-server: --parallel {s.slots} --threads {s.threads} "
        f"--ctx-size {s.context} ({s.context // s.slots} a slot) --cache-ram {s.cache_ram_mib} "
        f"MiB; model {m.layers} layers x {m.width}, {m.vocabulary} vocabulary, {m.template} "
        f"template, random fp16 weights; {cores}; router and clients unpinned"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run per policy")
    parser.add_argument("--seeds", default="", help="comma-separated (default 1,2,3; quick: 1)")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--logs", type=Path, default=None, help="a directory for server logs")
    ns = parser.parse_args(argv)
    started = time.monotonic()
    seeds = [int(s) for s in ns.seeds.split(",") if s] or ([1] if ns.quick else [1, 2, 3])
    regime = (QUICK_REGIMES if ns.quick else REGIMES)["engine"]
    policies = [p for p in ns.policies.split(",") if p]
    fleet = LocalFleet.llama(regime.workers, ENGINE_LLAMA, router_defaults=ROUTER_DEFAULTS,
                             logs=ns.logs)  # fmt: skip
    print(f"== {regime.title}: real llama.cpp servers ==", flush=True)

    def announce(run: RunResult) -> None:
        s = run.summary
        print(f"    seed {run.seed} {run.policy}: {s.requests} requests in {s.wall:.0f} s, "
              f"cached {s.hit_ratio:.1%}, TTFT p50 {s.ttft_p50 * 1e3:.0f} ms, p99 "
              f"{s.ttft_p99 * 1e3:.0f} ms, load average {run.load_average:.1f}",
              flush=True)  # fmt: skip

    _, results = measure(regime, seeds, policies, announce, fleet=fleet)
    print(f"  workload: {regime.describe_workload()}")
    print(f"  servers:  {describe_servers(regime)}")
    print(f"  seeds:    {', '.join(map(str, seeds))}")
    print(render(results, policies))
    print("  TTFT p50 (ms) by turn number, median over runs:")
    print(render_turns(results, policies, regime.compared_turns))
    print(f"  ranges are min-max over {len(seeds)} run(s); machine load average "
          f"{os.getloadavg()[0]:.1f} (2 cores)")  # fmt: skip
    print(f"  plot: {plot_engine(regime, results, policies)}")
    doc = reference(regime, results, policies)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "engine.json").write_text(json.dumps(doc, indent=2))
    if not ns.quick:
        REFERENCE.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"  per-turn reference for the simulator's engine regime: {REFERENCE}")
    print(f"whole run {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
