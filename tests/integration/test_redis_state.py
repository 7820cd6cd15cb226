"""Server-kept history in real Redis: outages, reconnection, retried writes, and many writers
on one session from two router processes."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
import redis.asyncio as redis

from router.config import StoreSettings
from router.limits.buckets import Rule
from router.metrics import Metrics
from router.orchestrator.persist import Persister
from router.store import StoreUnavailable
from router.store import redis as redis_store
from router.store.redis import RedisStore
from tests.conftest import RedisServer, chat_body

SERVER = {"x-kvrouter-history": "server"}
OPEN = {"access": "open"}  # stored history open to every client, as on a trusted network


async def chat(http, url, session, text, *, server=True, request_id=None):
    headers = {"x-session-id": session, **(SERVER if server else {})}
    if request_id:
        headers["x-request-id"] = request_id
    async with http.post(url + "/v1/chat/completions", json=chat_body(text, 4),
                         headers=headers) as resp:  # fmt: skip
        return resp.status, orjson.loads(await resp.read())


async def wait_for(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.05)


async def test_redis_down_keeps_stateless_traffic_going_and_503s_history_until_it_returns(
    sim_fleet, router_in_process, http, own_redis: RedisServer
):
    fleet = sim_fleet(1, "--time-scale", "0")
    settings = fleet.settings(store={"url": own_redis.url, "timeout": 0.3}, history=OPEN)
    async with router_in_process(settings) as url:
        assert (await chat(http, url, "s", "before"))[0] == 200
        own_redis.kill()
        started = time.monotonic()
        assert (await chat(http, url, "s", "stateless", server=False))[0] == 200
        status, body = await chat(http, url, "s", "needs history")
        assert status == 503 and body["error"]["code"] == "store_unavailable"
        assert f"redis at 127.0.0.1:{own_redis.port}" in body["error"]["message"]
        assert (await chat(http, url, "s", "stateless", server=False))[0] == 200
        assert time.monotonic() - started < 2.0, "an outage costs requests no waiting"
        own_redis.start()

        async def served() -> bool:
            return (await chat(http, url, "s", "after"))[0] == 200

        assert await wait_for(served, timeout=5.0), "the router reconnects by itself"
        async with http.get(url + "/v1/sessions/s") as resp:
            assert resp.status == 200


async def test_a_write_that_fails_while_redis_is_down_is_retried_counted_and_lands(
    own_redis: RedisServer,
):
    store = RedisStore(StoreSettings(url=own_redis.url, timeout=0.2))
    metrics = Metrics()
    persister = Persister(store, metrics, deadline=10.0)
    try:
        own_redis.kill()
        task = persister.append("t", "s", "op-1", [b'"kept"'], op="user")
        await asyncio.sleep(0.5)
        assert not task.done()
        own_redis.start()
        assert await asyncio.wait_for(task, 10.0) is True
        assert (await store.read_history("t", "s")).entries == (b'"kept"',)
        assert metrics.persist_retries.labels("user")._value.get() >= 1
        assert metrics.persist_failures.labels("user")._value.get() == 0
    finally:
        await persister.close(1.0)
        await store.close()


async def test_a_write_given_up_after_the_deadline_is_counted_and_logged(
    own_redis: RedisServer, caplog
):
    store = RedisStore(StoreSettings(url=own_redis.url, timeout=0.2))
    metrics = Metrics()
    persister = Persister(store, metrics, deadline=0.5)
    own_redis.kill()
    try:
        assert await persister.append("t", "s", "op-1", [b'"x"'], op="reply") is False
    finally:
        await store.close()
    assert metrics.persist_failures.labels("reply")._value.get() == 1
    assert "lost after retrying" in caplog.text


async def stalled(redis: RedisServer, call, seconds: float = 0.4) -> None:
    """`call` fails while Redis is stopped for `seconds`; then Redis runs what queued."""
    redis.pause()
    try:
        with pytest.raises(StoreUnavailable):
            await call()
        await asyncio.sleep(seconds)
    finally:
        redis.resume()
    await asyncio.sleep(0.3)


async def entries_in(redis: RedisServer) -> tuple[bytes, ...]:
    check = RedisStore(StoreSettings(url=redis.url, timeout=1.0))
    try:
        return (await check.read_history("t", "s")).entries
    finally:
        await check.close()


async def test_a_turn_write_queued_behind_a_stall_does_nothing_when_redis_resumes(
    own_redis: RedisServer,
):
    store = RedisStore(StoreSettings(url=own_redis.url, timeout=0.2))
    try:
        await store.read_and_append_history("t", "s", "r1:user", [b'"one"'])
        await stalled(own_redis, lambda: store.read_and_append_history(
            "t", "s", "r2:user", [b'"two"']))  # fmt: skip
        assert await entries_in(own_redis) == (b'"one"',)
    finally:
        await store.close()


async def test_a_discard_queued_behind_a_stall_does_nothing_when_redis_resumes(
    own_redis: RedisServer,
):
    store = RedisStore(StoreSettings(url=own_redis.url, timeout=0.2))
    try:
        await store.read_and_append_history("t", "s", "r1:user", [b'"one"'])
        await stalled(own_redis, lambda: store.discard_turn("t", "s", "r1:user"))
        assert await entries_in(own_redis) == (b'"one"',), "a retry may have reused it since"
    finally:
        await store.close()


async def test_a_burst_right_after_a_restart_finds_no_stale_connection(own_redis: RedisServer):
    store = RedisStore(StoreSettings(url=own_redis.url, timeout=0.5))

    async def burst(tag: str) -> list[BaseException]:
        results = await asyncio.gather(
            *(store.read_and_append_history("t", f"s{i}", f"{tag}-{i}:user", [b'"x"'])
              for i in range(12)),
            return_exceptions=True,
        )  # fmt: skip
        return [r for r in results if isinstance(r, BaseException)]

    try:
        assert await burst("warm") == []  # twelve pooled connections
        own_redis.kill()
        own_redis.start()  # returns once PING succeeds
        assert await burst("after") == []
    finally:
        await store.close()


async def test_a_redis_clock_ahead_of_the_routers_is_allowed_for_without_losing_a_write(
    own_redis: RedisServer, monkeypatch, caplog
):
    monkeypatch.setattr(redis_store, "_wall_ms", lambda: int(time.time() * 1000) - 10_000)
    store = RedisStore(StoreSettings(url=own_redis.url, timeout=0.2))
    try:
        await store.read_and_append_history("t", "s", "r1:user", [b'"one"'])
        await store.read_and_append_history("t", "s", "r2:user", [b'"two"'])
        assert (await store.read_history("t", "s")).entries == (b'"one"', b'"two"')
    finally:
        await store.close()
    warned = [r for r in caplog.records if "ahead of this router" in r.getMessage()]
    assert len(warned) == 1, caplog.text


@pytest.mark.slow
async def test_racing_turns_through_two_routers_are_each_stored_once_in_arrival_order(
    sim_fleet, router_process, http, shared_redis_url, redis_prefix
):
    fleet = sim_fleet(2, "--time-scale", "0")
    store = {"url": shared_redis_url, "key_prefix": redis_prefix}
    urls = [router_process(fleet.config(store=store, history=OPEN))[0] for _ in range(2)]
    writers, turns = 8, 6

    async def writer(index: int) -> None:
        url = urls[index % 2]
        for turn in range(turns):
            status, _ = await chat(http, url, "race", f"w{index} t{turn}",
                                   request_id=f"w{index}-t{turn}")  # fmt: skip
            assert status == 200

    await asyncio.gather(*(writer(i) for i in range(writers)))

    async def complete():
        async with http.get(urls[0] + "/v1/sessions/race") as resp:
            document = await resp.json()
        done = sum(t["complete"] for t in document["turns"])
        return document if done == writers * turns else None

    document = await wait_for(complete)
    assert document, "every reply was stored"
    users = [m["content"] for m in document["messages"] if m["role"] == "user"]
    assert sorted(users) == sorted(f"w{i} t{t}" for i in range(writers) for t in range(turns))
    for i in range(writers):
        mine = [u for u in users if u.startswith(f"w{i} ")]
        assert mine == [f"w{i} t{t}" for t in range(turns)], "each writer's turns in order"
    for turn in document["turns"]:
        roles = [m["role"] for m in turn["messages"]]
        assert roles == ["user", "assistant"], turn
    assert (await chat(http, urls[1], "race", "w0 t0", request_id="w0-t0"))[0] == 200
    await asyncio.sleep(0.2)
    async with http.get(urls[1] + "/v1/sessions/race") as resp:
        again = await resp.json()
    assert len(again["messages"]) == len(document["messages"]), "a replayed request id is a no-op"


async def test_two_routers_on_one_redis_count_a_tenants_requests_together(
    shared_redis_url, redis_prefix
):
    settings = StoreSettings(url=shared_redis_url, key_prefix=redis_prefix)
    first, second = RedisStore(settings), RedisStore(settings)
    rule = Rule(requests=4)
    try:
        refused = []
        for store in (first, second, first, second, first, second):
            refused.append((await store.take_rate("acme", rule, 1, 0)).refused)
        assert refused == [None, None, None, None, "requests", "requests"]
        client = redis.Redis.from_url(shared_redis_url)
        try:
            ttl = await client.pttl(f"{redis_prefix}:{{acme}}:rate")
        finally:
            await client.aclose()
        assert 59_000 < ttl <= 60_000, "kept until the bucket is full again, a minute"
    finally:
        await first.close()
        await second.close()
