"""Instructions the router executes per proxied request, counted by valgrind's callgrind: a
measure of CPU cost that other work on a shared machine does not move (CPU µs per request
moves by 10-30 % between runs there; this by about 3 %).

    python -m router.tooling.bench.instructions CHECKOUT [CHECKOUT ...] [--runs 2] [--seconds 15]

Each checkout's `kvrouter serve` (default settings, two `fast_upstream.py` workers) runs under
callgrind with instrumentation off; after a warm-up, instructions are counted over `--seconds`
of wrk load (16 connections: under valgrind the router is some 50x slower, so 64 would only
queue) and over as long a time idle; the idle count (health probes, load scrapes: work done
per second, not per request), scaled to the loaded time, is taken off and the rest divided by
the requests wrk completed. Checkouts are measured in turns, `--runs` times each. Counts
user-space instructions only: the kernel's share of a request (the socket calls) is the same
for every checkout and is not in them.
Needs valgrind (`apt-get install valgrind`) and wrk (`apt-get install wrk`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import orjson
import yaml

from router.tooling.bench.measure import KEYS, WRK_SCRIPT
from router.tooling.bench.targets import Cores, start_fast_upstreams
from router.tooling.fleet import router_config
from router.tooling.launch import pin, stop_process, wait_http_ok

CONNECTIONS = 16


def _wrk(url: str, seconds: int) -> int:
    """Requests completed by wrk in `seconds`."""
    argv = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "30s",
            "-s", str(WRK_SCRIPT), url, "--", str(KEYS)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120, check=True)
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("{")][-1]
    found = orjson.loads(line)
    return int(found["requests"]) - int(found["status_errors"])


def _dump(pid: int, out: Path, part: int) -> int:
    """Dump callgrind's counts since the last dump; the instructions in that part."""
    subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, check=True)
    path = out.with_name(f"{out.name}.{part}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("totals:"):
                    return int(line.split()[1])
        time.sleep(0.2)
    raise RuntimeError(f"callgrind wrote no {path}")


def measure(checkout: Path, upstream_urls: list[tuple[str, str]], cores: Cores, seconds: int):
    """(instructions per request, requests counted) for one run of one checkout."""
    with tempfile.TemporaryDirectory() as workdir:
        config = router_config(upstream_urls)
        path = Path(workdir) / "router.yaml"
        path.write_text(yaml.safe_dump(config))
        out = Path(workdir) / "callgrind.out"
        argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={out}", sys.executable, "-m", "router", "serve",
                "--config", str(path)]  # fmt: skip
        proc = subprocess.Popen(
            argv, cwd=checkout, env={**os.environ, "PYTHONPATH": str(checkout)},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=pin(cores.proxy),
        )  # fmt: skip
        try:
            url = f"http://{config['listen']}"
            wait_http_ok(url + "/readyz", timeout=300, proc=proc)
            _wrk(url, 3)  # warm up, uninstrumented
            control = ["callgrind_control"]
            subprocess.run([*control, "-i", "on", str(proc.pid)], capture_output=True, check=True)
            _dump(proc.pid, out, 1)  # what instrumenting cost, not counted
            started = time.monotonic()
            served = _wrk(url, seconds)
            loaded, took = _dump(proc.pid, out, 2), time.monotonic() - started
            time.sleep(seconds)  # idle: health probes, load scrapes and timers alone
            idle, idled = _dump(proc.pid, out, 3), time.monotonic() - started - took
            subprocess.run([*control, "-i", "off", str(proc.pid)], capture_output=True, check=True)
        finally:
            stop_process(proc)
        return (loaded - idle * took / idled) / max(served, 1), served


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", type=Path, nargs="+")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=15, help="counted load per run")
    ns = parser.parse_args(argv)
    for tool in ("valgrind", "callgrind_control", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: apt-get install valgrind wrk")
    cores = Cores.split()
    results: dict[Path, list[float]] = {c.resolve(): [] for c in ns.checkouts}
    with ExitStack() as stack:
        upstreams = start_fast_upstreams(stack, cores)
        urls = [(u.name, u.url) for u in upstreams]
        for run in range(1, ns.runs + 1):
            for checkout in results:
                per_request, served = measure(checkout, urls, cores, ns.seconds)
                results[checkout].append(per_request)
                print(f"run {run}/{ns.runs} {checkout}: {per_request:,.0f} instructions/request "
                      f"({served:,} requests)", file=sys.stderr, flush=True)  # fmt: skip
    first = statistics.median(next(iter(results.values())))
    print(f"{'checkout':<40}{'instructions/request (median)':>32}{'vs first':>10}")
    for checkout, counts in results.items():
        median = statistics.median(counts)
        print(f"{checkout!s:<40}{median:>32,.0f}{median / first:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
