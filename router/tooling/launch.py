"""Start and stop local processes (simulated workers, routers) by PID, on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path


def _checkout_root() -> Path | None:
    """The source checkout this package runs from, or None when it is installed."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


CHECKOUT = _checkout_root()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment plus `extra`; from a checkout, children also import it first."""
    env = dict(os.environ)
    if CHECKOUT is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CHECKOUT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def pin(cpus: frozenset[int] | None) -> Callable[[], None] | None:
    """A `preexec_fn` that keeps a child on `cpus` (None: wherever the kernel likes)."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def start_process(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cpus: frozenset[int] | None = None,
    quiet: bool = True,
) -> subprocess.Popen[bytes]:
    """`argv` as a child process on `cpus`; its PID is the handle to stop it."""
    out = subprocess.DEVNULL if quiet else None
    return subprocess.Popen(
        list(argv),
        env=child_env(env),
        stdout=out,
        stderr=out,
        stdin=subprocess.DEVNULL,
        preexec_fn=pin(cpus),
    )


def start_python(
    module_args: Sequence[str], quiet: bool = True, cpus: frozenset[int] | None = None
) -> subprocess.Popen[bytes]:
    """`python -m <module_args>` with this interpreter, as a child process."""
    return start_process([sys.executable, "-m", *module_args], cpus=cpus, quiet=quiet)


def wait_http_ok(url: str, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None):
    """Poll `url` until it answers 2xx; raise if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process {proc.pid} exited with {proc.returncode} before {url} was up"
            )
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if 200 <= resp.status < 300:
                    return
        except (urllib.error.URLError, OSError) as err:
            last = err
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s (last error: {last})")


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, wait up to `grace`, then SIGKILL; always reaps the child."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def kill_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL, as a crash would."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(5)
