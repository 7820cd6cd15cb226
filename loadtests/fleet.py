"""Simulated workers and router processes for the benchmarks, started and stopped by PID."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from router.tooling.launch import (
    free_port,
    kill_process,
    start_python,
    start_sim_worker,
    stop_process,
    wait_http_ok,
)


@dataclass(frozen=True, slots=True)
class SimSettings:
    """The simulated GPUs: a realistic timing model and a prefix cache that cannot hold every
    session. Times are those of a real GPU; `time_scale` runs the clock faster."""

    cache_tokens: int
    prefill_ms_per_token: float = 0.3
    decode_ms_per_token: float = 25.0
    time_scale: float = 0.25

    def flags(self) -> list[str]:
        return [
            "--cache-tokens", str(self.cache_tokens),
            "--prefill-ms-per-token", str(self.prefill_ms_per_token),
            "--decode-ms-per-token", str(self.decode_ms_per_token),
            "--time-scale", str(self.time_scale),
        ]  # fmt: skip


@dataclass
class Fleet:
    """`count` simulated workers named sim-0..; each can be killed and started again."""

    settings: SimSettings
    count: int
    ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes] | None] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [f"sim-{i}" for i in range(self.count)]

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    def start(self) -> Fleet:
        self.ports = [free_port() for _ in range(self.count)]
        self.procs = [None] * self.count
        for i in range(self.count):
            self.procs[i] = start_sim_worker(self.names[i], self.ports[i], self.settings.flags())
        for i in range(self.count):
            wait_http_ok(self.urls[i] + "/health", proc=self.procs[i])
        return self

    def kill(self, index: int) -> None:
        proc = self.procs[index]
        if proc is not None:
            kill_process(proc)
            self.procs[index] = None

    def restart(self, index: int) -> None:
        proc = start_sim_worker(self.names[index], self.ports[index], self.settings.flags())
        self.procs[index] = proc
        wait_http_ok(self.urls[index] + "/health", proc=proc)

    def reset_caches(self) -> None:
        import urllib.request

        for url in self.urls:
            request = urllib.request.Request(url + "/sim/reset-cache", method="POST", data=b"")
            with urllib.request.urlopen(request, timeout=5) as resp:
                resp.read()

    def stop(self) -> None:
        for proc in self.procs:
            if proc is not None:
                stop_process(proc)
        self.procs = []


@contextlib.contextmanager
def running_fleet(settings: SimSettings, count: int) -> Iterator[Fleet]:
    fleet = Fleet(settings, count)
    try:
        yield fleet.start()
    finally:
        fleet.stop()


@contextlib.contextmanager
def running_router(
    fleet: Fleet, routing: dict[str, Any], extra: dict[str, Any] | None = None
) -> Iterator[str]:
    """A router process in front of `fleet` with `routing` settings; yields its URL."""
    port = free_port()
    config = {
        "listen": f"127.0.0.1:{port}",
        "workers": [{"url": u, "name": n} for u, n in zip(fleet.urls, fleet.names, strict=True)],
        "routing": routing,
        "shutdown_grace": 2,
        **(extra or {}),
    }
    with tempfile.TemporaryDirectory(prefix="kvrouter-bench-") as tmp:
        path = Path(tmp) / "router.yaml"
        path.write_text(yaml.safe_dump(config))
        proc = start_python(["router", "serve", "--config", str(path)])
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http_ok(url + "/healthz", proc=proc)
            yield url
        finally:
            stop_process(proc)
