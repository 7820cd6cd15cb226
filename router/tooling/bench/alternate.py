"""Two checkouts of the router measured in turns, on one machine, N runs of each, alternated
so that drift in the machine's load hits both.

    python -m router.tooling.bench.alternate OLD_CHECKOUT NEW_CHECKOUT [--runs 5]
    python -m router.tooling.bench.alternate OLD NEW --only sse,rss

Each run is `python -m router bench --no-rust --only PHASES` inside that checkout. With the
default phases (throughput,latency): CPU µs per request (best of 3 rounds) and added latency
(through the router minus direct). With sse: SSE chunks relayed per second through the router;
with rss: the router's RSS with the bench's streams held open. Prints every run and the
medians; the raw results go to `--out` (default ./bench-out/alternate).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run_once(checkout: Path, out: Path, phases: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    subprocess.run(
        [sys.executable, "-m", "router", "bench", "--no-rust", "--only", phases,
         "--out", str(out)],
        cwd=checkout, env=env, check=True, stdout=subprocess.DEVNULL, timeout=900,
    )  # fmt: skip
    found = json.loads(out.read_text())
    row: dict[str, float] = {}
    if "throughput" in phases:
        rounds = found["throughput"]["kvrouter"]
        row["cpu_us"] = min(r["cpu_us_per_request"] for r in rounds)
        row["rps"] = max(r["rps"] for r in rounds)
    if "latency" in phases:
        latency, direct = found["latency"]["kvrouter"], found["latency"]["direct"]
        row["added_p50_ms"] = latency["p50_ms"] - direct["p50_ms"]
        row["added_p99_ms"] = latency["p99_ms"] - direct["p99_ms"]
    if "sse" in phases:
        row["sse_chunks_s"] = found["sse"]["kvrouter"]["events_per_s"]
    if "rss" in phases:
        held = found["rss"]["kvrouter"]
        row["rss_mb"], row["streams"] = held["held_mb"], held["ready"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench-out") / "alternate")
    parser.add_argument("--only", default="throughput,latency", help="bench phases to run")
    ns = parser.parse_args(argv)
    ns.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for run in range(1, ns.runs + 1):
        for side, checkout in (("old", ns.old), ("new", ns.new)):
            print(f"[{time.monotonic() - started:6.0f}s] run {run}/{ns.runs}: {side}",
                  file=sys.stderr, flush=True)  # fmt: skip
            out = ns.out / f"{side}-{run}.json"
            results[side].append(run_once(checkout.resolve(), out, ns.only))
    columns = list(results["old"][0])
    print(f"{'side':<5}{'run':>4}" + "".join(f"{name:>14}" for name in columns))
    for side, rows in results.items():
        for run, row in enumerate(rows, 1):
            print(f"{side:<5}{run:>4}" + "".join(f"{row[name]:>14.2f}" for name in columns))
    for name in columns:
        old = statistics.median(r[name] for r in results["old"])
        new = statistics.median(r[name] for r in results["new"])
        change = f"({(new / old - 1) * 100:+.1f} %)" if old else ""
        print(f"median {name}: old {old:.2f}, new {new:.2f} {change}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
