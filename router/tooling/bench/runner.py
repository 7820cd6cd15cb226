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
import os
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from router.tooling.launch import child_env, free_port, stop_process, wait_http_ok

HERE = "router.tooling.bench"  # the helper programs run as its modules
WRK_SCRIPT = Path(__file__).with_name("wrk_post.lua")
OUT_FILE = Path("bench-out") / "bench.json"
KEYS = 64
RUST = "vllm-router"
NAIVE = "naive"
DIRECT = "direct"
ROUTER = "kvrouter"
TARGETS = {"throughput_vs_rust": 1.0, "added_p50_ms": 1.0, "added_p99_ms": 5.0,
           "sse_chunks_per_s": 20_000.0, "rss_mb": 300.0}  # fmt: skip


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
PHASES = ("throughput", "latency", "sse", "rss")
# The sim listens with a backlog of 128 and shares its core with 1,000 streaming clients, so
# while streams ramp up it can be slow to accept; 1 s (the default) then ejects it.
RSS_CONNECT_TIMEOUT = 5.0
RSS_RAMP_RATE = 400


@dataclass(frozen=True)
class Cores:
    """Which CPUs the proxy under test gets, and which everything else shares."""

    proxy: frozenset[int] | None
    load: frozenset[int] | None

    @classmethod
    def split(cls) -> Cores:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls(None, None)
        return cls(frozenset(cpus[-1:]), frozenset(cpus[:-1]))

    def describe(self) -> str:
        if self.proxy is None or self.load is None:
            return "not pinned (fewer than 2 CPUs)"
        proxy, load = sorted(self.proxy), sorted(self.load)
        return f"proxy on CPU {proxy}, load generator + upstreams on CPU {load}"


class Progress:
    """Timestamped progress lines on stderr."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", file=sys.stderr, flush=True)


# --- processes --------------------------------------------------------------------------------


class Processes:
    """Every long-running process of one phase; all stopped by PID when the block ends."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: Sequence[str], cpus: frozenset[int] | None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            list(argv),
            env=child_env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_pin(cpus),
        )
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        stop_process(proc)
        self._procs.remove(proc)

    def close(self) -> None:
        for proc in reversed(self._procs):
            stop_process(proc)
        self._procs.clear()


@contextlib.contextmanager
def processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.close()


def _pin(cpus: frozenset[int] | None) -> Callable[[], None] | None:
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


@dataclass(frozen=True)
class Endpoint:
    """Something the load generator can send requests to; `pid` is None for the direct path."""

    name: str
    port: int
    pid: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_fast_upstreams(procs: Processes, cores: Cores, count: int = 2) -> list[Endpoint]:
    ups = []
    for i in range(count):
        port = free_port()
        argv = [sys.executable, "-m", f"{HERE}.fast_upstream", "--port", str(port),
                "--name", f"up-{i}"]  # fmt: skip
        ups.append((procs.start(argv, cores.load), Endpoint(f"up-{i}", port)))
    for proc, up in ups:
        wait_http_ok(up.url + "/health", proc=proc)
    return [up for _, up in ups]


def start_sim(procs: Processes, cores: Cores, extra: Sequence[str]) -> Endpoint:
    port = free_port()
    argv = [sys.executable, "-m", "router.sim", "--port", str(port), "--name", "sim-0", *extra]
    proc = procs.start(argv, cores.load)
    wait_http_ok(f"http://127.0.0.1:{port}/health", proc=proc)
    return Endpoint("sim-0", port)


def start_kvrouter(
    procs: Processes,
    cores: Cores,
    upstreams: Sequence[Endpoint],
    workdir: Path,
    extra: dict[str, Any] | None = None,
) -> Endpoint:
    """`kvrouter serve` with default settings except the workers and any `extra` sections."""
    port = free_port()
    config = workdir / f"router-{port}.yaml"
    workers = [{"url": u.url, "name": u.name} for u in upstreams]
    document = {"listen": f"127.0.0.1:{port}", "workers": workers, **(extra or {})}
    config.write_bytes(orjson.dumps(document))
    argv = [sys.executable, "-m", "router", "serve", "--config", str(config)]
    proc = procs.start(argv, cores.proxy)
    wait_http_ok(f"http://127.0.0.1:{port}/readyz", proc=proc)
    return Endpoint(ROUTER, port, proc.pid)


def rust_command(binary: str, upstreams: Sequence[Endpoint], port: int, metrics_port: int):
    return [
        binary, "--worker-urls", *[u.url for u in upstreams], "--policy", "consistent_hash",
        "--host", "127.0.0.1", "--port", str(port), "--prometheus-port", str(metrics_port),
        "--log-level", "warning",
    ]  # fmt: skip


