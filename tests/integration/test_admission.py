"""Admission control end to end: a simulated worker with a batch of one, the router reading its
metrics. Once it is saturated, requests wait in the router and a light tenant's request goes
ahead of a heavy tenant's backlog; a client that leaves while waiting gives its place back; a
wait past the timeout is a 503 with Retry-After."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.conftest import chat_body, counted
from tests.waiting import until

pytestmark = pytest.mark.slow

SIM = ("--max-running", "1", "--decode-ms-per-token", "30", "--prefill-ms-per-token", "0.1")
FAST_LOAD = {"interval": 0.05, "jitter": 0.0, "timeout": 0.5, "stale_after": 1.0}
TENANT = {"tenant_header": "x-tenant"}


async def stream(http, url: str, tenant: str, tokens: int, first: dict[str, float]) -> int:
    """One streamed chat request; notes when its first byte came, returns its status."""
    body = chat_body(f"{tenant} {time.perf_counter()}", max_tokens=tokens, stream=True)
    async with http.post(url + "/v1/chat/completions", json=body,
                         headers={"x-tenant": tenant}) as resp:  # fmt: skip
        async for _ in resp.content.iter_any():
            first.setdefault(f"{tenant}-{id(body)}", time.perf_counter())
        return resp.status


async def queued(http, url: str) -> float:
    return await counted(http, url, "kvrouter_admission_queue_length")


async def test_a_light_tenants_request_goes_ahead_of_a_heavy_tenants_backlog(
    sim_fleet, router_in_process, http
):
    fleet = sim_fleet(1, *SIM)
    settings = fleet.settings(load=FAST_LOAD, session=TENANT)
    async with router_in_process(settings) as url:
        await learn_the_batch_limit(http, url)
        first: dict[str, float] = {}
        heavy = []
        for _ in range(10):
            heavy.append(asyncio.create_task(stream(http, url, "heavy", 8, first)))
            await asyncio.sleep(0.02)
        await until(lambda: len(first) >= 1, "the first heavy request running", 5)
        await asyncio.sleep(0.1)  # scraped: a batch of one with a request waiting
        assert await queued(http, url) >= 2, "the backlog waits in the router"
        light_first: dict[str, float] = {}
        light = await stream(http, url, "light", 8, light_first)
        statuses = await asyncio.gather(*heavy)
    assert light == 200 and statuses == [200] * 10
    (light_at,) = light_first.values()
    before = [at for at in first.values() if at < light_at]
    # the one running, the one waiting at the worker, heavy's turn before light's (and one
    # more when a scrape raced a request on its way): in arrival order all 10 would be
    assert len(before) <= 4, f"{len(before)} heavy requests went first"


async def test_a_client_gone_while_waiting_gives_its_place_back_and_a_long_wait_is_a_503(
    sim_fleet, router_in_process, http
):
    fleet = sim_fleet(1, *SIM)
    admission = {"admission": {"timeout": 0.6}}
    settings = fleet.settings(load=FAST_LOAD, session=TENANT, limits=admission)
    async with router_in_process(settings) as url:
        first: dict[str, float] = {}
        busy = [asyncio.create_task(stream(http, url, "heavy", 40, first)) for _ in range(2)]
        await until(lambda: len(first) >= 1, "a long request running", 5)
        await asyncio.sleep(0.15)  # scraped: saturated

        impatient = aiohttp.ClientTimeout(total=0.3)
        body = chat_body("leaving", max_tokens=4)
        with pytest.raises(TimeoutError):
            async with http.post(url + "/v1/chat/completions", json=body, timeout=impatient,
                                 headers={"x-tenant": "gone"}) as resp:  # fmt: skip
                await resp.read()
        await until_async(lambda: gone_counted(http, url), "the departure counted")
        assert await queued(http, url) == 0, "its place given back"

        started = time.monotonic()
        async with http.post(url + "/v1/chat/completions", json=body,
                             headers={"x-tenant": "late"}) as resp:  # fmt: skip
            document = await resp.json()
            assert resp.status == 503, document
            assert int(resp.headers["Retry-After"]) >= 1
        assert 0.5 < time.monotonic() - started < 1.5
        assert document["error"]["code"] == "queue_timeout"
        assert "limits.admission.timeout" in document["error"]["message"]
        timeouts = await counted(http, url, "kvrouter_limit_rejections_total",
                                 reason="queue_timeout", tenant_class="other")  # fmt: skip
        assert timeouts == 1
        assert await asyncio.gather(*busy) == [200, 200]
        assert await stream(http, url, "after", 2, {}) == 200


async def learn_the_batch_limit(http, url: str) -> None:
    """Two requests at once, so a scrape sees one running and one waiting: the router learns
    the worker's batch limit (it keeps it after they finish)."""
    await asyncio.sleep(0.1)  # first scrapes
    await asyncio.gather(*(stream(http, url, "warm-up", 8, {}) for _ in range(2)))


async def gone_counted(http, url: str) -> bool:
    found = await counted(http, url, "kvrouter_admission_wait_seconds_count", outcome="gone")
    return found == 1


async def until_async(check, what: str, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout:g}s: {what}")
        await asyncio.sleep(0.02)


async def homed(http, url: str, headers: dict[str, str], text: str) -> str:
    """The worker a short request goes to while nothing is busy: its key's home."""
    body = chat_body(text, max_tokens=1)
    async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
        await resp.read()
        assert resp.headers["x-kvrouter-route"] == "affinity"
        return resp.headers["x-kvrouter-worker"]


async def timed(http, url: str, headers: dict[str, str], text: str, tokens: int) -> str:
    body = chat_body(text, max_tokens=tokens)
    async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
        await resp.read()
        assert resp.status == 200
        return resp.headers["x-kvrouter-worker"]


async def test_a_request_without_a_session_leaves_the_queue_for_the_worker_with_room(
    sim_fleet, router_in_process, http
):
    fleet = sim_fleet(2, *SIM)
    async with router_in_process(fleet.settings(load=FAST_LOAD)) as url:
        await asyncio.sleep(0.1)
        sessions: dict[str, str] = {}
        for i in range(20):
            worker = await homed(http, url, {"x-session-id": f"s{i}"}, "hello")
            sessions.setdefault(worker, f"s{i}")
        texts: dict[str, str] = {}
        for text in (f"question number {i}" for i in range(20)):
            texts.setdefault(await homed(http, url, {}, text), text)
        assert set(sessions) == set(texts) == {"sim-0", "sim-1"}
        for worker, session in sessions.items():  # a scrape sees each batch of one full
            pair = [timed(http, url, {"x-session-id": session}, "warm", 8) for _ in range(2)]
            assert await asyncio.gather(*pair) == [worker, worker]
        long = asyncio.create_task(timed(http, url, {"x-session-id": sessions["sim-0"]}, "l", 40))
        short = asyncio.create_task(timed(http, url, {"x-session-id": sessions["sim-1"]}, "s", 8))
        await asyncio.sleep(0.15)  # both batches full, scraped
        waiting = asyncio.create_task(timed(http, url, {}, texts["sim-0"], 1))
        await until_async(lambda: queued_now(http, url), "the request waiting in the router")
        went = await waiting
        assert not long.done(), "it did not wait for its own home to free up"
        await asyncio.gather(long, short)
    assert went == "sim-1", "released when sim-1 had room, it went there, not home to sim-0"


async def queued_now(http, url: str) -> bool:
    return await queued(http, url) == 1
