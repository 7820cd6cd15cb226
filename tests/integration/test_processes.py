"""`kvrouter serve --processes N`: real router processes on one port, killed and signalled by
PID. One port and one /metrics for the whole router; the operator's changes and SIGHUP reach
every process; workers are probed and scraped once, not once per process; SIGTERM drains every
process; and without a shared store several processes are refused."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client.multiprocess import MultiProcessCollector

from router.processes.role import ProcessRole
from router.tooling.fleet import RouterProcess, router_config
from tests.conftest import FAST_HEALTH, chat_body, counted
from tests.raw_http import RecordingWorker
from tests.waiting import until

pytestmark = pytest.mark.slow

TOKEN = "a-long-admin-token-for-tests"
FAST_LOAD = {"interval": 0.2, "jitter": 0.0, "timeout": 0.5, "stale_after": 1.0}


def listening(url: str | None) -> bool:
    assert url is not None
    host, _, port = url.rpartition("//")[2].partition(":")
    try:
        socket.create_connection((host, int(port)), timeout=0.2).close()
    except OSError:
        return False
    return True


def children(parent: int) -> list[int]:
    text = Path(f"/proc/{parent}/task/{parent}/children").read_text()
    return [int(pid) for pid in text.split()]


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def rewrite(path: Path, config: dict[str, object]) -> None:
    path.write_text(yaml.safe_dump(config))


def role_of(pid: int) -> ProcessRole:
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return ProcessRole.parse(args[args.index(b"--child") + 1].decode())


def holds_listener(pid: int, port: int) -> bool:
    """Whether process `pid` holds a socket listening on `port` (from /proc/net/tcp)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
            inodes.add(f"socket:[{fields[9]}]")
    fds = Path(f"/proc/{pid}/fd")
    return any(os.readlink(fd) in inodes for fd in fds.iterdir() if fd.is_symlink())


def all_listening(router: RouterProcess, count: int = 2) -> bool:
    """Whether the router has `count` children and every one of them accepts on its port."""
    pids = children(router.proc.pid)
    try:
        return len(pids) == count and all(holds_listener(pid, router.port) for pid in pids)
    except FileNotFoundError:  # a child exiting as we look
        return False


def served_by(pid: int, name: str = "kvrouter_requests_total") -> float:
    """What one child counted itself, read from its own value file (none: it counted nothing)."""
    role = role_of(pid)
    file = Path(role.metrics_dir) / f"counter_{pid}.db"
    if not file.exists():
        return 0.0
    files = [str(file)]
    return sum(
        sample.value
        for family in MultiProcessCollector.merge(files)
        for sample in family.samples
        if sample.name == name
    )


async def fresh_connection_turns(url: str, sessions: list[str]) -> list[dict[str, str]]:
    """One turn per session, each on a new connection (so the kernel spreads them)."""
    results = []
    for session in sessions:
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http, http.post(
            url + "/v1/chat/completions", json=chat_body(max_tokens=2),
            headers={"x-session-id": session}, timeout=aiohttp.ClientTimeout(total=20),
        ) as resp:  # fmt: skip
            await resp.read()
            results.append({"status": str(resp.status), **resp.headers})
    return results


@pytest.fixture
def shared_store(shared_redis_url: str, redis_prefix: str) -> dict[str, str]:
    return {"url": shared_redis_url, "key_prefix": redis_prefix}


async def test_one_port_and_one_metrics_view_for_every_process(
    sim_fleet, shared_store, tmp_path, http
):
    fleet = sim_fleet(2, "--time-scale", "0")
    router = RouterProcess.start(fleet.config(store=shared_store), tmp_path, processes=2)
    try:
        await until(lambda: all_listening(router), timeout=15)
        results = await fresh_connection_turns(router.url, [f"s{i}" for i in range(60)])
        assert {r["status"] for r in results} == {"200"}
        per_child = {pid: served_by(pid) for pid in children(router.proc.pid)}
        assert all(n > 0 for n in per_child.values()), per_child  # both took connections
        assert sum(per_child.values()) == 60, per_child
        for _ in range(6):  # whichever process answers the scrape, it shows the whole router
            assert await counted(http, router.url, "kvrouter_requests_total") == 60
    finally:
        router.stop()


async def test_operator_changes_and_sighup_reach_every_process(
    sim_fleet, shared_store, tmp_path, http
):
    fleet = sim_fleet(3, "--time-scale", "0")
    config = fleet.config(store=shared_store, admin={"token": TOKEN})
    router = RouterProcess.start(config, tmp_path, processes=2, ready="/readyz")
    try:
        await until(lambda: all_listening(router), timeout=15)
        # /readyz may come from either child; the admin API opens in the observing one
        await until(lambda: listening(router.admin), "the admin API listening", timeout=10)
        auth = {"authorization": f"Bearer {TOKEN}"}
        drained = fleet.names[0]
        async with http.post(f"{router.admin}/admin/workers/{drained}/drain", headers=auth) as r:
            assert r.status == 200
        await asyncio.sleep(0.2)
        after_drain = await fresh_connection_turns(router.url, [f"a{i}" for i in range(40)])
        assert drained not in {r["x-kvrouter-worker"] for r in after_drain}

        removed = fleet.names[1]
        config["workers"] = [w for w in config["workers"] if w["name"] != removed]
        rewrite(tmp_path / f"router-{router.port}.yaml", config)
        router.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(1.0)
        after_reload = await fresh_connection_turns(router.url, [f"b{i}" for i in range(40)])
        workers = Counter(r["x-kvrouter-worker"] for r in after_reload)
        assert set(workers) == {fleet.names[2]}, workers
    finally:
        router.stop()


