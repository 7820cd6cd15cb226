"""The one store contract, run against the in-memory store and against a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from router.config import StoreSettings
from router.limits.buckets import Rule
from router.store import MemoryStore, SessionStore, SessionTooLarge, StoreUnavailable, make_store
from router.store.redis import RedisStore
from router.store.vectors import StoredVectors, VectorBatch, digests_of, turn_digest

TTL = 0.3


@pytest.fixture(params=["memory", "redis"])
async def store(request, shared_redis_url) -> AsyncIterator[SessionStore]:
    if request.param == "memory":
        made: SessionStore = MemoryStore(history_ttl=TTL, max_messages=6)
    else:
        prefix = request.getfixturevalue("redis_prefix")
        settings = StoreSettings(
            url=shared_redis_url, key_prefix=prefix, history_ttl=TTL, max_messages=6
        )
        made = make_store(settings)
    yield made
    await made.close()


@pytest.fixture(params=["memory", "redis"])
async def make(request, shared_redis_url) -> AsyncIterator[Callable[..., SessionStore]]:
    """Factory: `make(max_session_bytes=...)` builds the store with other limits."""
    made: list[SessionStore] = []

    def build(**limits: int) -> SessionStore:
        if request.param == "memory":
            store: SessionStore = MemoryStore(history_ttl=TTL, max_messages=6, **limits)
        else:
            prefix = request.getfixturevalue("redis_prefix")
            settings = StoreSettings(
                url=shared_redis_url, key_prefix=prefix, history_ttl=TTL, max_messages=6, **limits
            )
            store = make_store(settings)
        made.append(store)
        return store

    yield build
    for store in made:
        await store.close()


def entry(text: str) -> bytes:
    return f'"{text}"'.encode()


async def test_a_pin_is_read_back_until_it_expires_or_is_deleted(store):
    assert await store.get_pin("t", "s") is None
    await store.set_pin("t", "s", "sim-1", ttl=0.2)
    assert await store.get_pin("t", "s") == "sim-1"
    await asyncio.sleep(0.3)
    assert await store.get_pin("t", "s") is None
    await store.set_pin("t", "s", "sim-2", ttl=5)
    await store.delete_pin("t", "s")
    assert await store.get_pin("t", "s") is None


async def test_an_unknown_session_has_an_empty_history(store):
    stored = await store.read_history("t", "nobody")
    assert stored.entries == () and stored.summary is None and stored.summary_through == -1


async def test_appends_are_kept_in_arrival_order_with_absolute_counts(store):
    assert await store.append_history("t", "s", "op1", [entry("a"), entry("b")]) == 2
    assert await store.append_history("t", "s", "op2", [entry("c")]) == 3
    stored = await store.read_history("t", "s")
    assert stored.entries == (entry("a"), entry("b"), entry("c"))
    assert stored.first_index == 0


async def test_an_append_retried_with_the_same_op_id_is_stored_once(store):
    await store.append_history("t", "s", "op1", [entry("a")])
    assert await store.append_history("t", "s", "op1", [entry("a")]) == 1
    assert (await store.read_history("t", "s")).entries == (entry("a"),)


async def test_one_tenant_never_reads_or_extends_another_tenants_session(store):
    await store.append_history("acme", "s", "op1", [entry("acme")])
    await store.append_history("globex", "s", "op1", [entry("globex")])
    await store.set_pin("acme", "s", "sim-1", ttl=5)
    assert (await store.read_history("acme", "s")).entries == (entry("acme"),)
    assert (await store.read_history("globex", "s")).entries == (entry("globex"),)
    assert await store.get_pin("globex", "s") is None


async def test_separators_in_tenant_or_session_cannot_forge_another_key(store):
    await store.append_history("a:b", "c", "op", [entry("first")])
    await store.append_history("a", "b:c", "op", [entry("second")])
    await store.append_history("a}", "{b", "op", [entry("third")])
    assert (await store.read_history("a:b", "c")).entries == (entry("first"),)
    assert (await store.read_history("a", "b:c")).entries == (entry("second"),)
    assert (await store.read_history("a}", "{b")).entries == (entry("third"),)


async def test_history_expires_after_its_ttl_and_each_append_refreshes_it(store):
    await store.append_history("t", "s", "op1", [entry("a")])
    await asyncio.sleep(TTL * 0.6)
    await store.append_history("t", "s", "op2", [entry("b")])
    await asyncio.sleep(TTL * 0.6)
    assert len((await store.read_history("t", "s")).entries) == 2
    await asyncio.sleep(TTL * 1.2)
    assert (await store.read_history("t", "s")).entries == ()


async def test_the_size_cap_drops_the_oldest_entries_and_keeps_indexes_absolute(store):
    for i in range(4):
        await store.append_history("t", "s", f"op{i}", [entry(f"u{i}"), entry(f"a{i}")])
    stored = await store.read_history("t", "s")
    assert stored.entries == tuple(entry(x) for x in ("u1", "a1", "u2", "a2", "u3", "a3"))
    assert stored.first_index == 2


async def test_a_summary_is_stored_only_if_it_reaches_further(store):
    assert not await store.set_summary("t", "s", b"s0", 1), "no session, no summary"
    await store.append_history("t", "s", "op", [entry(x) for x in "abcd"])
    assert await store.set_summary("t", "s", b"through 2", 2)
    assert not await store.set_summary("t", "s", b"older", 1)
    stored = await store.read_history("t", "s")
    assert (stored.summary, stored.summary_through) == (b"through 2", 2)


async def test_forget_drops_history_summary_and_pin(store):
    await store.append_history("t", "s", "op", [entry("a")])
    await store.set_summary("t", "s", b"sum", 0)
    await store.set_pin("t", "s", "sim-0", ttl=5)
    assert await store.forget("t", "s")
    assert await store.read_history("t", "s") == type(await store.read_history("t", "x"))()
    assert await store.get_pin("t", "s") is None
    assert not await store.forget("t", "s")


async def test_concurrent_appends_with_retries_store_every_op_exactly_once(store):
    ops = [f"op{i}" for i in range(3)]
    calls = [store.append_history("t", "s", op, [entry(op)]) for op in ops for _ in range(5)]
    await asyncio.gather(*calls)
    stored = await store.read_history("t", "s")
    assert sorted(stored.entries) == sorted(entry(op) for op in ops)


async def test_an_unreachable_redis_fails_fast_naming_itself_and_pins_degrade(unused_port):
    store = RedisStore(StoreSettings(url=f"redis://127.0.0.1:{unused_port}/0", timeout=0.3))
    try:
        with pytest.raises(StoreUnavailable, match=rf"redis at 127\.0\.0\.1:{unused_port}"):
            await store.read_history("t", "s")
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(StoreUnavailable):
            await store.append_history("t", "s", "op", [entry("a")])
        assert await store.get_pin("t", "s") is None
        await store.set_pin("t", "s", "sim-0", ttl=1)
        assert loop.time() - started < 0.1, "fails fast while backing off"
    finally:
        await store.close()


@pytest.fixture
def unused_port() -> int:
    from router.tooling.launch import free_port

    return free_port()


async def test_read_and_append_returns_the_history_before_its_own_append(store):
    await store.append_history("t", "s", "op1", [entry("a")])
    before = await store.read_and_append_history("t", "s", "op2", [entry("b"), entry("c")])
    assert before.entries == (entry("a"),)
    assert (await store.read_history("t", "s")).entries == (entry("a"), entry("b"), entry("c"))
    again = await store.read_and_append_history("t", "s", "op2", [entry("b"), entry("c")])
    assert len(again.entries) == 3, "a retried op appends nothing"
    assert len((await store.read_history("t", "s")).entries) == 3


async def test_an_append_past_max_session_bytes_is_refused_whole_naming_the_limit(make):
    store = make(max_session_bytes=100)  # each entry counts its bytes and one separator
    await store.append_history("t", "s", "op1", [b"x" * 39, b"y" * 39])
    with pytest.raises(SessionTooLarge, match=r"store\.max_session_bytes \(100\)") as refused:
        await store.read_and_append_history("t", "s", "op2", [b"z" * 10, b"w" * 10])
    assert "80" in str(refused.value) and "22" in str(refused.value), str(refused.value)
    assert (await store.read_history("t", "s")).entries == (b"x" * 39, b"y" * 39)
    with pytest.raises(SessionTooLarge):
        await store.append_history("t", "s", "op2", [b"z" * 10, b"w" * 10])
    assert await store.append_history("t", "s", "op3", [b"z" * 19]) == 3, "up to the limit fits"
    with pytest.raises(SessionTooLarge):
        await store.append_history("t", "s", "op4", [b""])
    with pytest.raises(SessionTooLarge):  # a new session too
        await store.append_history("t", "new", "op", [b"n" * 100])


async def test_a_summary_counts_against_max_session_bytes(make):
    store = make(max_session_bytes=100)
    await store.append_history("t", "s", "op1", [b"x" * 29, b"y" * 29])
    assert await store.set_summary("t", "s", b"s" * 40, 0)
    with pytest.raises(SessionTooLarge, match=r"store\.max_session_bytes"):
        await store.set_summary("t", "s", b"s" * 41, 1)
    assert (await store.read_history("t", "s")).summary == b"s" * 40
    with pytest.raises(SessionTooLarge):
        await store.append_history("t", "s", "op2", [b"z"])
    assert await store.set_summary("t", "s", b"s" * 38, 1), "a smaller summary frees bytes"
    assert await store.append_history("t", "s", "op2", [b"z"]) == 3


async def test_trimming_to_max_messages_frees_the_bytes_it_drops(make):
    store = make(max_session_bytes=60)  # max_messages 6: exactly six entries of 10 bytes
    for i in range(5):
        await store.append_history("t", "s", f"op{i}", [b"%09d" % (2 * i), b"%09d" % (2 * i + 1)])
    stored = await store.read_history("t", "s")
    assert stored.entries == tuple(b"%09d" % n for n in range(4, 10))
    assert stored.first_index == 4


async def test_discarding_a_turn_removes_only_its_entries_and_a_retry_is_stored_again(make):
    store = make()
    await store.append_history("t", "s", "a:user", [entry("a1")])
    await store.append_history("t", "s", "b:user", [entry("b1"), entry("b2")])
    await store.append_history("t", "s", "a:reply", [entry("a2")])
    assert await store.discard_turn("t", "s", "b:user")
    assert (await store.read_history("t", "s")).entries == (entry("a1"), entry("a2"))
    assert not await store.discard_turn("t", "s", "b:user"), "safe to repeat"
    assert not await store.discard_turn("t", "s", "never:user")
    assert not await store.discard_turn("t", "nobody", "b:user")
    assert await store.append_history("t", "s", "b:user", [entry("b1"), entry("b2")]) == 4
    stored = await store.read_history("t", "s")
    assert stored.entries == (entry("a1"), entry("a2"), entry("b1"), entry("b2"))


async def test_a_discarded_turn_gives_its_bytes_back(make):
    store = make(max_session_bytes=12)
    await store.append_history("t", "s", "a", [b"aaaaaa"])
    await store.append_history("t", "s", "b", [b"bbbb"])
    with pytest.raises(SessionTooLarge):
        await store.append_history("t", "s", "c", [b"ccc"])
    assert await store.discard_turn("t", "s", "b")
    assert await store.append_history("t", "s", "c", [b"ccc"]) == 2


async def test_a_discard_keeps_the_summary_on_the_same_messages(make):
    store = make()
    await store.append_history("t", "s", "a", [entry("a")])
    await store.append_history("t", "s", "b", [entry("b")])
    await store.append_history("t", "s", "c", [entry("c"), entry("d")])
    assert await store.set_summary("t", "s", b"a to c", 2)
    assert await store.discard_turn("t", "s", "b")
    stored = await store.read_history("t", "s")
    assert stored.entries == (entry("a"), entry("c"), entry("d"))
    assert stored.summary_through == 1, "the summary still ends at message 'c'"


# Turn embeddings (router.store.vectors): the same contract for both stores.

DIM = 4


def vectors(through: int, *named: tuple[int, str], tag: str = "0badcafe") -> VectorBatch:
    body = b"\x00\x00\x80\x3f" * DIM  # float32 1.0s
    records = tuple((i, turn_digest(n.encode()) + body) for i, n in named)
    return VectorBatch(tag, DIM, through, records)


def names_in(stored: StoredVectors, *names: str) -> list[str]:
    header = stored.header
    assert header is not None and stored.start == 0
    by_digest = {turn_digest(n.encode()): n for n in names}
    return [by_digest[d] for d in digests_of(stored.data, header.dim)]


async def test_vectors_read_back_whole_then_only_what_was_appended(store):
    await store.append_history("t", "s", "op1", [entry("a")])
    assert await store.read_vectors("t", "s") == StoredVectors()
    assert await store.add_vectors("t", "s", vectors(3, (1, "a"), (3, "b")), 100) == 2
    whole = await store.read_vectors("t", "s")
    assert names_in(whole, "a", "b") == ["a", "b"] and whole.header.through == 3
    assert await store.add_vectors("t", "s", vectors(5, (3, "b"), (5, "c")), 100) == 1
    held = (whole.header.generation, len(whole.data))
    later = await store.read_vectors("t", "s", held)
    assert later.header.through == 5
    if later.start:  # a store out of process sends only the tail past the reader's copy
        assert later.start == len(whole.data)
        assert later.data == turn_digest(b"c") + b"\x00\x00\x80\x3f" * DIM
    else:
        assert names_in(later, "a", "b", "c") == ["a", "b", "c"]


async def test_a_copy_that_is_no_longer_a_prefix_is_answered_with_the_whole_blob(store):
    await store.append_history("t", "s", "op1", [entry("a")])
    await store.add_vectors("t", "s", vectors(3, (1, "a"), (3, "b")), 100)
    whole = await store.read_vectors("t", "s")
    await store.add_vectors("t", "s", vectors(5, (5, "c"), tag="feedf00d"), 100)  # new model
    again = await store.read_vectors("t", "s", (whole.header.generation, len(whole.data)))
    assert names_in(again, "a", "b", "c") == ["c"]


async def test_a_trimmed_blob_as_long_as_the_readers_copy_is_sent_whole(store):
    await store.append_history("t", "s", "op1", [entry("a")])
    names = [f"t{i}" for i in range(11)]
    for i in range(9):  # 9 records: the cap (8) plus its slack
        await store.add_vectors("t", "s", vectors(i, (i, names[i])), 8)
    copy = await store.read_vectors("t", "s")
    await store.add_vectors("t", "s", vectors(9, (9, names[9])), 8)  # trimmed back to 8
    await store.add_vectors("t", "s", vectors(10, (10, names[10])), 8)  # 9 again: same length
    again = await store.read_vectors("t", "s", (copy.header.generation, len(copy.data)))
    assert len(again.data) == len(copy.data)
    assert names_in(again, *names) == names[2:]


async def test_vectors_are_tenant_scoped_and_forgotten_with_the_session(store):
    await store.append_history("t", "s", "op1", [entry("a")])
    await store.append_history("u", "s", "op1", [entry("a")])
    await store.add_vectors("t", "s", vectors(1, (1, "a")), 100)
    assert await store.read_vectors("u", "s") == StoredVectors()
    assert await store.forget("t", "s")
    assert await store.read_vectors("t", "s") == StoredVectors()


async def test_vectors_never_bring_back_a_session_that_is_gone(store):
    assert await store.add_vectors("t", "gone", vectors(1, (1, "a")), 100) is None
    assert await store.read_vectors("t", "gone") == StoredVectors()
    assert (await store.read_history("t", "gone")).entries == ()


async def test_vectors_are_capped_per_session_oldest_first(store):
    await store.append_history("t", "s", "op1", [entry("a")])
    names = [f"t{i}" for i in range(12)]
    for i, name in enumerate(names):
        await store.add_vectors("t", "s", vectors(i, (i, name)), 8)
    # past cap + cap/8 (9) the oldest go down to the cap: at the 10th and the 12th write
    assert names_in(await store.read_vectors("t", "s"), *names) == names[4:]


async def test_vectors_count_against_the_session_byte_limit(make):
    record = 16 + 4 * DIM
    store = make(max_session_bytes=len(entry("a")) + 1 + 64 + 2 * record + 4)
    await store.append_history("t", "s", "op1", [entry("a")])
    assert await store.add_vectors("t", "s", vectors(2, (1, "a"), (2, "b")), 100) == 2
    with pytest.raises(SessionTooLarge):
        await store.add_vectors("t", "s", vectors(3, (3, "c")), 100)
    with pytest.raises(SessionTooLarge):  # the history has no room left either
        await store.append_history("t", "s", "op2", [entry("bb")])
    await store.forget("t", "s")
    await store.append_history("t", "s", "op1", [entry("a")])  # room again after a delete


async def test_vectors_expire_with_the_history_and_live_as_long_as_it(store):
    await store.append_history("t", "s", "op1", [entry("a")])
    await store.add_vectors("t", "s", vectors(1, (1, "a")), 100)
    await asyncio.sleep(TTL * 0.6)
    await store.append_history("t", "s", "op2", [entry("b")])  # refreshes the whole session
    await asyncio.sleep(TTL * 0.6)
    assert (await store.read_vectors("t", "s")).header is not None
    await asyncio.sleep(TTL * 1.2)
    assert await store.read_vectors("t", "s") == StoredVectors()
    assert (await store.read_history("t", "s")).entries == ()
async def test_rate_buckets_refuse_past_the_requests_per_minute_and_keep_tenants_apart(store):
    rule = Rule(requests=3)
    for left in (2, 1, 0):
        levels = await store.take_rate("t", rule, 1, 0)
        assert levels.refused is None and levels.requests == pytest.approx(left, abs=0.01)
    refused = await store.take_rate("t", rule, 1, 0)
    assert refused.refused == "requests" and refused.requests < 1
    assert (await store.take_rate("t2", rule, 1, 0)).refused is None, "another tenant's own"


async def test_rate_buckets_debit_reply_tokens_below_zero_and_refill_over_time(store):
    rule = Rule(tokens=6000)  # 100 tokens a second
    assert (await store.take_rate("t", rule, 1, 0)).refused is None
    debited = await store.take_rate("t", rule, 0, 6050)
    assert debited.tokens == pytest.approx(-50, abs=5) and debited.refused is None
    assert (await store.take_rate("t", rule, 1, 0)).refused == "tokens"
    await asyncio.sleep(0.7)
    later = await store.take_rate("t", rule, 1, 0)
    assert later.refused is None and later.tokens == pytest.approx(20, abs=10)


async def test_rate_buckets_follow_a_changed_rule(store):
    await store.take_rate("t", Rule(requests=2), 1, 0)
    levels = await store.take_rate("t", Rule(requests=1), 1, 0)
    assert levels.refused is None and levels.requests == pytest.approx(0, abs=0.01), (
        "a lower limit caps what is left"
    )
    assert (await store.take_rate("t", Rule(requests=1), 1, 0)).refused == "requests"