def _rust_display(binary: str | None) -> str | None:
    if binary is None:
        return None
    return "RUST_LOG=warn " + " ".join(rust_command(binary, [Endpoint("w", 0)], 0, 0)).replace(
        "http://127.0.0.1:0", "URL..."
    ).replace(" 0", " PORT")


def find_rust(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    beside = Path(sys.executable).with_name(RUST)
    return str(beside) if beside.exists() else shutil.which(RUST)


def start_rust(
    procs: Processes, cores: Cores, upstreams: Sequence[Endpoint], binary: str
) -> Endpoint:
    port = free_port()
    argv = rust_command(binary, upstreams, port, free_port())
    proc = procs.start(argv, cores.proxy, env={"RUST_LOG": "warn"})
    wait_http_ok(f"http://127.0.0.1:{port}/health", timeout=30.0, proc=proc)
    return Endpoint(RUST, port, proc.pid)


def start_naive(procs: Processes, cores: Cores, upstreams: Sequence[Endpoint]) -> Endpoint:
    port = free_port()
    argv = [sys.executable, "-m", f"{HERE}.naive_proxy", "--port", str(port)]
    for up in upstreams:
        argv += ["--upstream", up.url]
    proc = procs.start(argv, cores.proxy)
    wait_http_ok(f"http://127.0.0.1:{port}/health", proc=proc)
    return Endpoint(NAIVE, port, proc.pid)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# --- load generators --------------------------------------------------------------------------


def _run_json(argv: Sequence[str], cpus: frozenset[int] | None, timeout: float) -> dict[str, Any]:
    """Run a load generator to completion and return the JSON object on its last stdout line."""
    done = subprocess.run(
        list(argv), env=child_env(), stdin=subprocess.DEVNULL, capture_output=True,
        timeout=timeout, preexec_fn=_pin(cpus), check=False,
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
        stderr=subprocess.DEVNULL, preexec_fn=_pin(cores.load),
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


# --- phases -----------------------------------------------------------------------------------


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
    with processes() as procs:
        upstreams = start_fast_upstreams(procs, cores)
        targets = [Endpoint(DIRECT, upstreams[0].port)]
        targets.append(start_kvrouter(procs, cores, upstreams, setup.workdir))
        if setup.rust:
            targets.append(start_rust(procs, cores, upstreams, setup.rust))
        targets.append(start_naive(procs, cores, upstreams))
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
    with processes() as procs:
        sim = start_sim(procs, cores, ["--time-scale", "0"])
        targets = [Endpoint(DIRECT, sim.port), start_kvrouter(procs, cores, [sim], setup.workdir)]
        if setup.rust:
            targets.append(start_rust(procs, cores, [sim], setup.rust))
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
    starters: list[Callable[[Processes, list[Endpoint]], Endpoint]] = [
        lambda procs, ups: start_kvrouter(procs, cores, ups, setup.workdir, patient)
    ]
    if setup.rust:
        rust = setup.rust
        starters.append(lambda procs, ups: start_rust(procs, cores, ups, rust))
    for start in starters:
        with processes() as procs:
            sim = start_sim(procs, cores, slow)
            target = start(procs, [sim])
            result = measure_held_rss(target, plan, cores)
            results.rss[target.name] = result
            setup.log(f"rss: {target.name:12s} {result['held_mb']:.1f} MB with {result['ready']} "
                f"streams open (idle {result['idle_mb']:.1f} MB)")  # fmt: skip


# --- report -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    metric: str
    router: float | None
    direct: float | None
    rust: float | None
    naive: float | None
    ratio: str
    target: str
    met: bool | None


def _ratio(a: float | None, b: float | None, label: str) -> str:
    return f"{a / b:.2f}x {label}" if a is not None and b else "-"


def _added(results: Results, name: str, key: str) -> float | None:
    if name not in results.latency or DIRECT not in results.latency:
        return None
    return results.latency[name][key] - results.latency[DIRECT][key]


def _throughput_row(results: Results) -> Row:
    router, rust = results.best_rps(ROUTER), results.best_rps(RUST)
    met = router / rust >= TARGETS["throughput_vs_rust"] if router and rust else None
    return Row(
        "throughput, 1 core (req/s)", router, results.best_rps(DIRECT), rust,
        results.best_rps(NAIVE), _ratio(router, rust, "rust"), ">= 1.00x rust", met,
    )  # fmt: skip


def _cpu_row(results: Results) -> Row:
    router, rust = results.least_cpu(ROUTER), results.least_cpu(RUST)
    return Row(
        "proxy CPU per request (us)", router, None, rust, results.least_cpu(NAIVE),
        _ratio(router, rust, "rust"), "(informational)", None,
    )  # fmt: skip


def _latency_row(results: Results, key: str, limit: float) -> Row:
    router = _added(results, ROUTER, key)
    return Row(
        f"added latency {key[:3]} @200/s (ms)", router, results.latency.get(DIRECT, {}).get(key),
        _added(results, RUST, key), _added(results, NAIVE, key), "-", f"<= {limit:g} ms",
        None if router is None else router <= limit,
    )  # fmt: skip


def _sse_row(results: Results) -> Row:
    rate = {name: r["events_per_s"] for name, r in results.sse.items()}
    router, floor = rate.get(ROUTER), TARGETS["sse_chunks_per_s"]
    return Row(
        "SSE chunks/s through 1 process", router, rate.get(DIRECT), rate.get(RUST), None,
        _ratio(router, rate.get(RUST), "rust"), f">= {floor:,.0f}/s",
        None if router is None else router >= floor,
    )  # fmt: skip


def _rss_row(results: Results) -> Row:
    held = {name: r["held_mb"] for name, r in results.rss.items()}
    router, limit = held.get(ROUTER), TARGETS["rss_mb"]
    streams = results.rss.get(ROUTER, {}).get("ready", 0)
    met = None if router is None else router <= limit and streams >= 1000
    return Row(
        f"RSS with {streams} open streams (MB)", router, None, held.get(RUST), None,
        _ratio(router, held.get(RUST), "rust"), f"<= {limit:g} MB", met,
    )  # fmt: skip


def build_rows(results: Results) -> list[Row]:
    rows = []
    if results.throughput:
        rows.append(_throughput_row(results))
        rows.append(_cpu_row(results))
    if results.latency:
        rows.append(_latency_row(results, "p50_ms", TARGETS["added_p50_ms"]))
        rows.append(_latency_row(results, "p99_ms", TARGETS["added_p99_ms"]))
    if results.sse:
        rows.append(_sse_row(results))
    if results.rss:
        rows.append(_rss_row(results))
    return rows


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def format_table(rows: Sequence[Row]) -> str:
    head = ("metric", ROUTER, DIRECT, RUST, NAIVE, "ratio", "target", "met?")
    body = [
        (r.metric, _cell(r.router), _cell(r.direct), _cell(r.rust), _cell(r.naive), r.ratio,
         r.target, "-" if r.met is None else ("yes" if r.met else "NO"))
        for r in rows
    ]  # fmt: skip
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    lines = []
    for i, line in enumerate([head, *body]):
        cells = [line[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(line[1:5], widths[1:5], strict=True)]
        cells += [c.ljust(w) for c, w in zip(line[5:], widths[5:], strict=True)]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def notes(results: Results, setup: Setup) -> list[str]:
    meta = results.meta
    out = [
        f"mode: {meta['mode']}; {setup.cores.describe()}",
        f"load generator: {meta['loadgen_detail']}",
        "upstreams: throughput + latency use fast_upstream.py (2 processes; the sim "
        "tops out near 4k req/s on a shared core); SSE and RSS use the simulated worker "
        "(--time-scale 0 for SSE; 100 ms/token decode for RSS, where kvrouter gets "
        f"timeouts.connect: {RSS_CONNECT_TIMEOUT:g}; streams open at {RSS_RAMP_RATE}/s)",
        "direct column: the upstream without a proxy (latency rows: absolute, not added)",
    ]
    spread = []
    for name, runs in results.throughput.items():
        rates = [r["rps"] for r in runs]
        if len(rates) > 1:
            spread.append(f"{name} {min(rates):,.0f}-{max(rates):,.0f}")
    if spread:
        out.append(f"throughput is the best of {setup.plan.rounds} rounds; range: "
                   + ", ".join(spread))  # fmt: skip
    router, naive = results.best_rps(ROUTER), results.best_rps(NAIVE)
    rust = results.best_rps(RUST)
    if router and naive:
        out.append(f"kvrouter/naive {router / naive:.2f}x"
                   + (f"; naive/rust {naive / rust:.2f}x" if rust else ""))  # fmt: skip
    rust_line = meta.get("rust_command") or meta["rust_missing"]
    out.append(f"vllm-router: {rust_line}")
    out.append(f"wall time {meta['wall_seconds']:.0f}s; results in {meta['out']}")
    return out


# --- entry ------------------------------------------------------------------------------------


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
            "rust_command": _rust_display(rust),
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
