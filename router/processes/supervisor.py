"""The parent of a `--processes N` router: starts the children, relays the leader's messages,
forwards signals, restarts a child that dies, and drains them all on SIGTERM.

Each child is a fresh interpreter (`python -m router serve --child ...`), not a fork: it imports
prometheus-client with `PROMETHEUS_MULTIPROC_DIR` already set, which is how the library's
multiprocess mode must start, and it inherits no event loop or thread from the parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import multiprocess

from router.config import Settings, per_process_state
from router.errors import ConfigError
from router.metrics import MULTIPROC_ENV
from router.processes.channel import Line
from router.processes.role import LEADER, ProcessRole

log = logging.getLogger("kvrouter.processes")

RESTART_BACKOFF = (0.5, 30.0)  # first and longest wait before a dead child is started again
STOP_MARGIN = 10.0  # past shutdown_grace, a child still running is killed


def check_processes(settings: Settings, count: int, port: int) -> None:
    """Refuse what several processes cannot do; a ConfigError says why."""
    if count < 1:
        raise ConfigError(f"--processes must be at least 1, got {count}")
    if count == 1:
        return
    if port == 0:
        raise ConfigError("--processes > 1 needs a fixed port (listen), not port 0")
    local = per_process_state(settings)
    if local:
        raise ConfigError(
            f"--processes {count} without a shared store (store.url): each process would keep "
            f"its own {', '.join(local)} state, so turns of one session would disagree about "
            "where its cache is (and each its own count of a tenant's requests). Set store.url "
            "to a Redis, or turn off routing.pins.enabled and history.enabled and remove the "
            "rate limits under limits.tenants."
        )


@dataclass
class Child:
    """One child process and the supervisor's end of its channel."""

    index: int
    process: asyncio.subprocess.Process | None = None
    line: Line | None = None
    starts: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class Supervisor:
    def __init__(
        self, settings: Settings, config_path: str | Path, host: str, port: int, count: int
    ) -> None:
        self._settings = settings
        self._config = str(config_path)
        self._listen = f"{host}:{port}"
        self._children = [Child(i) for i in range(count)]
        self._stopping = asyncio.Event()
        self._metrics_dir = tempfile.mkdtemp(prefix="kvrouter-metrics-")

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._signal_children, signal.SIGHUP)
        try:
            for child in self._children:
                await self._start(child)
            keepers = [loop.create_task(self._keep(child)) for child in self._children]
            await self._stopping.wait()
            log.warning("stopping: draining %d router processes", len(self._children))
            for task in keepers:
                task.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
            await self._stop_children()
        finally:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        return 0

    async def _start(self, child: Child) -> None:
        ours, theirs = socket.socketpair()
        role = ProcessRole(child.index, len(self._children), theirs.fileno(), self._metrics_dir)
        env = {**os.environ, MULTIPROC_ENV: self._metrics_dir}
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        child.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router", "--log-level", str(level), "serve",
            "--config", self._config, "--listen", self._listen, "--child", role.argument(),
            pass_fds=(theirs.fileno(),), env=env,
        )  # fmt: skip
        theirs.close()
        child.starts += 1
        child.line = await Line.open(ours)
        if child.index == LEADER:
            child.tasks.append(asyncio.get_running_loop().create_task(self._relay(child.line)))

    async def _relay(self, leader: Line) -> None:
        """Copy every line the leader sends to every other child."""
        while (line := await leader.read()) is not None:
            for child in self._children[1:]:
                if child.line is not None:
                    child.line.write(line)

    async def _keep(self, child: Child) -> None:
        """Start `child` again whenever it exits, with backoff while it keeps failing."""
        wait = RESTART_BACKOFF[0]
        while True:
            assert child.process is not None
            code = await child.process.wait()
            self._forget(child)
            log.error("router process %d (pid %d) exited with %s; starting it again in %.1fs",
                      child.index + 1, child.process.pid, code, wait)  # fmt: skip
            await asyncio.sleep(wait)
            wait = min(wait * 2, RESTART_BACKOFF[1])
            await self._start(child)

    def _forget(self, child: Child) -> None:
        """A child is gone: its live gauges leave /metrics, its channel closes."""
        assert child.process is not None
        multiprocess.mark_process_dead(child.process.pid, self._metrics_dir)
        for task in child.tasks:
            task.cancel()
        child.tasks.clear()
        if child.line is not None:
            child.line.close()
            child.line = None

    def _signal_children(self, sig: int) -> None:
        for child in self._children:
            if child.process is not None and child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(sig)

    async def _stop_children(self) -> None:
        """SIGTERM every child (each drains within shutdown_grace); kill what outlives that."""
        self._signal_children(signal.SIGTERM)
        running = [c.process for c in self._children if c.process is not None]
        waits = [asyncio.ensure_future(p.wait()) for p in running]
        _done, late = await asyncio.wait(
            waits, timeout=self._settings.shutdown_grace + STOP_MARGIN
        )
        if late:
            log.error("%d router processes did not drain in time: killing them", len(late))
            self._signal_children(signal.SIGKILL)
            await asyncio.gather(*late, return_exceptions=True)
        for child in self._children:
            self._forget(child)


def run_processes(
    settings: Settings, config_path: str | Path, host: str, port: int, count: int
) -> int:
    from router.server import install_fast_loop

    install_fast_loop()
    supervisor = Supervisor(settings, config_path, host, port, count)
    return asyncio.run(supervisor.run())
