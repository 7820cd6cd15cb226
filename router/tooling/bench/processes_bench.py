"""`make bench-processes`: throughput of `kvrouter serve --processes 1` and `--processes 2`
and of the Rust vllm-router, in front of the same fast upstreams, in one run; nothing pinned.

wrk -t1 -c64 for `--seconds` (30) per round, `--rounds` (3) rounds alternating the targets, best
round kept; then the added latency at 200 req/s, open loop. Both kvrouter columns run the
default configuration with a Redis store (127.0.0.1:6379 unless `--redis`), because several
processes need one; a third kvrouter column, `1 proc, memory`, is the plain default (in-memory
store) for reference. CPU per request is the whole process tree's (parent and children).
Progress on stderr; the table on stdout; everything in bench-out/processes.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson

from router.tooling.bench.measure import FULL, Plan, measure_latency, measure_rate
from router.tooling.bench.phases import Progress
from router.tooling.bench.targets import (
    DIRECT,
    RUST,
    Cores,
    Endpoint,
    find_rust,
    start_fast_upstreams,
    start_kvrouter,
    start_rust,
)

ONE, TWO, MEMORY = "1 proc", "2 procs", "1 proc, memory"
SCALING_TARGET = 1.5
OUT = Path("bench-out") / "processes.json"


def _targets(
    stack: ExitStack, upstreams: list[Endpoint], workdir: Path, redis: str, rust: str | None
) -> list[Endpoint]:
    cores = Cores(None, None)
    store = {"store": {"url": redis, "key_prefix": f"bench-{uuid.uuid4().hex[:8]}"}}
    targets = [
        start_kvrouter(stack, cores, upstreams, workdir, store, processes=1, name=ONE),
        start_kvrouter(stack, cores, upstreams, workdir, store, processes=2, name=TWO),
        start_kvrouter(stack, cores, upstreams, workdir, processes=1, name=MEMORY),
    ]
    if rust is not None:
        targets.append(start_rust(stack, cores, upstreams, rust))
    return targets


def run(ns: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("bench-processes needs wrk: apt-get install -y wrk")
    rust = find_rust(None)
    plan = Plan(ns.rounds, ns.seconds, 2, 64, 2000, 200, 200.0, 0, 0, 0, 0, 0)
    log = Progress()
    cores = Cores(None, None)
    rates: dict[str, list[dict[str, Any]]] = {}
    latency: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="kvrouter-procbench-") as tmp, ExitStack() as stack:
        upstreams = start_fast_upstreams(stack, cores)
        targets = _targets(stack, upstreams, Path(tmp), ns.redis, rust)
        log(f"targets: {', '.join(t.name for t in targets)}; vllm-router: {rust or 'not found'}")
        for round_ in range(plan.rounds):
            for target in targets:
                result = measure_rate(target, plan, cores, "wrk")
                rates.setdefault(target.name, []).append(result)
                log(f"round {round_ + 1}/{plan.rounds} {target.name:15s} {result['rps']:8,.0f} "
                    f"req/s, {result.get('cpu_us_per_request', 0):.0f} us CPU/request, "
                    f"{result['errors']} errors")  # fmt: skip
        for target in [Endpoint(DIRECT, upstreams[0].port), *targets]:
            latency[target.name] = measure_latency(target, plan, cores)
            log(f"latency {target.name:15s} p50 {latency[target.name]['p50_ms']:.3f} ms "
                f"p99 {latency[target.name]['p99_ms']:.3f} ms")  # fmt: skip
    return {"plan": {"rounds": plan.rounds, "seconds": plan.rate_seconds, "connections": 64},
            "rates": rates, "latency": latency, "rust": rust}  # fmt: skip


def table(results: dict[str, Any]) -> list[str]:
    rates, latency = results["rates"], results["latency"]
    best = {name: max(r["rps"] for r in runs) for name, runs in rates.items()}
    cpu = {name: min(r.get("cpu_us_per_request", 0) for r in runs) for name, runs in rates.items()}
    direct = latency[DIRECT]
    names = list(rates)
    lines = [f"{'':26s}" + "".join(f"{n:>16s}" for n in names)]
    lines.append(f"{'req/s (best round)':26s}" + "".join(f"{best[n]:16,.0f}" for n in names))
    lines.append(f"{'CPU us/request':26s}" + "".join(f"{cpu[n]:16.0f}" for n in names))
    for pct in ("p50", "p99"):
        added = [latency[n][f"{pct}_ms"] - direct[f"{pct}_ms"] for n in names]
        label = f"added {pct} ms @200 req/s"
        lines.append(f"{label:26s}" + "".join(f"{a:16.3f}" for a in added))
    scaling = best[TWO] / best[ONE]
    met = "met" if scaling >= SCALING_TARGET else "MISSED"
    lines.append("")
    lines.append(
        f"--processes 2 / --processes 1: {scaling:.2f}x (target >= {SCALING_TARGET}x: {met})"
    )
    if RUST in best:
        lines.append(f"vllm-router / --processes 2: {best[RUST] / best[TWO]:.2f}x "
                     f"(vllm-router / --processes 1: {best[RUST] / best[ONE]:.2f}x)")  # fmt: skip
    plan = results["plan"]
    lines.append(f"wrk -t1 -c{plan['connections']}, {plan['seconds']} s x {plan['rounds']} "
                 "rounds alternating targets, nothing pinned, 2 fast upstreams")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=FULL.rounds)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--out", default=str(OUT))
    ns = parser.parse_args(argv)
    started = time.monotonic()
    results = run(ns)
    results["wall_seconds"] = time.monotonic() - started
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
