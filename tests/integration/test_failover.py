"""Affinity and failover with real processes: workers are killed with SIGKILL under load."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter

import aiohttp
import pytest

from router.tooling.launch import kill_process
from tests.conftest import FAST_HEALTH, SimFleet, chat_body

pytestmark = pytest.mark.slow

# Plain consistent hashing: every worker up means every session on its ring home, whatever
# the load; a returning worker takes its own sessions back at once.
CONSISTENT = {
    "policy": "consistent_hash",
    "pins": {"return_home": "when_healthy"},
    "slow_start": {"window": 0},
}


async def ask(http: aiohttp.ClientSession, url: str, session: str) -> tuple[int, str, str]:
    headers = {"x-session-id": session}
    async with http.post(url + "/v1/chat/completions", json=chat_body(), headers=headers) as resp:
        await resp.read()
        return (
            resp.status,
            resp.headers.get("x-kvrouter-worker", ""),
            resp.headers.get("x-kvrouter-route", ""),
        )


async def placement(http, url: str, sessions: list[str]) -> dict[str, str]:
    results = await asyncio.gather(*(ask(http, url, s) for s in sessions))
    assert all(status == 200 for status, _, _ in results)
    return {s: worker for s, (_, worker, _) in zip(sessions, results, strict=True)}


async def wait_ready_workers(http, url: str, expected: set[str], timeout: float = 10.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        async with http.get(url + "/readyz") as resp:
            body = await resp.json()
        if set(body["healthy_workers"]) == expected:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"healthy workers never became {expected}; last {body}")


async def test_every_turn_of_500_sessions_lands_on_one_worker(sim_fleet, router_process, http):
    fleet = sim_fleet(4, "--time-scale", "0")
    url, _ = router_process(fleet.config(routing=CONSISTENT))
    sessions = [f"chat-{i}" for i in range(500)]
    seen: dict[str, set[str]] = {s: set() for s in sessions}
    for _ in range(3):
        for session, worker in (await placement(http, url, sessions)).items():
            seen[session].add(worker)
    assert all(len(workers) == 1 for workers in seen.values())
    spread = Counter(next(iter(w)) for w in seen.values())
    assert len(spread) == 4


async def steady_load(http, url, sessions, stop: asyncio.Event, log: list) -> None:
    i = 0
    while not stop.is_set():
        session = sessions[i % len(sessions)]
        i += 1
        log.append((time.monotonic(), session, *await ask(http, url, session)))


async def test_kill_9_under_load_loses_no_request_and_moves_only_dead_workers_sessions(
    sim_fleet, router_process, http
):
    fleet: SimFleet = sim_fleet(4, "--time-scale", "0.02")
    url, _ = router_process(fleet.config(routing=CONSISTENT))
    sessions = [f"user-{i}" for i in range(200)]
    before = await placement(http, url, sessions)
    victim_name = Counter(before.values()).most_common(1)[0][0]
    victim = fleet.by_name(victim_name)

    stop = asyncio.Event()
    log: list = []
    loops = [
        asyncio.create_task(steady_load(http, url, sessions[k::8], stop, log)) for k in range(8)
    ]
    await asyncio.sleep(1.0)
    kill_process(victim.proc)
    killed_at = time.monotonic()
    await asyncio.sleep(2.5)
    stop.set()
    await asyncio.gather(*loops)

    failures = [entry for entry in log if entry[2] != 200]
    assert not failures, f"{len(failures)} client-visible errors, first: {failures[:3]}"
    after_kill = [e for e in log if e[0] > killed_at + 0.05]
    moved = [e for e in after_kill if before[e[1]] == victim_name]
    assert len(after_kill) > 100 and moved, "the load kept running over the victim's sessions"
    new_home: dict[str, set[str]] = {}
    for _, session, _, worker, route in after_kill:
        if before[session] == victim_name:
            assert worker != victim_name and route in ("fallback", "affinity")
            new_home.setdefault(session, set()).add(worker)
        else:
            assert worker == before[session], f"{session} moved although its worker lived"
    # One fallback per session, then it is pinned to the worker that now holds its cache.
    assert all(len(workers) == 1 for workers in new_home.values()), new_home
    fallbacks = Counter(e[1] for e in log if e[4] == "fallback")
    assert fallbacks and max(fallbacks.values()) == 1

    victim.start()
    await wait_ready_workers(http, url, {w.name for w in fleet.workers})
    assert await placement(http, url, sessions) == before


async def test_a_dead_worker_is_noticed_within_3_seconds_with_no_traffic(
    sim_fleet, router_process, http
):
    fleet = sim_fleet(2, "--time-scale", "0")
    raw = fleet.config()
    del raw["health"]
    url, _ = router_process(raw)
    await wait_ready_workers(http, url, {"sim-0", "sim-1"})
    kill_process(fleet.workers[1].proc)
    elapsed = await wait_ready_workers(http, url, {"sim-0"}, timeout=10)
    assert elapsed <= 3.0


async def test_a_worker_failing_health_checks_is_taken_out_and_brought_back(
    sim_fleet, router_process, http
):
    fleet = sim_fleet(2, "--time-scale", "0")
    url, _ = router_process(fleet.config(health={**FAST_HEALTH, "rise": 3}))
    sick = fleet.workers[0]
    async with http.post(sick.url + "/sim/fault", json={"fail_health": True}):
        pass
    await wait_ready_workers(http, url, {"sim-1"})
    async with http.post(sick.url + "/sim/fault", json={"fail_health": False}):
        pass
    await wait_ready_workers(http, url, {"sim-0", "sim-1"})


async def test_sigterm_lets_in_flight_streams_finish_then_exits(sim_fleet, router_process, http):
    fleet = sim_fleet(1, "--decode-ms-per-token", "80", "--prefill-ms-per-token", "0")
    url, proc = router_process(fleet.config(shutdown_grace=10))
    body = chat_body(max_tokens=15, stream=True)
    async with http.post(url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        first = await resp.content.readany()
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as fresh:
                await fresh.get(url + "/healthz", timeout=aiohttp.ClientTimeout(total=2))
        rest = await resp.content.read()
    assert (first + rest).rstrip().endswith(b"data: [DONE]")
    assert await asyncio.to_thread(proc.wait, 10) == 0
