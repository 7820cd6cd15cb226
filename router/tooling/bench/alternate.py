"""Two checkouts of the router measured in turns, on one machine: proxy CPU per request and
added latency, N runs of each, alternated so that drift in the machine's load hits both.

    python -m router.tooling.bench.alternate OLD_CHECKOUT NEW_CHECKOUT [--runs 5]

Each run is `python -m router bench --no-rust --only throughput,latency` inside that checkout
(best of 3 rounds for CPU µs per request; added latency = through the router minus direct).
Prints every run and the medians; the raw results go to `--out` (default ./bench-out/alternate).
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


def run_once(checkout: Path, out: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    subprocess.run(
        [sys.executable, "-m", "router", "bench", "--no-rust", "--only", "throughput,latency",
         "--out", str(out)],
        cwd=checkout, env=env, check=True, stdout=subprocess.DEVNULL, timeout=900,
    )  # fmt: skip
    found = json.loads(out.read_text())
    rounds = found["throughput"]["kvrouter"]
    latency, direct = found["latency"]["kvrouter"], found["latency"]["direct"]
    return {
        "cpu_us": min(r["cpu_us_per_request"] for r in rounds),
        "rps": max(r["rps"] for r in rounds),
        "added_p50_ms": latency["p50_ms"] - direct["p50_ms"],
        "added_p99_ms": latency["p99_ms"] - direct["p99_ms"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench-out") / "alternate")
    ns = parser.parse_args(argv)
    ns.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for run in range(1, ns.runs + 1):
        for side, checkout in (("old", ns.old), ("new", ns.new)):
            print(f"[{time.monotonic() - started:6.0f}s] run {run}/{ns.runs}: {side}",
                  file=sys.stderr, flush=True)  # fmt: skip
            results[side].append(run_once(checkout.resolve(), ns.out / f"{side}-{run}.json"))
    print(f"{'side':<5}{'run':>4}{'CPU µs/req':>12}{'req/s':>9}{'added p50 ms':>14}"
          f"{'added p99 ms':>14}")  # fmt: skip
    for side, rows in results.items():
        for run, row in enumerate(rows, 1):
            print(f"{side:<5}{run:>4}{row['cpu_us']:>12.0f}{row['rps']:>9.0f}"
                  f"{row['added_p50_ms']:>14.2f}{row['added_p99_ms']:>14.2f}")  # fmt: skip
    old_cpu = statistics.median(r["cpu_us"] for r in results["old"])
    new_cpu = statistics.median(r["cpu_us"] for r in results["new"])
    print(f"median CPU µs/request: old {old_cpu:.0f}, new {new_cpu:.0f} "
          f"({(new_cpu / old_cpu - 1) * 100:+.1f} %)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
