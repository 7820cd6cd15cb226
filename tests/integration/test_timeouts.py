"""Timeouts and failure kinds through the router, against real worker processes and sockets:
which wait each timeout bounds, what the client sees, and which failures eject a worker."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator

import pytest

from router.config import parse_settings
from tests.conftest import FAST_HEALTH, chat_body

pytestmark = pytest.mark.slow


async def set_fault(http, worker_url: str, **faults: float) -> None:
    async with http.post(worker_url + "/sim/fault", json=faults) as resp:
        assert resp.status == 200, await resp.text()


async def test_a_long_prefill_waits_for_first_byte_not_idle(sim_fleet, router_in_process, http):
    fleet = sim_fleet(1, "--time-scale", "0")
    await set_fault(http, fleet.workers[0].url, stall_seconds=0.8)
    settings = fleet.settings(timeouts={"idle": 0.3, "first_byte": 5})
    async with router_in_process(settings) as url:
        async with http.post(url + "/v1/chat/completions", json=chat_body()) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["choices"]


async def test_no_response_head_within_first_byte_is_a_504(sim_fleet, router_in_process, http):
    fleet = sim_fleet(2, "--time-scale", "0")
    for worker in fleet.workers:
        await set_fault(http, worker.url, stall_seconds=3)
    settings = fleet.settings(timeouts={"first_byte": 0.5})
    async with router_in_process(settings) as url:
        async with http.post(url + "/v1/chat/completions", json=chat_body()) as resp:
            assert resp.status == 504
            error = (await resp.json())["error"]
    assert error["code"] == "upstream_timeout" and "0.5s" in error["message"]


async def test_a_stream_silent_for_longer_than_idle_ends_with_an_error_event(
    sim_fleet, router_in_process, http
):
    fleet = sim_fleet(1, "--decode-ms-per-token", "800", "--prefill-ms-per-token", "0")
    settings = fleet.settings(timeouts={"idle": 0.3})
    async with router_in_process(settings) as url:
        body = chat_body(max_tokens=5, stream=True)
        async with http.post(url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            text = await resp.text()
    assert "event: error" in text and "upstream_timeout" in text
    assert "[DONE]" not in text


async def test_the_total_deadline_bounds_a_stream_that_keeps_talking(
    sim_fleet, router_in_process, http
):
    fleet = sim_fleet(1, "--decode-ms-per-token", "50", "--prefill-ms-per-token", "0")
    settings = fleet.settings(timeouts={"total": 1.0, "idle": 5})
    async with router_in_process(settings) as url:
        body = chat_body(max_tokens=200, stream=True)  # 10 s of tokens
        async with http.post(url + "/v1/chat/completions", json=body) as resp:
            text = await resp.text()
    assert text.count("data: {") >= 5  # tokens flowed until the deadline
    assert "event: error" in text and "upstream_timeout" in text


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A port whose accept queue is full: connecting to it times out (nothing refuses)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        filler.close()
        listener.close()


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = ",".join(sorted(line[len(name) + 1 : line.index("}")].split(",")))
            if got == wanted:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_connect_timeouts_count_toward_ejection_while_refusals_eject_at_once(
    sim_fleet, router_in_process, http, blackhole
):
    fleet = sim_fleet(2, "--time-scale", "0")
    raw = fleet.config(
        timeouts={"connect": 0.2},
        routing={"policy": "consistent_hash"},
        health={"interval": 60, "timeout": 0.3, "fall": 100, "rise": 1,
                "passive": {"consecutive_failures": 3}},
    )  # fmt: skip
    raw["workers"].append({"url": blackhole, "name": "slow-accept"})
    settings = parse_settings(raw, "test", env={})
    async with router_in_process(settings) as url:
        await asyncio.sleep(0.6)  # the first probe round is over; the next is a minute away
        fleet.by_name("sim-1").stop()  # so only live traffic can tell that it died
        served: dict[str, int] = {}
        timeouts = 0.0
        for n in range(80):
            headers = {"x-session-id": f"user-{n}"}
            async with http.post(
                url + "/v1/chat/completions", json=chat_body(), headers=headers
            ) as resp:
                assert resp.status == 200, await resp.text()  # every request is served
                worker = resp.headers["x-kvrouter-worker"]
                served[worker] = served.get(worker, 0) + 1
            async with http.get(url + "/metrics") as resp:
                text = await resp.text()
            timeouts = metric(
                text, "kvrouter_upstream_errors_total", worker="slow-accept", kind="connect_timeout"
            )
            if timeouts == 1:  # one connect timeout: still in rotation
                assert metric(text, "kvrouter_worker_healthy", worker="slow-accept") == 1
            if timeouts >= 3:
                break
        assert set(served) == {"sim-0"}
        assert metric(text, "kvrouter_upstream_errors_total", worker="sim-1", kind="connect") == 1
        assert metric(text, "kvrouter_worker_healthy", worker="sim-1") == 0
        assert timeouts == 3  # the third in a row ejected it
        assert metric(text, "kvrouter_worker_healthy", worker="slow-accept") == 0


async def test_a_client_leaving_mid_stream_is_not_logged_as_an_error(
    sim_fleet, router_in_process, http, caplog
):
    fleet = sim_fleet(1, "--decode-ms-per-token", "20", "--prefill-ms-per-token", "0")
    caplog.set_level(logging.WARNING)
    async with router_in_process(fleet.settings()) as url:
        for _ in range(3):
            body = chat_body(max_tokens=200, stream=True)
            async with http.post(url + "/v1/chat/completions", json=body) as resp:
                await resp.content.readany()
                await resp.content.readany()
                resp.close()
        async with http.post(url + "/v1/chat/completions", json=chat_body()) as resp:
            assert resp.status == 200
    noisy = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert noisy == [], [r.getMessage() for r in noisy]


async def test_a_worker_answering_500_while_its_probes_pass_is_ejected_by_live_traffic(
    sim_fleet, router_in_process, http
):
    fleet = sim_fleet(2, "--time-scale", "0")
    health = {**FAST_HEALTH, "passive": {"consecutive_failures": 2, "base_ejection": 30}}
    async with router_in_process(fleet.settings(health=health)) as url:

        async def ask() -> tuple[int, str, str | None]:
            headers = {"x-session-id": "s-500"}
            async with http.post(
                url + "/v1/chat/completions", json=chat_body(), headers=headers
            ) as resp:
                await resp.read()
                return (
                    resp.status,
                    resp.headers["x-kvrouter-worker"],
                    resp.headers.get("x-kvrouter-rehomed"),
                )

        status, home, _ = await ask()
        assert status == 200
        other = next(w.name for w in fleet.workers if w.name != home)
        await set_fault(http, fleet.by_name(home).url, error_rate=1.0, error_status=500)
        # 500 is not in retries.on_status: the client sees it; the first leaves it in rotation
        assert await ask() == (500, home, None)
        assert await ask() == (500, home, None)
        assert await ask() == (200, other, "ejected")
        async with http.get(fleet.by_name(home).url + "/health") as resp:
            assert resp.status == 200, "its probes pass: only live traffic can tell"
        async with http.get(url + "/metrics") as resp:
            text = await resp.text()
        assert metric(text, "kvrouter_worker_healthy", worker=home) == 0
        assert metric(text, "kvrouter_worker_healthy", worker=other) == 1
        async with http.get(url + "/readyz") as resp:
            assert (await resp.json())["healthy_workers"] == [other]
