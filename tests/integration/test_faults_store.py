"""Session store faults through a real router, in orchestrator mode, one case at a time: a Redis
of the test's own (with an append-only file, so data outlives a kill) killed, stalled with
SIGSTOP, restarted, and stalled in the middle of a turn. For each: what the client saw, what was
stored, what was counted. No acknowledged turn is lost, no turn answered with an error leaves a
trace, nothing is stored twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from router.tooling.fleet import RedisNotInstalled, RedisServer
from tests.conftest import counted

SERVER = {"x-kvrouter-history": "server"}
OPEN = {"access": "open"}  # stored history open to every client, as on a trusted network
pytestmark = pytest.mark.slow

CASE_SECONDS = 12  # four cases: the file stays within a minute even if each one hangs
STORE_TIMEOUT = 0.2


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """Our own redis-server that writes every change to an append-only file before answering,
    so a kill and restart on the same port keeps what was acknowledged."""
    args = ("--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path))
    server = RedisServer(args=args)
    try:
        server.start()
    except RedisNotInstalled as err:  # fail, never skip, like the shared fixture
        pytest.fail(f"{err}; the Redis tests are never skipped", pytrace=False)
    yield server
    server.kill()  # SIGKILL ends a paused server too


def store_config(redis: RedisServer) -> dict[str, Any]:
    return {"url": redis.url, "timeout": STORE_TIMEOUT}


async def say(http, url: str, session: str, text: str, request_id: str, *, stream=False,
              max_tokens: int = 4) -> tuple[int, dict[str, Any] | bytes]:  # fmt: skip
    body = {"model": "m", "messages": [{"role": "user", "content": text}],
            "max_tokens": max_tokens, "stream": stream}  # fmt: skip
    headers = {**SERVER, "x-session-id": session, "x-request-id": request_id}
    async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
        raw = await resp.read()
        if stream and resp.status == 200:
            return resp.status, raw
        return resp.status, orjson.loads(raw)


async def turns_of(http, url: str, session: str) -> list[dict[str, Any]]:
    """The stored turns, waiting out the store's back-off after an outage."""
    deadline = time.monotonic() + 5
    while True:
        async with http.get(f"{url}/v1/sessions/{session}") as resp:
            if resp.status == 404:
                return []
            if resp.status == 200:
                return (await resp.json())["turns"]
        assert time.monotonic() < deadline, f"GET /v1/sessions/{session} kept failing"
        await asyncio.sleep(0.05)


def users(turns: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for t in turns for m in t["messages"] if m["role"] == "user"]


