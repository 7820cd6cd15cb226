"""What the access log costs: the router's CPU per request and throughput with the access log
off, on in JSON and on in text, measured in turns in one run.

    python -m router.tooling.bench.access_log_cost [--rounds 3] [--seconds 6]

Three routers, one per configuration, each pinned to the proxy core in turn with its stderr
going to a file (as a log collector would read it), in front of the bench's two fast upstreams;
the load generator is the one `kvrouter bench` uses (wrk when installed). Each round measures
every router once, after a warm-up; the table shows the best CPU per request of each (the figure
least disturbed by other work on the machine), its ratio to "off", and the best rate. Progress
goes to stderr; everything measured to bench-out/access_log_cost.json (`--out`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import yaml

from router.tooling.bench.measure import FULL, measure_rate
from router.tooling.bench.phases import Progress
from router.tooling.bench.runner import _choose_loadgen
from router.tooling.bench.targets import Cores, Endpoint, start_fast_upstreams
from router.tooling.fleet import router_config
from router.tooling.launch import child_env, pin, stop_process, wait_http_ok

CONFIGS: dict[str, dict[str, Any]] = {
    "off": {"format": "json"},
    "on, json": {"format": "json", "access": {"enabled": True, "hash_key": "x" * 32}},
    "on, text": {"format": "text", "access": {"enabled": True, "hash_key": "x" * 32}},
}
OUT_FILE = Path("bench-out") / "access_log_cost.json"


@contextmanager
def logging_router(
    name: str, logging: dict[str, Any], upstreams: list[Endpoint], cores: Cores, workdir: Path
) -> Iterator[tuple[Endpoint, Path]]:
    """A router with this `logging:` section, its stderr in a file; yields it and the file."""
    config = router_config(((u.name, u.url) for u in upstreams), logging=logging)
    stem = name.replace(", ", "-")
    path, log = workdir / f"{stem}.yaml", workdir / f"{stem}.log"
    path.write_text(yaml.safe_dump(config))
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "router", "serve", "--config", str(path)],
            env=child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            preexec_fn=pin(cores.proxy),
        )  # fmt: skip
        try:
            wait_http_ok(f"http://{config['listen']}/readyz", proc=proc)
            yield Endpoint(name, int(config["listen"].rpartition(":")[2]), proc.pid), log
        finally:
            stop_process(proc)


def format_table(results: dict[str, list[dict[str, Any]]]) -> str:
    base = min(r["cpu_us_per_request"] for r in results["off"])
    rows = [("access log", "CPU us/request (best)", "vs off", "req/s (best)", "errors")]
    for name, runs in results.items():
        cpu = min(r["cpu_us_per_request"] for r in runs)
        rows.append((
            name, f"{cpu:.1f}", f"{cpu / base:.3f}x", f"{max(r['rps'] for r in runs):,.0f}",
            str(sum(r["errors"] for r in runs)),
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=FULL.rounds)
    parser.add_argument("--seconds", type=int, default=FULL.rate_seconds)
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--out", type=Path, default=OUT_FILE)
    ns = parser.parse_args(argv)
    plan = replace(FULL, rounds=ns.rounds, rate_seconds=ns.seconds)
    loadgen, detail = _choose_loadgen(ns.loadgen)
    cores, log = Cores.split(), Progress()
    log(f"access log cost: {cores.describe()}; load generator: {detail}")
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
    records: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="kvrouter-accesslog-") as tmp, ExitStack() as stack:
        upstreams = start_fast_upstreams(stack, cores)
        routers = [
            stack.enter_context(logging_router(name, logging, upstreams, cores, Path(tmp)))
            for name, logging in CONFIGS.items()
        ]
        for round_ in range(plan.rounds):
            for target, _ in routers:
                result = measure_rate(target, plan, cores, loadgen)
                results[target.name].append(result)
                cpu = result.get("cpu_us_per_request", 0.0)
                log(f"round {round_ + 1}/{plan.rounds}: {target.name:9s} "
                    f"{result['rps']:8,.0f} req/s, {cpu:.1f} us CPU per request")  # fmt: skip
        for target, file in routers:
            records[target.name] = sum(1 for _ in file.open("rb"))
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    document = {"plan": plan.__dict__, "loadgen": detail, "cores": cores.describe(),
                "results": results, "log_lines": records}  # fmt: skip
    ns.out.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    print(format_table(results))
    print(f"\n  log lines written per router: {records}; raw results in {ns.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
