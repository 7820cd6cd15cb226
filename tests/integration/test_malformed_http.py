"""The malformed-HTTP corpus (`tests/fixtures/malformed_http/`, one file of raw bytes per case)
replayed over real sockets against a router process. Each case is refused with a 4xx or the
connection is closed, never a 5xx; the router's log never shows a traceback; the router
serves a normal request after every case; and it only ever connects to its worker: a canary
listener named by the SSRF-shaped cases (`@CANARY@`) is never reached, and what the worker
gets is always the router's own request to it (its own Host, a path under /v1/, no
Transfer-Encoding). Cases named `served.*` are valid HTTP and are answered by the worker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from router.tooling.launch import child_env, free_port, stop_process
from tests.conftest import FAST_HEALTH
from tests.raw_http import Answer, RecordingWorker, get, send_raw

CORPUS = Path(__file__).parents[1] / "fixtures" / "malformed_http"
CASES = sorted(CORPUS.glob("*.http"))
TIMEOUT = 1.0
"""limits.header_timeout and limits.body_timeout of the router under test: the incomplete
cases are answered (or closed) within it."""

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


class Canary:
    """A listener that nothing but an SSRF would connect to."""

    def __init__(self) -> None:
        self.hits: list[bytes] = []
        self.address = b""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Canary:
        self._server = await asyncio.start_server(self._hit, "127.0.0.1", 0)
        self.address = b"127.0.0.1:%d" % self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _hit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.hits.append(await asyncio.wait_for(reader.read(200), 1))
        except (TimeoutError, ConnectionError):
            self.hits.append(b"")
        writer.transport.abort()


def start_router(config: dict, path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """`python -m router serve` on `config`, its log (at INFO) in `log_path`; stopped by PID."""
    path.write_text(yaml.safe_dump(config))
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "router", "--log-level", "INFO", "serve", "--config",
             str(path)],
            env=child_env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip


async def wait_ready(port: int, proc: subprocess.Popen[bytes], within: float = 15) -> None:
    """Until /readyz answers 200 (the worker, in this loop, passes its probes meanwhile)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the router exited"
        try:
            if (await send_raw(port, get("/readyz"), timeout=1)).status == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the router did not become ready")


def test_the_corpus_covers_every_kind_of_case():
    names = {case.stem for case in CASES}
    for kind in ("request-line-", "header-obs-fold", "header-nul-", "header-value-too-long",
                 "chunked-", "cl-and-te", "te-and-cl", "cl-duplicate-", "absolute-form-",
                 "served.host-", "served.x-forwarded-host", "path-dotdot", "body-over-limit-"):
        assert any(name.startswith(kind) for name in names), kind  # fmt: skip
    assert len(CASES) >= 60


def worker_view_problems(head: bytes, worker: RecordingWorker) -> list[str]:
    """What is wrong with a request the worker got, if anything."""
    line, *fields = head.split(b"\r\n")
    problems = []
    target = line.split(b" ")[1] if line.count(b" ") == 2 else b""
    if not target.startswith(b"/v1/") or b"/.." in target or b"/./" in target:
        problems.append(f"target {target!r}")
    hosts = [f.split(b":", 1)[1].strip() for f in fields if f.lower().startswith(b"host:")]
    if hosts != [f"127.0.0.1:{worker.port}".encode()]:
        problems.append(f"Host {hosts!r}")
    if any(f.lower().startswith(b"transfer-encoding:") for f in fields):
        problems.append("Transfer-Encoding")
    return problems


async def test_the_malformed_http_corpus_against_a_router_process(tmp_path: Path):
    started = time.monotonic()
    async with RecordingWorker() as worker, Canary() as canary:
        port = free_port()
        config = {
            "listen": f"127.0.0.1:{port}",
            "workers": [{"url": worker.url, "name": "worker-0"}],
            "health": FAST_HEALTH,
            "load": {"enabled": False},
            "session": {"tenant_header": "x-tenant"},
            "limits": {"header_timeout": TIMEOUT, "body_timeout": TIMEOUT, "max_body_bytes": 4096},
        }
        log_path = tmp_path / "router.log"
        proc = start_router(config, tmp_path / "router.yaml", log_path)
        try:
            await wait_ready(port, proc)
            failures = await replay_all(port, worker, canary)
            assert (await send_raw(port, get("/healthz"))).status == 200
        finally:
            stop_process(proc)
        log_text = log_path.read_text(errors="replace")
    elapsed = time.monotonic() - started
    assert failures == [], "\n".join(failures)
    assert canary.hits == [], canary.hits
    assert "Traceback" not in log_text and " ERROR " not in log_text, log_text[-3000:]
    refused = [line for line in log_text.splitlines() if "malformed request refused" in line]
    kinds = {line.split("malformed request refused: ")[1].split(":")[0] for line in refused}
    assert refused and len(refused) <= len(kinds) * (elapsed + 2), refused
    assert elapsed < 30, elapsed


async def replay_all(port: int, worker: RecordingWorker, canary: Canary) -> list[str]:
    """Each case, then a normal request; what went wrong, by case."""
    failures: list[str] = []
    for case in CASES:
        raw = case.read_bytes().replace(b"@CANARY@", canary.address)
        seen = len(worker.requests)
        try:
            answer = await send_raw(port, raw, timeout=TIMEOUT + 3)
        except TimeoutError:
            answer = Answer(-1)
        problems = judge(case.stem, answer, worker.requests[seen:], worker)
        control = await send_raw(port, get("/v1/chat/completions", b"x-session-id: control"))
        if control.status != 200 or control.header("x-kvrouter-worker") != "worker-0":
            problems.append(f"the next normal request got {control.status}")
        failures.extend(f"{case.stem}: {problem}" for problem in problems)
    return failures


def judge(name: str, answer: Answer, forwarded: list[bytes], worker: RecordingWorker) -> list[str]:
    problems = []
    if answer.status == -1:
        problems.append("neither answered nor closed in time")
    elif answer.status >= 500:
        problems.append(f"answered {answer.status}: {answer.body[:200]!r}")
    elif name.startswith("served."):
        if answer.status != 200 or len(forwarded) != 1:
            problems.append(f"not served by the worker: {answer.status}, {len(forwarded)} sent")
    elif not (answer.closed_silently or 400 <= answer.status < 500):
        problems.append(f"answered {answer.status}, not refused")
    elif forwarded:
        problems.append(f"forwarded to the worker: {forwarded[0][:120]!r}")
    for head in forwarded:
        problems.extend(f"the worker got {p}" for p in worker_view_problems(head, worker))
    return problems
