"""Compare placement policies in three load regimes (and the llama.cpp profile's), against the
oracle and the targets.

    python -m loadtests.compare_policies            # 3 seeded runs per regime, under 20 minutes
    python -m loadtests.compare_policies --quick    # 1 shorter run per regime, under 3 minutes

For each regime (`loadtests.regimes`: light load, a real client of multi-round-QA shape, a
saturating Zipf skew; and `engine`, the simulated profile of a llama.cpp server checked against
the real servers' TTFT) it starts its simulated workers (4; 2 for `engine`) with a batch limit,
then for each seed the oracle and, for each policy, a router process playing the same workload.
It prints the regime's parameters, a table per regime (ranges over the runs: hit ratio and its
fraction of the oracle, TTFT p50/p99, sessions kept on one worker, spills, how often the hottest
worker queued), whether the regime is what it claims and each target met or missed, and saves a
PNG and the figures under loadtests/out/. `--scenarios` runs the earlier chat scenarios
(`loadtests.scenarios`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict

from loadtests.measure import measure
from loadtests.oracle import CacheFigures
from loadtests.plots import OUT, plot_regime
from loadtests.regimes import POLICIES, QUICK_REGIMES, REGIMES, Regime, Verdict
from loadtests.report import RunResult, span, table
from loadtests.scenarios import SCENARIOS, run_scenarios

Results = Mapping[int, Mapping[str, RunResult]]


def _row(policy: str, runs: Sequence[RunResult], oracles: Mapping[int, CacheFigures],
         scale: float) -> list[str]:  # fmt: skip
    s = [r.summary for r in runs]
    return [
        policy,
        span([x.hit_ratio for x in s]),
        span([r.summary.hit_ratio / oracles[r.seed].hit_ratio for r in runs]),
        span([x.ttft_p50 / scale * 1e3 for x in s], "{:.0f}"),
        span([x.ttft_p99 / scale * 1e3 for x in s], "{:.0f}"),
        span([x.one_worker for x in s], "{:.0%}"),
        span([x.spills for x in s], "{:.0f}"),
        span([r.hottest_queued for r in runs], "{:.0%}"),
        span([x.errors for x in s], "{:.0f}"),
    ]


def render(regime: Regime, oracles: Mapping[int, CacheFigures], results: Results,
           policies: Sequence[str]) -> str:  # fmt: skip
    header = ["policy", "hit ratio", "of oracle", "TTFT p50 ms", "TTFT p99 ms",
              "sessions on one worker", "spills", "hottest worker queued", "errors"]  # fmt: skip
    rows = [
        _row(p, [results[s][p] for s in sorted(results) if p in results[s]], oracles,
             regime.sim.time_scale)
        for p in policies
    ]  # fmt: skip
    rows.append(["oracle", span([o.hit_ratio for o in oracles.values()]), "100%",
                 *[""] * 6])  # fmt: skip
    return table(rows, header)


def parameters(regime: Regime, oracles: Mapping[int, CacheFigures], seeds: Sequence[int]) -> str:
    return "\n".join([
        f"  workload: {regime.describe_workload()}",
        f"  workers:  {regime.describe_workers()}",
        f"  router:   {regime.describe_router([o.bytes_per_token for o in oracles.values()])}",
        f"  seeds:    {', '.join(map(str, seeds))}; requests per run: "
        + ", ".join(str(o.requests) for o in oracles.values()),
    ])  # fmt: skip


def spill_lines(results: Results, policies: Sequence[str]) -> list[str]:
    """What the spills of each policy that spilled cost, run by run."""
    lines = []
    for policy in policies:
        runs = [results[s][policy] for s in sorted(results) if policy in results[s]]
        if not any(r.summary.spills for r in runs):
            continue
        each = "; ".join(
            f"{r.summary.spills} ({r.summary.spill_first_turns} first turns), mean prompt "
            f"{r.summary.spill_prompt_tokens / max(r.summary.spills, 1):.0f} tokens, "
            f"{r.summary.spill_cached_tokens / max(r.summary.spill_prompt_tokens, 1):.0%} "
            f"of it cached, uncached = {r.summary.spill_uncached:.1f} points of hit ratio"
            for r in runs
        )
        lines.append(f"  {policy} spilled requests per run: {each}")
    return lines


def verdicts(kind: str, found: Sequence[Verdict]) -> list[str]:
    return [f"  {kind}: {v.text}: {'met' if v.met else 'MISSED'} ({v.detail})" for v in found]


def save_json(regime: Regime, oracles: Mapping[int, CacheFigures], results: Results,
              found: Sequence[Verdict]) -> None:  # fmt: skip
    doc = {
        "regime": regime.name,
        "parameters": {"workload": regime.describe_workload(),
                       "workers": regime.describe_workers()},
        "oracle": {seed: {**asdict(o), "hit_ratio": o.hit_ratio} for seed, o in oracles.items()},
        "runs": [
            {"seed": seed, "policy": r.policy, "hit_ratio": r.summary.hit_ratio,
             "ttft_p50": r.summary.ttft_p50, "ttft_p99": r.summary.ttft_p99,
             "one_worker": r.summary.one_worker, "spills": r.summary.spills,
             "spill_prompt_tokens": r.summary.spill_prompt_tokens,
             "spill_cached_tokens": r.summary.spill_cached_tokens,
             "errors": r.summary.errors, "queued": r.queued, "peak_kv": r.peak_kv,
             "cache_fill": r.cache_fill, "wall": r.summary.wall,
             "load_average": r.load_average}
            for seed, runs in sorted(results.items()) for r in runs.values()
        ],
        "verdicts": [asdict(v) for v in found],
    }  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"regime-{regime.name}.json").write_text(json.dumps(doc, indent=2, default=str))


def announce(run: RunResult) -> None:
    s = run.summary
    print(f"    seed {run.seed} {run.policy}: {s.requests} requests in {s.wall:.0f} s, "
          f"hit {s.hit_ratio:.1%}, TTFT p99 {s.ttft_p99 * 1e3:.0f} wall ms, "
          f"{run.hottest} queued {run.hottest_queued:.0%}, load average "
          f"{run.load_average:.1f}", flush=True)  # fmt: skip


def run_regime(regime: Regime, seeds: Sequence[int], policies: Sequence[str]) -> bool:
    """Measure, print and plot one regime; whether every condition and target was met."""
    started = time.monotonic()
    print(f"== {regime.title} ==", flush=True)
    oracles, results = measure(regime, seeds, policies, announce)
    conditions = [check(results, oracles) for check in regime.conditions]
    targets = [check(results, oracles) for check in regime.targets]
    loads = [r.load_average for runs in results.values() for r in runs.values()]
    print(parameters(regime, oracles, seeds))
    print(render(regime, oracles, results, policies))
    lines = [*spill_lines(results, policies), *verdicts("regime", conditions),
             *verdicts("target", targets)]  # fmt: skip
    print("\n".join(lines))
    print(f"  TTFT in simulated ms (wall / {regime.sim.time_scale:g}); ranges are min-max over "
          f"{len(seeds)} run(s); machine load average {span(loads, '{:.1f}')} (2 cores)")
    print(f"  plot: {plot_regime(regime, oracles, results, policies)}")
    save_json(regime, oracles, results, [*conditions, *targets])
    print(f"  {time.monotonic() - started:.0f} s\n", flush=True)
    return all(v.met for v in [*conditions, *targets])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one shorter run per regime")
    parser.add_argument("--regimes", default="light,real,skew,engine",
                        help="light, real, skew, engine (comma-separated; empty for none)")
    parser.add_argument("--seeds", default="", help="comma-separated (default 1,2,3; quick: 1)")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--scenarios", default="",
                        help=f"also the earlier scenarios: {', '.join(SCENARIOS)}")
    parser.add_argument("--seed", type=int, default=1, help="seed of the earlier scenarios")
    parser.add_argument("--only", action="append", default=[],
                        help="earlier scenarios: run only this label (repeatable)")
    ns = parser.parse_args(argv)  # fmt: skip
    started = time.monotonic()
    seeds = [int(s) for s in ns.seeds.split(",") if s] or ([1] if ns.quick else [1, 2, 3])
    catalogue = QUICK_REGIMES if ns.quick else REGIMES
    policies = [p for p in ns.policies.split(",") if p]
    met = True
    for name in filter(None, ns.regimes.split(",")):
        met = run_regime(catalogue[name], seeds, policies) and met
    if ns.scenarios:
        run_scenarios(ns.scenarios.split(","), ns.quick, ns.seed, ns.only)
    print(f"whole run {time.monotonic() - started:.0f} s; "
          f"{'every target met' if met else 'some targets MISSED (see above)'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
