"""CPU per pin read on Redis: `RedisStore.get_pin` (reads of one loop turn sent as one MGET,
`router.store.coalesce`) against one redis-py `GET` per read, 64 readers at once, one run.

    python -m router.tooling.bench.pin_reads [--redis URL] [--reads N]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from router.config import StoreSettings
from router.store.redis import RedisStore

READERS = 64


async def _cpu_per_call(read: Callable[[int], Awaitable[object]], reads: int) -> float:
    async def reader(i: int) -> None:
        for _ in range(reads // READERS):
            await read(i)

    await asyncio.gather(*(reader(i) for i in range(READERS)))  # warm the pools
    started = time.process_time()
    await asyncio.gather(*(reader(i) for i in range(READERS)))
    return (time.process_time() - started) / (reads // READERS * READERS) * 1e6


async def main(url: str, reads: int) -> None:
    prefix = f"pinbench-{uuid.uuid4().hex[:8]}"
    store = RedisStore(StoreSettings(url=url, key_prefix=prefix))
    plain = aioredis.Redis.from_url(url, max_connections=64, protocol=2)
    try:
        for i in range(READERS):
            await store.set_pin("t", f"s{i}", f"w{i}", ttl=60)
        coalesced = await _cpu_per_call(lambda i: store.get_pin("t", f"s{i}"), reads)
        single = await _cpu_per_call(lambda i: plain.get(f"{prefix}:{{t:s{i}}}:pin"), reads)
    finally:
        await plain.aclose()
        await store.close()
    print(f"{'read':34s} {'CPU us per read':>16s}")
    print(f"{'redis-py GET, one per read':34s} {single:16.1f}")
    print(f"{'RedisStore.get_pin (MGET per turn)':34s} {coalesced:16.1f}")
    print(f"ratio: {coalesced / single:.2f}x ({READERS} readers, {reads} reads each way)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--reads", type=int, default=20_000)
    ns = parser.parse_args()
    asyncio.run(main(ns.redis, ns.reads))
