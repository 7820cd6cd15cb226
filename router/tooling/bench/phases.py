"""The phases of `kvrouter bench`: which processes each starts, what it measures through
them, and where the figures go."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.tooling.bench.measure import (
    Plan,
    measure_held_rss,
    measure_latency,
    measure_rate,
    measure_sse,
)
from router.tooling.bench.targets import (
    DIRECT,
    Cores,
    Endpoint,
    start_fast_upstreams,
    start_kvrouter,
    start_naive,
    start_rust,
    start_sim,
)

PHASES = ("throughput", "latency", "sse", "rss")
# The sim listens with a backlog of 128 and shares its core with 1,000 streaming clients, so
# while streams ramp up it can be slow to accept; 1 s (the default) then ejects it.
RSS_CONNECT_TIMEOUT = 5.0


class Progress:
    """Timestamped progress lines on stderr."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass
class Results:
    throughput: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)
    sse: dict[str, dict[str, Any]] = field(default_factory=dict)
    rss: dict[str, dict[str, Any]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def best_rps(self, name: str) -> float | None:
        runs = self.throughput.get(name)
        return max(r["rps"] for r in runs) if runs else None

    def least_cpu(self, name: str) -> float | None:
        runs = self.throughput.get(name, ())
        costs = [r["cpu_us_per_request"] for r in runs if "cpu_us_per_request" in r]
        return min(costs) if costs else None


@dataclass(frozen=True)
class Setup:
    plan: Plan
    cores: Cores
    loadgen: str
    rust: str | None
    phases: tuple[str, ...]
    workdir: Path
    log: Progress


def run_fast_phases(setup: Setup, results: Results) -> None:
    """Throughput and latency: every proxy in front of the same two fast upstreams."""
    plan, cores = setup.plan, setup.cores
    with ExitStack() as stack:
        upstreams = start_fast_upstreams(stack, cores)
        targets = [Endpoint(DIRECT, upstreams[0].port)]
        targets.append(start_kvrouter(stack, cores, upstreams, setup.workdir))
        if setup.rust:
            targets.append(start_rust(stack, cores, upstreams, setup.rust))
        targets.append(start_naive(stack, cores, upstreams))
        if "throughput" in setup.phases:
            for round_ in range(plan.rounds):
                for target in targets:
                    result = measure_rate(target, plan, cores, setup.loadgen)
                    results.throughput.setdefault(target.name, []).append(result)
                    cpu = result.get("cpu_us_per_request")
                    setup.log(f"throughput round {round_ + 1}/{plan.rounds}: {target.name:12s} "
                        f"{result['rps']:9,.0f} req/s ({result['errors']} errors)"
                        + (f", {cpu:.0f} us CPU per request" if cpu else ""))  # fmt: skip
        if "latency" in setup.phases:
            for target in targets:
                result = measure_latency(target, plan, cores)
                results.latency[target.name] = result
                setup.log(f"latency at {plan.latency_rate:.0f} req/s: {target.name:12s} "
                    f"p50 {result['p50_ms']:.3f} ms  p99 {result['p99_ms']:.3f} ms "
                    f"({result['errors']} errors)")  # fmt: skip


def run_sse_phase(setup: Setup, results: Results) -> None:
    """SSE relay rate with the simulated worker streaming at zero delay."""
    plan, cores = setup.plan, setup.cores
    with ExitStack() as stack:
        sim = start_sim(stack, cores, ["--time-scale", "0"])
        targets = [Endpoint(DIRECT, sim.port), start_kvrouter(stack, cores, [sim], setup.workdir)]
        if setup.rust:
            targets.append(start_rust(stack, cores, [sim], setup.rust))
        for target in targets:
            result = measure_sse(target, plan, cores)
            results.sse[target.name] = result
            setup.log(f"sse: {target.name:12s} {result['events_per_s']:9,.0f} chunks/s "
                f"({plan.sse_concurrency} streams, {result['errors']} errors)")  # fmt: skip


def run_rss_phase(setup: Setup, results: Results) -> None:
    """RSS with many streams held open; a fresh proxy process each, the sim decoding slowly."""
    plan, cores = setup.plan, setup.cores
    slow = ["--time-scale", "1", "--decode-ms-per-token", "100", "--decode-batch-penalty", "0"]
    patient = {"timeouts": {"connect": RSS_CONNECT_TIMEOUT}}
    starters: list[Callable[[ExitStack, list[Endpoint]], Endpoint]] = [
        lambda stack, ups: start_kvrouter(stack, cores, ups, setup.workdir, patient)
    ]
    if setup.rust:
        rust = setup.rust
        starters.append(lambda stack, ups: start_rust(stack, cores, ups, rust))
    for start in starters:
        with ExitStack() as stack:
            sim = start_sim(stack, cores, slow)
            target = start(stack, [sim])
            result = measure_held_rss(target, plan, cores)
            results.rss[target.name] = result
            setup.log(f"rss: {target.name:12s} {result['held_mb']:.1f} MB with {result['ready']} "
                f"streams open (idle {result['idle_mb']:.1f} MB)")  # fmt: skip
