"""Pin reads asked for together go to Redis as one MGET (router.store.coalesce), on a Redis of
the test's own so its command counts are the test's alone."""

from __future__ import annotations

import asyncio

import pytest
import redis

from router.config import StoreSettings
from router.store import StoreUnavailable
from router.store.coalesce import CoalescedReads
from router.store.redis import RedisStore


def commands(url: str) -> dict[str, int]:
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def test_concurrent_pin_reads_are_one_mget_each_with_its_own_answer(own_redis):
    store = RedisStore(StoreSettings(url=own_redis.url, key_prefix="co"))
    try:
        for i in range(0, 100, 2):  # every other session is pinned
            await store.set_pin("t", f"s{i}", f"w{i}", ttl=60)
        before = commands(own_redis.url)
        found = await asyncio.gather(*(store.get_pin("t", f"s{i}") for i in range(100)))
        after = commands(own_redis.url)
    finally:
        await store.close()
    assert found == [f"w{i}" if i % 2 == 0 else None for i in range(100)]
    assert after.get("mget", 0) - before.get("mget", 0) == 1
    assert after.get("get", 0) == before.get("get", 0)


async def test_a_reader_that_gives_up_leaves_the_others_their_answers(own_redis):
    store = RedisStore(StoreSettings(url=own_redis.url, key_prefix="co"))
    try:
        await store.set_pin("t", "kept", "w1", ttl=60)
        impatient = asyncio.create_task(store.get_pin("t", "kept"))
        patient = asyncio.create_task(store.get_pin("t", "kept"))
        await asyncio.sleep(0)  # both queued in this turn
        impatient.cancel()
        assert await patient == "w1"
        with pytest.raises(asyncio.CancelledError):
            await impatient
    finally:
        await store.close()


async def test_a_failed_batch_fails_every_reader_in_it():
    async def broken(keys: list[str]) -> list[bytes | None]:
        raise StoreUnavailable(f"down while reading {len(keys)} keys")

    reads = CoalescedReads(broken)
    results = await asyncio.gather(*(reads.get(f"k{i}") for i in range(5)), return_exceptions=True)
    assert [str(r) for r in results] == ["down while reading 5 keys"] * 5


async def test_a_dead_redis_reads_as_no_pin(own_redis):
    store = RedisStore(StoreSettings(url=own_redis.url, key_prefix="co", timeout=0.3))
    try:
        await store.set_pin("t", "s", "w1", ttl=60)
        own_redis.kill()
        found = await asyncio.wait_for(
            asyncio.gather(*(store.get_pin("t", "s") for _ in range(10))), timeout=5
        )
    finally:
        await store.close()
    assert found == [None] * 10