async def test_workers_are_probed_and_scraped_once_not_once_per_process(tmp_path):
    async with RecordingWorker() as worker:
        health = {**FAST_HEALTH, "jitter": 0.0}
        config = router_config(
            [("w0", worker.url)], health=health, load=FAST_LOAD,
            routing={"pins": {"enabled": False}}, history={"enabled": False},
        )  # fmt: skip
        router = RouterProcess.start(config, tmp_path, processes=2)
        try:
            await until(lambda: all_listening(router), timeout=15)
            await asyncio.sleep(1.0)  # both started and settled
            before = Counter(line.split()[1] for line in worker.probes)
            await asyncio.sleep(3.0)
            seen = Counter(line.split()[1] for line in worker.probes) - before
        finally:
            router.stop()
    # one prober at 0.2 s makes about 15 of each in 3 s; one per process would make 30
    assert 10 <= seen[b"/health"] <= 20, seen
    assert 10 <= seen[b"/metrics"] <= 20, seen


async def test_a_follower_acts_on_the_leaders_probes(sim_fleet, shared_store, tmp_path, http):
    """No process but the leader probes; when a worker dies, the others stop sending to it
    from the leader's probes alone (passive ejection is set out of reach)."""
    fleet = sim_fleet(2, "--time-scale", "0")
    health = {**FAST_HEALTH, "passive": {"consecutive_failures": 1000}}
    router = RouterProcess.start(
        fleet.config(store=shared_store, health=health), tmp_path, processes=2, ready="/readyz"
    )
    try:
        await until(lambda: all_listening(router), timeout=15)
        fleet.kill(0)
        await asyncio.sleep(1.5)  # the leader's probes have marked it down (fall 2 at 0.2 s)
        before = await counted(http, router.url, "kvrouter_upstream_errors_total")
        results = await fresh_connection_turns(router.url, [f"k{i}" for i in range(40)])
        after = await counted(http, router.url, "kvrouter_upstream_errors_total")
    finally:
        router.stop()
    assert {r["x-kvrouter-worker"] for r in results} == {fleet.names[1]}
    assert after == before, "a process tried the dead worker: it did not know it was down"


async def test_sigterm_drains_every_process(sim_fleet, shared_store, tmp_path):
    fleet = sim_fleet(1, "--decode-ms-per-token", "100", "--time-scale", "1")
    router = RouterProcess.start(fleet.config(store=shared_store), tmp_path, processes=2)
    await until(lambda: all_listening(router), timeout=15)
    pids = children(router.proc.pid)

    async def stream(i: int) -> bytes:
        connector = aiohttp.TCPConnector(force_close=True)
        body = chat_body(max_tokens=15, stream=True)
        async with aiohttp.ClientSession(connector=connector) as http, http.post(
            router.url + "/v1/chat/completions", json=body, headers={"x-session-id": f"d{i}"},
        ) as resp:  # fmt: skip
            return await resp.read()

    streams = [asyncio.create_task(stream(i)) for i in range(8)]
    await asyncio.sleep(0.5)  # all streaming
    router.proc.send_signal(signal.SIGTERM)
    bodies = await asyncio.gather(*streams)
    code = await asyncio.to_thread(router.proc.wait, 30)
    assert code == 0
    assert all(body.rstrip().endswith(b"data: [DONE]") for body in bodies), bodies
    assert not any(alive(pid) for pid in pids)


def test_several_processes_without_a_shared_store_are_refused(tmp_path):
    config = router_config([("w0", "http://127.0.0.1:9")])
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "router", "serve", "--config", str(path), "--processes", "2"]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2
    assert "store.url" in refused.stderr and "routing.pins.enabled" in refused.stderr
    assert "history.enabled" in refused.stderr

    # with pins and history off, a tenant's rate counts are still per process
    config.update(routing={"pins": {"enabled": False}}, history={"enabled": False},
                  limits={"tenants": {"default": {"requests_per_minute": 60}}})  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    limited = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert limited.returncode == 2 and "limits.tenants" in limited.stderr, limited.stderr


async def test_a_killed_child_is_started_again_and_an_orphan_stops(
    sim_fleet, shared_store, tmp_path
):
    fleet = sim_fleet(1, "--time-scale", "0")
    router = RouterProcess.start(fleet.config(store=shared_store), tmp_path, processes=2)
    try:
        await until(lambda: all_listening(router), timeout=15)
        first = children(router.proc.pid)
        os.kill(first[1], signal.SIGKILL)
        await until(lambda: len(set(children(router.proc.pid)) - set(first)) == 1, timeout=10)
        results = await fresh_connection_turns(router.url, [f"r{i}" for i in range(20)])
        assert {r["status"] for r in results} == {"200"}

        survivors = children(router.proc.pid)
        router.proc.kill()  # the supervisor dies without a word: its children must not linger
        router.proc.wait(5)
        await until(lambda: not any(alive(pid) for pid in survivors), timeout=15)
    finally:
        router.stop()