async def eventually(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 5.0) -> Any:
    """Poll `check` until it answers something true; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)
    return result


async def until_served(http, url: str, session: str, text: str, request_id: str) -> None:
    """The client retries (same request id) until the router has reconnected."""

    async def served() -> bool:
        return (await say(http, url, session, text, request_id))[0] == 200

    await eventually(served, "the router did not reconnect")


async def test_redis_killed_a_turn_is_refused_whole_and_its_retry_stored_once(
    sim_fleet, router_in_process, http, durable_redis
):
    fleet = sim_fleet(1, "--time-scale", "0")
    settings = fleet.settings(store=store_config(durable_redis), history=OPEN)
    async with asyncio.timeout(CASE_SECONDS), router_in_process(settings) as url:
        assert (await say(http, url, "k", "first", "k-1"))[0] == 200
        durable_redis.kill()
        status, body = await say(http, url, "k", "second", "k-2")
        assert status == 503 and body["error"]["code"] == "store_unavailable", body
        assert f"redis at 127.0.0.1:{durable_redis.port}" in body["error"]["message"]
        durable_redis.start()
        await until_served(http, url, "k", "second", "k-2")
        turns = await turns_of(http, url, "k")
        assert users(turns) == ["first", "second"], turns
        assert all(t["complete"] for t in turns), "every acknowledged turn kept its reply"
        assert await counted(http, url, "kvrouter_history_persist_failures_total", op="user") >= 1
        assert await counted(http, url, "kvrouter_history_persist_failures_total", op="reply") == 0


async def test_redis_stalled_past_the_store_timeout_leaves_no_phantom_turn(
    sim_fleet, router_in_process, http, durable_redis
):
    fleet = sim_fleet(1, "--time-scale", "0")
    settings = fleet.settings(store=store_config(durable_redis), history=OPEN)
    async with asyncio.timeout(CASE_SECONDS), router_in_process(settings) as url:
        assert (await say(http, url, "p", "first", "p-1"))[0] == 200
        durable_redis.pause()
        try:
            started = time.monotonic()
            status, body = await say(http, url, "p", "second", "p-2")
            waited = time.monotonic() - started
            await asyncio.sleep(4 * STORE_TIMEOUT - waited)  # the stall outlasts the timeout
        finally:
            durable_redis.resume()
        assert status == 503 and body["error"]["code"] == "store_unavailable", body
        assert waited < 4 * STORE_TIMEOUT, f"the client waited {waited:.2f}s"
        await asyncio.sleep(0.3)  # Redis runs what queued during the stall
        turns = await turns_of(http, url, "p")
        assert users(turns) == ["first"], f"a turn answered 503 left a trace: {turns}"
        await until_served(http, url, "p", "second", "p-2")
        turns = await turns_of(http, url, "p")
        assert users(turns) == ["first", "second"] and all(t["complete"] for t in turns), turns
        assert await counted(http, url, "kvrouter_history_persist_failures_total", op="user") >= 1


async def test_redis_restarted_the_first_burst_after_it_answers_has_no_failure(
    sim_fleet, router_in_process, http, durable_redis
):
    fleet = sim_fleet(1, "--time-scale", "0")
    settings = fleet.settings(store=store_config(durable_redis), history=OPEN)
    sessions = [f"b{i}" for i in range(12)]

    async def burst(text: str) -> list[int]:
        answers = await asyncio.gather(
            *(say(http, url, s, text, f"{s}-{text}") for s in sessions)
        )  # fmt: skip
        return [status for status, _ in answers]

    async with asyncio.timeout(CASE_SECONDS), router_in_process(settings) as url:
        assert await burst("one") == [200] * 12  # twelve pooled connections
        durable_redis.kill()
        durable_redis.start()  # returns once PING succeeds
        assert await burst("two") == [200] * 12
        for session in sessions:
            turns = await turns_of(http, url, session)
            assert users(turns) == ["one", "two"] and all(t["complete"] for t in turns), turns
        assert await counted(http, url, "kvrouter_history_persist_failures_total") == 0
        assert await counted(http, url, "kvrouter_rejected_total", code="store_unavailable") == 0


async def test_redis_stalled_mid_turn_the_answer_ends_in_bounded_time_and_the_reply_lands(
    sim_fleet, router_in_process, http, durable_redis
):
    slow = ("--time-scale", "1", "--decode-ms-per-token", "40", "--prefill-ms-per-token", "0")
    fleet = sim_fleet(1, *slow)
    settings = fleet.settings(store=store_config(durable_redis), history=OPEN)
    async with asyncio.timeout(CASE_SECONDS), router_in_process(settings) as url:
        answer = asyncio.create_task(say(http, url, "m", "first", "m-1", stream=True,
                                         max_tokens=16))  # fmt: skip
        await eventually(lambda: turns_of(http, url, "m"), "the user message was not stored")
        durable_redis.pause()
        try:
            started = time.monotonic()
            status, body = await answer
            waited = time.monotonic() - started
            await asyncio.sleep(5 * STORE_TIMEOUT)  # the reply write fails and is retried
        finally:
            durable_redis.resume()
        assert status == 200 and isinstance(body, bytes), body
        assert body.rstrip().endswith(b"data: [DONE]"), body[-200:]
        assert waited < 16 * 0.04 + 2 * STORE_TIMEOUT + 0.5, f"the answer took {waited:.2f}s"

        async def complete() -> list[dict[str, Any]] | None:
            turns = await turns_of(http, url, "m")
            return turns if turns[0]["complete"] else None

        turns = await eventually(complete, "the reply never landed")
        roles = [m["role"] for t in turns for m in t["messages"]]
        assert roles == ["user", "assistant"], turns
        assert await counted(http, url, "kvrouter_history_persist_retries_total", op="reply") >= 1
        assert await counted(http, url, "kvrouter_history_persist_failures_total") == 0
