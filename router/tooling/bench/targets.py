"""What `kvrouter bench` puts under load: the proxies and the upstreams behind them, each started
pinned to its CPUs and stopped by PID when the phase's stack closes; and what they cost."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.tooling.fleet import LocalFleet, RouterProcess, router_config
from router.tooling.launch import free_port, start_process, stop_process, wait_http_ok

HERE = "router.tooling.bench"  # the helper programs run as its modules
RUST = "vllm-router"
NAIVE = "naive"
DIRECT = "direct"
ROUTER = "kvrouter"


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


@dataclass(frozen=True)
class Endpoint:
    """Something the load generator can send requests to; `pid` is None for the direct path."""

    name: str
    port: int
    pid: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def launch(
    stack: ExitStack,
    argv: Sequence[str],
    cpus: frozenset[int] | None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` on `cpus`; it is stopped by PID when `stack` closes (or earlier, by hand)."""
    proc = start_process(argv, env=env, cpus=cpus)
    stack.callback(stop_process, proc)
    return proc


def start_fast_upstreams(stack: ExitStack, cores: Cores, count: int = 2) -> list[Endpoint]:
    ups = []
    for i in range(count):
        port = free_port()
        argv = [sys.executable, "-m", f"{HERE}.fast_upstream", "--port", str(port),
                "--name", f"up-{i}"]  # fmt: skip
        ups.append((launch(stack, argv, cores.load), Endpoint(f"up-{i}", port)))
    for proc, up in ups:
        wait_http_ok(up.url + "/health", proc=proc)
    return [up for _, up in ups]


def start_sim(stack: ExitStack, cores: Cores, extra: Sequence[str]) -> Endpoint:
    """One simulated worker on the load generator's CPUs."""
    fleet = stack.enter_context(LocalFleet(1, extra, cpus=cores.load))
    worker = fleet.workers[0]
    return Endpoint(worker.name, worker.port)


def start_kvrouter(
    stack: ExitStack,
    cores: Cores,
    upstreams: Sequence[Endpoint],
    workdir: Path,
    extra: dict[str, Any] | None = None,
    *,
    processes: int = 1,
    name: str = ROUTER,
) -> Endpoint:
    """`kvrouter serve` with default settings except the workers and any `extra` sections."""
    config = router_config(((u.name, u.url) for u in upstreams), **(extra or {}))
    router = RouterProcess.start(
        config, workdir, ready="/readyz", cpus=cores.proxy, processes=processes
    )
    stack.callback(router.stop)
    return Endpoint(name, router.port, router.proc.pid)


def rust_command(binary: str, upstreams: Sequence[Endpoint], port: int, metrics_port: int):
    return [
        binary, "--worker-urls", *[u.url for u in upstreams], "--policy", "consistent_hash",
        "--host", "127.0.0.1", "--port", str(port), "--prometheus-port", str(metrics_port),
        "--log-level", "warning",
    ]  # fmt: skip


def rust_display(binary: str | None) -> str | None:
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
    stack: ExitStack, cores: Cores, upstreams: Sequence[Endpoint], binary: str
) -> Endpoint:
    port = free_port()
    argv = rust_command(binary, upstreams, port, free_port())
    proc = launch(stack, argv, cores.proxy, env={"RUST_LOG": "warn"})
    wait_http_ok(f"http://127.0.0.1:{port}/health", timeout=30.0, proc=proc)
    return Endpoint(RUST, port, proc.pid)


def start_naive(stack: ExitStack, cores: Cores, upstreams: Sequence[Endpoint]) -> Endpoint:
    port = free_port()
    argv = [sys.executable, "-m", f"{HERE}.naive_proxy", "--port", str(port)]
    for up in upstreams:
        argv += ["--upstream", up.url]
    proc = launch(stack, argv, cores.proxy)
    wait_http_ok(f"http://127.0.0.1:{port}/health", proc=proc)
    return Endpoint(NAIVE, port, proc.pid)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process, and every process under it still running (the
    children of a `--processes N` router), have used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(child) for child in child_pids(pid))


def child_pids(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
