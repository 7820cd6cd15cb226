"""The ring's own hashing and walks, checked against uhashring, whose continuum it reads."""

from __future__ import annotations

import random

from uhashring import HashRing

from router.fleet.workers import Worker
from router.placement.policies.ring import Ring, key_point


def workers(count: int) -> list[Worker]:
    return [Worker(f"w{i}", f"http://10.0.0.{i}:8000") for i in range(count)]


def test_a_key_falls_where_uhashring_puts_it():
    rng = random.Random(7)
    keys = ["", "default\x1fchat-1", "tenant\x1e" + "é" * 40, "🙂 session"]
    keys += [f"t\x1fs{rng.randrange(10**9)}" for _ in range(500)]
    ring = HashRing(nodes=["a", "b"])
    assert [key_point(k) for k in keys] == [ring.hashi(k) for k in keys]


def test_a_keys_home_is_uhashrings_node_for_it():
    pool = workers(8)
    ring = Ring(pool, 160)
    reference = HashRing(nodes={w.name: {"vnodes": 160} for w in pool})
    for i in range(500):
        key = f"default\x1fs{i}"
        home = ring.home(key)
        assert home is not None and home.name == reference.get_node(key)
        assert ring.home(key) is home  # asked again (the kept last key)
        other = f"default\x1fo{i}"
        assert ring.owner(ring.start(other)).name == reference.get_node(other)
        assert ring.home(key) is home


def test_the_walk_after_the_home_is_the_full_walk_without_it():
    pool = workers(6)
    ring = Ring(pool, 40)
    for i in range(200):
        key = f"default\x1fs{i}"
        full = list(ring.walk(key))
        start = ring.start(key)
        assert ring.owner(start) is full[0]
        assert list(ring.after(start)) == full[1:]
        assert sorted(w.name for w in full) == sorted(w.name for w in pool)


def test_an_empty_ring_has_no_home_and_nothing_to_walk():
    ring = Ring([], 160)
    assert len(ring) == 0 and ring.home("k") is None and list(ring.walk("k")) == []
