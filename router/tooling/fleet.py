"""A local fleet: simulated worker processes (or real llama.cpp servers), a Redis of its own if
asked, and a router in front.

The one way the demo, the tests, the load tests and the benchmarks assemble one. Every process
listens on a free loopback port and is stopped by PID; a fleet that fails to start stops what
it had started before raising.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
import yaml
from aiohttp import web

from router.config import Settings, parse_settings
from router.tooling.engine.build import require as require_engine
from router.tooling.engine.model import TinyModel
from router.tooling.engine.model import ensure as ensure_model
from router.tooling.launch import (
    free_port,
    kill_process,
    pin,
    start_process,
    start_python,
    stop_process,
    wait_http_ok,
)

LOOPBACK = "127.0.0.1"


class RedisNotInstalled(RuntimeError):
    """No `redis-server` on PATH, so a fleet cannot have a Redis of its own."""


@dataclass(frozen=True, slots=True)
class SimSettings:
    """Simulated GPUs with a realistic timing model and a prefix cache of `cache_tokens`.

    Times are those of a real GPU; `time_scale` runs the clock faster."""

    cache_tokens: int
    prefill_ms_per_token: float = 0.3
    decode_ms_per_token: float = 25.0
    time_scale: float = 0.25
    decode_batch_penalty: float = 0.02

    def flags(self) -> list[str]:
        return [
            "--cache-tokens", str(self.cache_tokens),
            "--prefill-ms-per-token", str(self.prefill_ms_per_token),
            "--decode-ms-per-token", str(self.decode_ms_per_token),
            "--decode-batch-penalty", str(self.decode_batch_penalty),
            "--time-scale", str(self.time_scale),
        ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class LlamaSettings:
    """`llama-server` knobs for a few servers sharing a small CPU-only machine.

    `context` is the server's whole context, split evenly over its `slots` (each conversation
    holds one slot while it is answered); `cache_ram_mib` bounds the host prompt cache that
    keeps idle slots' prompts for reuse (what fills and evicts under a long run); `threads` is
    the server's compute threads, for prompt and generation alike."""

    slots: int = 4
    threads: int = 1
    context: int = 8192
    cache_ram_mib: int = 64
    batch: int = 512
    model: TinyModel = field(default_factory=TinyModel)

    def flags(self) -> list[str]:
        return [
            "--parallel", str(self.slots),
            "--threads", str(self.threads), "--threads-batch", str(self.threads),
            "--ctx-size", str(self.context),
            "--cache-ram", str(self.cache_ram_mib),
            "--batch-size", str(self.batch),
            "--metrics", "--no-webui", "--jinja",
        ]  # fmt: skip


class _OwnedProcess:
    """A child started by `start()`; stop() and kill() reap it and are no-ops once it is gone."""

    proc: subprocess.Popen[bytes] | None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period."""
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None:
            kill_process(self.proc)
            self.proc = None


@dataclass
class SimWorker(_OwnedProcess):
    """One simulated worker process; it can be stopped or killed and started again on its port."""

    name: str
    port: int
    extra: tuple[str, ...] = ()
    cpus: frozenset[int] | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def launch(self) -> None:
        """Start the process without waiting for it to answer."""
        argv = ["router.sim", "--port", str(self.port), "--name", self.name, *self.extra]
        self.proc = start_python(argv, cpus=self.cpus)

    def wait(self) -> None:
        wait_http_ok(self.url + "/health", proc=self.proc)

    def start(self) -> SimWorker:
        self.launch()
        self.wait()
        return self

    def reset_cache(self) -> None:
        """Empty the prefix cache, so a run starts cold."""
        request = urllib.request.Request(self.url + "/sim/reset-cache", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=5) as resp:
            resp.read()


@dataclass
class LlamaServer(_OwnedProcess):
    """One `llama-server` (the cached build, `router.tooling.engine.build`) serving `model`;
    it can be stopped, killed (SIGKILL) and started again on its port. `log`, when given,
    receives the server's output."""

    name: str
    port: int
    binary: Path
    model: Path
    settings: LlamaSettings
    cpus: frozenset[int] | None = None
    log: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def argv(self) -> list[str]:
        return [str(self.binary), "--model", str(self.model), "--alias", self.name,
                "--host", LOOPBACK, "--port", str(self.port), *self.settings.flags()]  # fmt: skip

    def launch(self) -> None:
        if self.log is None:
            self.proc = start_process(self.argv(), cpus=self.cpus)
            return
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=pin(self.cpus),
            )  # fmt: skip

    def wait(self) -> None:
        """Until /health answers 200 (it answers 503 while the model loads)."""
        wait_http_ok(self.url + "/health", timeout=LLAMA_START_TIMEOUT, proc=self.proc)

    def start(self) -> LlamaServer:
        self.launch()
        try:
            self.wait()
        except BaseException:
            self.kill()
            raise
        return self

    def reset_cache(self) -> None:
        """A restart: llama-server has no call that empties its host prompt cache."""
        self.stop()
        self.start()


