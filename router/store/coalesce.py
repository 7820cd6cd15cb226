"""Reads of single keys asked for in the same turn of the event loop, sent as one `MGET`.

Every keyed request reads its session's pin before placement: one Redis round trip each. Under
load many requests reach that point in the same turn of the loop, and redis-py spends far more
CPU per command than per key (about 50 µs for a `GET`, under 10 µs a key in an `MGET` of 16,
on the development machine), so the reads of one turn are gathered and sent together when the
loop gets to them (`call_soon`): no timer, no added wait. A lone read is a one-key `MGET`.

The keys of one batch may belong to different sessions, so to different Redis Cluster slots:
this needs a single Redis (or a proxy that splits `MGET`), which is what `store.url` names.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

MAX_KEYS = 256  # per MGET; a larger batch goes out as several

Mget = Callable[[list[str]], Awaitable[list[bytes | None]]]


class CoalescedReads:
    """`await reads.get(key)`: the value of `key`, read with whatever else was asked for in
    this turn of the loop. A failed batch raises its error in every caller; a caller that gives
    up (a timeout) leaves the others waiting for the batch."""

    def __init__(self, mget: Mget) -> None:
        self._mget = mget
        self._pending: dict[str, list[asyncio.Future[bytes | None]]] = {}
        self._scheduled = False
        self._batches: set[asyncio.Task[None]] = set()

    async def get(self, key: str) -> bytes | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes | None] = loop.create_future()
        self._pending.setdefault(key, []).append(future)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        keys = list(pending)
        loop = asyncio.get_running_loop()
        for start in range(0, len(keys), MAX_KEYS):
            batch = {key: pending[key] for key in keys[start : start + MAX_KEYS]}
            task = loop.create_task(self._read(batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _read(self, batch: dict[str, list[asyncio.Future[bytes | None]]]) -> None:
        try:
            values = await self._mget(list(batch))
        except Exception as err:
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(err)
            return
        except asyncio.CancelledError:
            for futures in batch.values():
                for future in futures:
                    future.cancel()
            raise
        for futures, value in zip(batch.values(), values, strict=True):
            for future in futures:
                if not future.done():
                    future.set_result(value)

    async def close(self) -> None:
        """Wait for the batches in flight (each bounded by the store's socket timeout)."""
        if self._batches:
            await asyncio.wait(set(self._batches))
