"""How `routing.saturation.floor` trades sessions kept on one worker against tail latency, for
bounded_load without worker metrics (the fallback the default policy also uses).

    python -m loadtests.floor_table            # about 3 minutes
    python -m loadtests.floor_table --quick

The new user's run: 4 simulated workers with a realistic timing model (and room in their caches
for every session), sessions of 3 turns at 64 concurrent sessions, a router process per floor.
Prints, per floor: the share of sessions whose every turn stayed on one worker, the share of
prompt tokens served from cache, and request latency p50/p99 (non-streamed replies of 24
tokens, so latency is time to first token plus a short decode). Ranges over `--runs` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from router.tooling.chatload import run_chat_load
from router.tooling.fleet import LocalFleet, SimSettings

FLOORS = (0, 2, 4, 8, 16, 32)
SIM = SimSettings(cache_tokens=4_000_000, time_scale=0.05)


def measure(fleet: LocalFleet, floor: int, sessions: int, concurrency: int, seed: int):
    routing = {"policy": "bounded_load", "saturation": {"floor": floor}}
    with fleet.router_process(routing=routing, load={"enabled": False}) as router:
        fleet.reset_caches()
        report = asyncio.run(
            run_chat_load(router.url, sessions, 3, concurrency, seed=seed, prefix=f"f{floor}")
        )
    if report.errors:
        raise RuntimeError(f"floor {floor}: {len(report.errors)} failed turns")
    return (
        report.sessions_on_one_worker(),
        report.cached_ratio(),
        report.latency(0.5),
        report.latency(0.99),
    )


def span(values: list[float], scale: float = 1.0, fmt: str = "{:.1f}") -> str:
    low, high = min(values) * scale, max(values) * scale
    return fmt.format(low) if fmt.format(low) == fmt.format(high) else (
        f"{fmt.format(low)}-{fmt.format(high)}"
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    ns = parser.parse_args(argv)
    sessions, runs = (300, 1) if ns.quick else (1000, ns.runs)
    started = time.monotonic()
    rows: dict[int, list[tuple[float, float, float, float]]] = {f: [] for f in FLOORS}
    with LocalFleet(4, SIM.flags(), router_defaults={"shutdown_grace": 2}) as fleet:
        for run in range(runs):
            for floor in FLOORS:
                rows[floor].append(measure(fleet, floor, sessions, 64, seed=run + 1))
                print(
                    f"[{time.monotonic() - started:6.1f}s] run {run + 1}/{runs} floor {floor}",
                    file=sys.stderr, flush=True,
                )  # fmt: skip
    print(f"bounded_load (c = 1.25), 4 workers, {sessions} sessions x 3 turns, 64 concurrent, "
          f"no worker metrics; {runs} run(s), ranges min-max")  # fmt: skip
    print(f"{'floor':>6}  {'one worker %':>14}  {'cached %':>12}  {'p50 ms':>12}  {'p99 ms':>12}")
    for floor, results in rows.items():
        one, cached, p50, p99 = zip(*results, strict=True)
        print(
            f"{floor:>6}  {span(list(one), 100):>14}  {span(list(cached), 100):>12}  "
            f"{span(list(p50), 1000, '{:.0f}'):>12}  {span(list(p99), 1000, '{:.0f}'):>12}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
