"""The in-memory store's caps: least recently used first, one at a time, counted and logged."""

from __future__ import annotations

import logging

from router.config import StoreSettings
from router.store import MemoryStore, make_store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Evictions:
    def __init__(self) -> None:
        self.kinds: list[str] = []

    def __call__(self, kind: str) -> None:
        self.kinds.append(kind)


async def sessions_kept(store: MemoryStore, *names: str) -> list[str]:
    return [n for n in names if (await store.read_history("t", n)).entries]


async def test_a_full_store_evicts_the_least_recently_used_history_one_at_a_time():
    store = MemoryStore(max_sessions=3)
    for name in ("a", "b", "c"):
        await store.append_history("t", name, "op", [name.encode()])
    await store.read_history("t", "a")  # a read makes "a" recent: "b" is now the oldest
    await store.append_history("t", "d", "op", [b"d"])
    assert await sessions_kept(store, "a", "c", "d") == ["a", "c", "d"]
    assert (await store.read_history("t", "b")).entries == ()


async def test_a_full_store_evicts_the_least_recently_used_pin_and_reads_refresh_it():
    store = MemoryStore(max_pins=2)
    await store.set_pin("t", "a", "w0", ttl=60)
    await store.set_pin("t", "b", "w1", ttl=60)
    assert await store.get_pin("t", "a") == "w0"
    await store.set_pin("t", "c", "w2", ttl=60)
    assert [await store.get_pin("t", s) for s in "abc"] == ["w0", None, "w2"]


async def test_evictions_are_counted_by_kind_and_logged_at_most_once_a_minute(caplog):
    clock, evicted = Clock(), Evictions()
    store = MemoryStore(clock, max_pins=1, max_sessions=1, on_evict=evicted)
    caplog.set_level(logging.WARNING, logger="kvrouter.store")
    for i in range(5):
        await store.append_history("t", f"s{i}", "op", [b"x"])
        await store.set_pin("t", f"s{i}", "w0", ttl=600)
        clock.now += 1
    assert evicted.kinds == ["history", "pin"] * 4
    lines = [r.getMessage() for r in caplog.records if "evicted" in r.getMessage()]
    assert len(lines) == 1 and "store.max_sessions" in lines[0], lines
    clock.now += 60
    await store.append_history("t", "late", "op", [b"x"])
    lines = [r.getMessage() for r in caplog.records if "evicted" in r.getMessage()]
    assert len(lines) == 2 and "4 histories" in lines[1] and "4 pins" in lines[1], lines


async def test_expired_entries_are_swept_on_insert_instead_of_evicting_live_ones():
    clock, evicted = Clock(), Evictions()
    store = MemoryStore(clock, max_pins=2, history_ttl=10, max_sessions=2, on_evict=evicted)
    for name in ("a", "b"):
        await store.append_history("t", name, "op", [b"x"])
        await store.set_pin("t", name, "w0", ttl=10)
    clock.now += 11
    for name in ("c", "d"):
        await store.append_history("t", name, "op", [b"x"])
        await store.set_pin("t", name, "w0", ttl=10)
    assert evicted.kinds == [], "expired entries made room; nothing live was evicted"
    assert await sessions_kept(store, "c", "d") == ["c", "d"]


async def test_the_caps_come_from_store_settings():
    evicted = Evictions()
    store = make_store(StoreSettings(max_sessions=2, max_pins=1), on_evict=evicted)
    for name in ("a", "b", "c"):
        await store.append_history("t", name, "op", [b"x"])
        await store.set_pin("t", name, "w0", ttl=60)
    assert sorted(evicted.kinds) == ["history", "pin", "pin"]
