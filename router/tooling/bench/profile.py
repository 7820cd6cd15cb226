"""Where the router's CPU goes on the proxy path: py-spy samples `kvrouter serve` (default
settings, pinned to one core as in `kvrouter bench`) while wrk drives it through two
`fast_upstream.py` processes, and writes a flame graph and a table of the top functions.

    python -m router.tooling.bench.profile [--seconds 15] [--out docs/profile/proxy.svg]

Two sampling runs of `--seconds` each under the same load: one writes the flame graph (SVG),
the other collapsed stacks, from which the table is made: each function's share of the samples
by itself (self) and with what it calls (total). The table, with the router's CPU µs per
request over the runs (from /proc), is printed and written beside the SVG (`.txt`). py-spy
is not a dependency of the project: `pip install py-spy` (it needs ptrace rights over the
router: root, or `kernel.yama.ptrace_scope = 0`).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path

from router.tooling.bench.measure import FULL, measure_rate
from router.tooling.bench.targets import Cores, cpu_seconds, start_fast_upstreams, start_kvrouter

RATE = 250  # samples per second


def find_py_spy() -> str:
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    return found


def frame_name(frame: str) -> str:
    """`handler (router/http/handlers.py:27)` -> `handler (router/http/handlers.py)`: one
    row per function, whatever line in it was running."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    for marker in ("site-packages/", "/router/", "/lib/python"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/router/":
                path = "router/" + path
            break
    return f"{name} ({path})" if path else name


def top_functions(collapsed: Iterable[str], count: int) -> tuple[int, list[tuple[str, int, int]]]:
    """From py-spy's raw output (`frame;frame;... samples` per line): the total samples and
    the `count` functions with most samples in total, as (function, self, total)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed:
        stack, _, number = line.rstrip().rpartition(" ")
        if not stack or not number.isdigit():
            continue
        n = int(number)
        samples += n
        frames = [frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        own[frames[-1]] += n
        for name in set(frames):
            total[name] += n
    ranked = sorted(total, key=lambda name: (-total[name], -own[name]))[:count]
    return samples, [(name, own[name], total[name]) for name in ranked]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15, help="each sampling run's length")
    parser.add_argument("--out", type=Path, default=Path("docs/profile/proxy.svg"))
    parser.add_argument("--top", type=int, default=40, help="rows of the table")
    parser.add_argument("--native", action="store_true", help="also sample C frames")
    ns = parser.parse_args(argv)
    py_spy = find_py_spy()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    cores = Cores.split()
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    plan = FULL.__class__(**{**FULL.__dict__, "rate_seconds": ns.seconds + 2, "rate_warmup": 1})
    with tempfile.TemporaryDirectory() as workdir, ExitStack() as stack:
        raw = Path(workdir) / "stacks.txt"
        upstreams = start_fast_upstreams(stack, cores)
        router = start_kvrouter(stack, cores, upstreams, Path(workdir))
        assert router.pid is not None
        measure_rate(router, plan, cores, "wrk")  # warm up
        spent, served = cpu_seconds(router.pid), 0
        for fmt, path in (("flamegraph", ns.out), ("raw", raw)):
            sampler = subprocess.Popen(
                [py_spy, "record", "--pid", str(router.pid), "--rate", str(RATE),
                 "--duration", str(ns.seconds), "--format", fmt, "--output", str(path),
                 *(["--native"] if ns.native else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            try:
                served += measure_rate(router, plan, cores, "wrk")["requests"]
                _, err = sampler.communicate(timeout=ns.seconds + 60)
            finally:
                if sampler.poll() is None:
                    sampler.kill()
                    sampler.wait(5)
            if sampler.returncode != 0:
                raise SystemExit(f"py-spy failed: {err.decode()[-800:]}")
        spent = cpu_seconds(router.pid) - spent
        samples, rows = top_functions(raw.read_text().splitlines(), ns.top)
    lines = [
        f"router CPU per request while sampled: {spent / max(served, 1) * 1e6:.0f} µs "
        f"({served:,} requests; sampling adds its own cost)",
        f"{samples} samples; share of samples in each function, by itself and in total",
        f"{'self':>6} {'total':>6}  function",
        *(f"{own / samples:6.1%} {total / samples:6.1%}  {name}" for name, own, total in rows),
    ]
    table = ns.out.with_suffix(".txt")
    table.write_text("\n".join(lines) + "\n")
    print(f"flame graph: {ns.out}; this table: {table}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
