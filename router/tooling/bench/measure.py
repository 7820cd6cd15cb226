"""The load generators of `kvrouter bench`, each run to completion in its own pinned process;
every function returns what one run measured, as the generator printed it."""

from __future__ import annotations

import select
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from router.tooling.bench.targets import HERE, Cores, Endpoint, cpu_seconds, rss_mb
from router.tooling.launch import child_env, pin

KEYS = 64
WRK_SCRIPT = Path(__file__).with_name("wrk_post.lua")
RSS_RAMP_RATE = 400


@dataclass(frozen=True)
class Plan:
    """How long and how big each phase is."""

    rounds: int
    rate_seconds: int
    rate_warmup: int
    connections: int
    latency_requests: int
    latency_warmup: int
    latency_rate: float
    sse_seconds: float
    sse_concurrency: int
    sse_tokens: int
    hold_streams: int
    hold_seconds: float


FULL = Plan(3, 6, 1, 64, 2000, 200, 200.0, 5.0, 8, 1000, 1000, 3.0)
QUICK = Plan(1, 3, 1, 64, 400, 50, 200.0, 2.0, 8, 1000, 1000, 1.0)


def _run_json(argv: Sequence[str], cpus: frozenset[int] | None, timeout: float) -> dict[str, Any]:
    """Run a load generator to completion and return the JSON object on its last stdout line."""
    done = subprocess.run(
        list(argv), env=child_env(), stdin=subprocess.DEVNULL, capture_output=True,
        timeout=timeout, preexec_fn=pin(cpus), check=False,
    )  # fmt: skip
    lines = [ln for ln in done.stdout.decode().splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.decode()[-800:]}")
    return orjson.loads(lines[-1])


def _loadgen(mode: str, target: Endpoint, *args: str) -> list[str]:
    return [sys.executable, "-m", f"{HERE}.loadgen", mode, "--port", str(target.port),
            "--keys", str(KEYS), *args]  # fmt: skip


def measure_rate(target: Endpoint, plan: Plan, cores: Cores, loadgen: str) -> dict[str, Any]:
    """Requests/s after a warm-up run; for a proxy, also its CPU time per request, which
    interference from other processes on the machine disturbs far less than the rate."""
    run = _wrk_rate if loadgen == "wrk" else _python_rate
    run(target, plan.rate_warmup, plan, cores)
    before = cpu_seconds(target.pid) if target.pid else 0.0
    result = run(target, plan.rate_seconds, plan, cores)
    if target.pid and result["requests"]:
        spent = cpu_seconds(target.pid) - before
        result["cpu_us_per_request"] = spent / result["requests"] * 1e6
    return result


def _python_rate(target: Endpoint, seconds: int, plan: Plan, cores: Cores) -> dict[str, Any]:
    argv = _loadgen(
        "rate", target, "--connections", str(plan.connections),
        "--seconds", str(seconds), "--warmup", "0",
    )  # fmt: skip
    return _run_json(argv, cores.load, seconds + 60)


def _wrk_rate(target: Endpoint, seconds: int, plan: Plan, cores: Cores) -> dict[str, Any]:
    argv = [
        "wrk", "-t1", f"-c{plan.connections}", f"-d{seconds}s", "--timeout", "5s",
        "-s", str(WRK_SCRIPT), target.url, "--", str(KEYS),
    ]  # fmt: skip
    out = _run_json(argv, cores.load, seconds + 60)
    elapsed = out["duration_us"] / 1e6
    errors = sum(v for k, v in out.items() if k.endswith("errors") or k == "timeouts")
    ok = out["requests"] - out["status_errors"]
    return {"requests": ok, "errors": errors, "seconds": elapsed, "rps": ok / elapsed}


def measure_latency(target: Endpoint, plan: Plan, cores: Cores) -> dict[str, Any]:
    argv = _loadgen(
        "latency", target, "--rate", str(plan.latency_rate),
        "--requests", str(plan.latency_requests), "--warmup-requests", str(plan.latency_warmup),
    )  # fmt: skip
    budget = (plan.latency_requests + plan.latency_warmup) / plan.latency_rate + 60
    return _run_json(argv, cores.load, budget)


def measure_sse(target: Endpoint, plan: Plan, cores: Cores) -> dict[str, Any]:
    argv = _loadgen(
        "sse", target, "--seconds", str(plan.sse_seconds), "--warmup", "0.5",
        "--concurrency", str(plan.sse_concurrency), "--tokens", str(plan.sse_tokens),
    )  # fmt: skip
    return _run_json(argv, cores.load, plan.sse_seconds + 60)


def measure_held_rss(target: Endpoint, plan: Plan, cores: Cores) -> dict[str, Any]:
    """RSS of the proxy while `hold_streams` streams are open through it (highest sample)."""
    assert target.pid is not None
    idle = rss_mb(target.pid)
    argv = _loadgen(
        "hold", target, "--streams", str(plan.hold_streams), "--tokens", "2000",
        "--hold", str(plan.hold_seconds), "--ready-timeout", "45",
        "--ramp-rate", str(RSS_RAMP_RATE),
    )  # fmt: skip
    proc = subprocess.Popen(
        argv, env=child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, preexec_fn=pin(cores.load),
    )  # fmt: skip
    try:
        ready = _read_ready(proc, 60.0)
        samples = []
        until = time.monotonic() + plan.hold_seconds * 0.8
        while time.monotonic() < until:
            samples.append(rss_mb(target.pid))
            time.sleep(0.1)
        out, _ = proc.communicate(timeout=plan.hold_seconds + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    result = orjson.loads(out.decode().strip().splitlines()[-1])
    return {"idle_mb": idle, "held_mb": max(samples, default=float("nan")), "ready": ready,
            "samples": len(samples), **result}  # fmt: skip


def _read_ready(proc: subprocess.Popen[bytes], timeout: float) -> int:
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], timeout)
    if not readable:
        raise RuntimeError("hold load generator never reported its streams open")
    line = proc.stdout.readline().decode()
    if not line.startswith("ready "):
        raise RuntimeError(f"hold load generator said {line!r}")
    return int(line.split()[1])