Worker = SimWorker | LlamaServer
LLAMA_START_TIMEOUT = 60.0


@dataclass
class RedisServer(_OwnedProcess):
    """A `redis-server` of our own on a free port (no other client's traffic), by PID.

    `args` are extra config directives (later ones win), e.g. an append-only file in a
    directory of the caller's so data outlives a kill and restart."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisNotInstalled("install redis-server (apt-get install redis-server)")
        argv = [binary, "--port", str(self.port), "--bind", LOOPBACK,
                "--save", "", "--appendonly", "no", "--daemonize", "no", *self.args]  # fmt: skip
        self.proc = start_process(argv)
        try:
            _wait_redis(self.url, self.proc)
        except BaseException:
            self.kill()
            raise
        return self

    def pause(self) -> None:
        """SIGSTOP: the server stalls with its sockets open, as under a long fork or swap."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: the server runs again and serves what queued meanwhile."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


def _wait_redis(url: str, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                client.ping()
                return
            except redis.RedisError:
                if proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {proc.returncode}") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        client.close()


@dataclass
class RouterProcess:
    """`python -m router serve` on a config file written for it; stopped by PID."""

    url: str
    proc: subprocess.Popen[bytes]
    admin: str | None = None  # the operator API's base URL, when the config sets a token

    @classmethod
    def start(
        cls,
        config: Mapping[str, Any],
        directory: Path,
        *,
        ready: str = "/healthz",
        cpus: frozenset[int] | None = None,
        processes: int = 1,
    ) -> RouterProcess:
        """Start a router on `config` (which must name `listen`) and wait until `ready`
        answers: /healthz when it serves, /readyz when it also has a healthy worker.
        `processes` > 1: that many router processes on the port (`proc` is their parent)."""
        listen = str(config["listen"])
        path = directory / f"router-{listen.rpartition(':')[2]}.yaml"
        path.write_text(yaml.safe_dump(dict(config)))
        command = ["router", "serve", "--config", str(path), "--processes", str(processes)]
        proc = start_python(command, cpus=cpus)
        url = f"http://{listen}"
        try:
            wait_http_ok(url + ready, proc=proc)
        except BaseException:
            stop_process(proc)
            raise
        admin = admin_url(config) if (config.get("admin") or {}).get("token") else None
        return cls(url, proc, admin)

    @property
    def port(self) -> int:
        return int(self.url.rpartition(":")[2])

    def stop(self) -> None:
        stop_process(self.proc)


def llama_cpus() -> list[frozenset[int]]:
    """One core per server, in turn over the cores this process may use (servers share a
    core when there are more servers than cores); the router and clients are not pinned."""
    return [frozenset({cpu}) for cpu in sorted(os.sched_getaffinity(0))]


def admin_url(config: Mapping[str, Any] | Settings) -> str:
    """The base URL of the operator API of a router built from `config` (a config dict such as
    `router_config` returns, or its Settings): its own listener, `admin.listen`."""
    if isinstance(config, Settings):
        return f"http://{config.admin.listen}"
    return f"http://{config['admin']['listen']}"


def router_config(workers: Iterable[tuple[str, str]], **sections: Any) -> dict[str, Any]:
    """A router config, as a plain dict, listening on a free loopback port in front of
    `(name, url)` workers; each of `sections` sets a whole top-level section. An `admin`
    section without `listen` gets a free loopback port of its own (see `admin_url`), so
    routers with an admin API can run side by side."""
    listed = [{"url": url, "name": name} for name, url in workers]
    if "admin" in sections and "listen" not in sections["admin"]:
        sections["admin"] = {**sections["admin"], "listen": f"{LOOPBACK}:{free_port()}"}
    return {"listen": f"{LOOPBACK}:{free_port()}", "workers": listed, **sections}


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """`app` served on a free loopback port for the block; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOOPBACK, port).start()
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def router_in_process(settings: Settings) -> AsyncIterator[str]:
    """The router serving in this event loop for the duration of the block; yields its URL."""
    from router.server import running

    async with running(settings, settings.host, settings.port):
        yield f"http://{settings.host}:{settings.port}"


class LocalFleet:
    """`count` simulated workers named sim-0.. started with the same sim flags, optionally a
    Redis of its own, and router configs for them. A context manager, or start() and stop().
    `LocalFleet.llama(...)` has real llama.cpp servers instead.

    `router_defaults` are config sections every router of this fleet gets unless overridden.
    """

    def __init__(
        self,
        count: int,
        extra: Sequence[str] = (),
        *,
        own_redis: bool = False,
        router_defaults: Mapping[str, Any] | None = None,
        cpus: frozenset[int] | None = None,
    ) -> None:
        flags = tuple(extra)
        self.workers: list[Worker] = [
            SimWorker(f"sim-{i}", free_port(), flags, cpus) for i in range(count)
        ]
        self.redis = RedisServer() if own_redis else None
        self._defaults = dict(router_defaults or {})

    @classmethod
    def llama(
        cls,
        count: int,
        settings: LlamaSettings | None = None,
        *,
        own_redis: bool = False,
        router_defaults: Mapping[str, Any] | None = None,
        cpus: Sequence[frozenset[int]] | None = None,
        logs: Path | None = None,
    ) -> LocalFleet:
        """`count` llama.cpp servers named llama-0.. on the cached build and the cached tiny
        model (both made first when absent: the build takes minutes, `EngineNotBuilt` says
        how). Server i runs on `cpus[i % len(cpus)]` (default: one core each, in turn, see
        `llama_cpus`); routers get `engine: llamacpp`. `logs`: a directory for server logs."""
        settings = settings or LlamaSettings()
        engine = require_engine()
        model = ensure_model(settings.model, engine)
        layout = list(cpus) if cpus is not None else llama_cpus()
        fleet = cls(0, own_redis=own_redis,
                    router_defaults={"engine": "llamacpp", **(router_defaults or {})})  # fmt: skip
        fleet.workers = [
            LlamaServer(
                f"llama-{i}", free_port(), engine.server, model, settings,
                layout[i % len(layout)] if layout else None,
                logs / f"llama-{i}.log" if logs is not None else None,
            )
            for i in range(count)
        ]  # fmt: skip
        return fleet

    @property
    def names(self) -> list[str]:
        return [w.name for w in self.workers]

    @property
    def engine(self) -> str:
        """The engine whose metric names the workers export: llamacpp or (simulated) vllm."""
        return "llamacpp" if any(isinstance(w, LlamaServer) for w in self.workers) else "vllm"

    @property
    def urls(self) -> list[str]:
        return [w.url for w in self.workers]

    def by_name(self, name: str) -> Worker:
        return next(w for w in self.workers if w.name == name)

    def start(self) -> LocalFleet:
        try:
            if self.redis is not None:
                self.redis.start()
            for worker in self.workers:
                worker.launch()
            for worker in self.workers:
                worker.wait()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.redis is not None:
            self.redis.stop()

    def __enter__(self) -> LocalFleet:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def kill(self, index: int) -> None:
        self.workers[index].kill()

    def restart(self, index: int) -> None:
        self.workers[index].stop()
        self.workers[index].start()

    def reset_caches(self) -> None:
        """Empty every worker's prefix cache, so each run starts cold."""
        for worker in self.workers:
            worker.reset_cache()

    def config(self, **overrides: Any) -> dict[str, Any]:
        """A router config for these workers on a free port, as a plain dict; each override
        replaces a whole top-level section."""
        sections = copy.deepcopy(self._defaults)
        if self.redis is not None:
            sections["store"] = {"url": self.redis.url}
        sections.update(overrides)
        return router_config(zip(self.names, self.urls, strict=True), **sections)

    def settings(self, **overrides: Any) -> Settings:
        return parse_settings(self.config(**overrides), "local fleet", env={})

    @contextlib.contextmanager
    def router_process(self, **overrides: Any) -> Iterator[RouterProcess]:
        """A router process in front of this fleet for the duration of the block."""
        with tempfile.TemporaryDirectory(prefix="kvrouter-fleet-") as tmp:
            router = RouterProcess.start(self.config(**overrides), Path(tmp))
            try:
                yield router
            finally:
                router.stop()

    def router_in_process(self, **overrides: Any) -> contextlib.AbstractAsyncContextManager[str]:
        """The router in this event loop in front of this fleet; yields its URL."""
        return router_in_process(self.settings(**overrides))
