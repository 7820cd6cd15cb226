"""`kvrouter bench`: what the router costs, measured in one run against a direct connection to the
upstream, the Rust vllm-router in the same position, and a naive aiohttp proxy.

Every proxy under test is pinned to one core; the load generator and the upstreams share the
other, so the direct baseline shows how much headroom they leave. Every process is started on a
free loopback port and stopped by PID; every phase is bounded in requests and seconds. Progress
goes to stderr; the table to stdout, and everything measured to bench-out/bench.json (`--out`).
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import orjson

from router.tooling.bench.measure import FULL, QUICK
from router.tooling.bench.phases import (
    PHASES,
    Progress,
    Results,
    Setup,
    run_fast_phases,
    run_rss_phase,
    run_sse_phase,
)
from router.tooling.bench.report import TARGETS, build_rows, format_table, notes
from router.tooling.bench.targets import Cores, find_rust, rust_display

OUT_FILE = Path("bench-out") / "bench.json"


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="smaller runs (about a minute)")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto",
                        help="throughput load generator (auto: wrk when installed)")  # fmt: skip
    parser.add_argument("--rust-router", help="path of the vllm-router executable")
    parser.add_argument("--no-rust", action="store_true", help="skip the vllm-router comparison")
    parser.add_argument("--only", help=f"comma-separated phases from {','.join(PHASES)}")
    parser.add_argument("--out", default=str(OUT_FILE), help="JSON results file")


def _choose_loadgen(choice: str) -> tuple[str, str]:
    wrk = shutil.which("wrk")
    if choice == "wrk" and not wrk:
        raise SystemExit("kvrouter bench: --loadgen wrk but wrk is not installed")
    if choice != "python" and wrk:
        return "wrk", f"wrk ({wrk}, 1 thread) for throughput; loadgen.py for the rest"
    return "python", "loadgen.py (raw uvloop client) for every phase; wrk not used"


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_bench(ns: argparse.Namespace) -> int:
    started = time.monotonic()
    phases = tuple(p.strip() for p in ns.only.split(",")) if ns.only else PHASES
    unknown = set(phases) - set(PHASES)
    if unknown:
        raise SystemExit(f"kvrouter bench: unknown phases {sorted(unknown)}; choose from {PHASES}")
    loadgen, loadgen_detail = _choose_loadgen(ns.loadgen)
    rust = None if ns.no_rust else find_rust(ns.rust_router)
    _raise_fd_limit()
    results = Results()
    with tempfile.TemporaryDirectory(prefix="kvrouter-proxybench-") as tmp:
        plan = QUICK if ns.quick else FULL
        setup = Setup(plan, Cores.split(), loadgen, rust, phases, Path(tmp), Progress())
        results.meta = {
            "mode": "quick" if ns.quick else "full", "phases": list(phases),
            "plan": asdict(setup.plan), "cores": setup.cores.describe(), "loadgen": loadgen,
            "loadgen_detail": loadgen_detail, "python": sys.version.split()[0],
            "rust_command": rust_display(rust),
            "rust_missing": "skipped (--no-rust)" if ns.no_rust
            else "not found (pip install vllm-router, or --rust-router PATH)",
        }  # fmt: skip
        setup.log(f"kvrouter bench ({results.meta['mode']}): {setup.cores.describe()}; "
            f"load generator: {loadgen}; vllm-router: {rust or 'not found'}")  # fmt: skip
        if {"throughput", "latency"} & set(phases):
            run_fast_phases(setup, results)
        if "sse" in phases:
            run_sse_phase(setup, results)
        if "rss" in phases:
            run_rss_phase(setup, results)
    rows = build_rows(results)
    out = Path(ns.out)
    results.meta["wall_seconds"] = time.monotonic() - started
    results.meta["out"] = str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {**asdict(results), "table": [asdict(r) for r in rows], "targets": TARGETS}
    out.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    print(format_table(rows))
    print()
    for line in notes(results, setup):
        print(f"  {line}")
    return 0
