"""Semantic recall end to end: a real router, a real chat upstream that records every prompt,
and a real embeddings server (the simulated worker's embedding rule, with faults to inject)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from router.config import RecallSettings, StoreSettings
from router.metrics import Metrics
from router.orchestrator.embeddings import EmbeddingClient
from router.orchestrator.history import decode_history, encode_entry
from router.orchestrator.index_turns import TurnIndexer
from router.orchestrator.recall import INTRO
from router.orchestrator.vector_cache import VectorCache
from router.sim.embeddings import embed_text
from router.store import MemoryStore
from router.store.redis import RedisStore
from router.store.vectors import VectorBatch, turn_digest
from tests.conftest import counted, serving
from tests.integration.test_orchestrator import SERVER, contents, settings_for, stored
from tests.integration.test_orchestrator import upstream as upstream  # the fixture

FACT = "Remember this: the access code for the Falcon storage vault is 4417."
QUESTION = "What is the access code for the Falcon storage vault?"
DISTRACTORS = (
    "The Falcon storage migration finished early.",
    "Vault maintenance for the storage cluster starts at noon.",
    "Access reviews for the Falcon project are due next week.",
)
FILLER = "Tell me one thing about {} weather in spring"
PLACES = ("Lisbon", "Oslo", "Quito", "Hanoi", "Perth", "Tunis", "Lima", "Riga", "Accra", "Pune")


class Embedder:
    """A real embeddings endpoint with the sim's rule; records each call's input, can fail
    the next calls, be slow, and reports the most calls it ever served at once."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.fail_next = 0
        self.fail_containing: tuple[str, int] | None = None  # (text, how many times)
        self.delay = 0.0
        self.open = 0
        self.most_open = 0
        self.url = ""

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(body["input"])
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await asyncio.sleep(self.delay)
            if self.fail_next or self._fails_for(body["input"]):
                self.fail_next = max(0, self.fail_next - 1)
                return web.json_response({"error": {"message": "embedder down"}}, status=503)
            data = [
                {"object": "embedding", "index": i,
                 "embedding": [3.0 * v for v in embed_text(text, 64)]}  # not unit length
                for i, text in enumerate(body["input"])
            ]
            return web.json_response({"object": "list", "data": data, "model": body["model"]})
        finally:
            self.open -= 1


    def _fails_for(self, texts: list[str]) -> bool:
        if self.fail_containing is None:
            return False
        text, times = self.fail_containing
        if times and any(text in t for t in texts):
            self.fail_containing = (text, times - 1)
            return True
        return False


@pytest.fixture
async def embedder() -> AsyncIterator[Embedder]:
    fake = Embedder()
    app = web.Application()
    app.router.add_post("/v1/embeddings", fake.embeddings)
    async with serving(app) as url:
        fake.url = url + "/v1/embeddings"
        yield fake


def recall_on(embedder: Embedder, **overrides: Any) -> dict[str, Any]:
    """A prompt budget that keeps about six of these turns, and recall on."""
    recall = {"enabled": True, "url": embedder.url, "model": "emb", "max_tokens": 100,
              "batch_wait": 0, "min_similarity": 0.5, **overrides}  # fmt: skip
    return {"max_prompt_tokens": 300, "default_max_tokens": 16, "recall": recall}


async def ask(http, url, session, text, *, system=None, max_tokens=None):
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})
    headers = {**SERVER, "x-session-id": session}
    body = {"model": "m", "messages": messages}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
        return resp.status, resp.headers, orjson.loads(await resp.read())


async def embedded(http, url, session, text) -> bool:
    """Whether the session's turn that asked `text` has an embedding yet (waits briefly)."""
    for _ in range(200):
        document = (await stored(http, url, session))[1]
        turn = next(t for t in document["turns"] if t["messages"][0]["content"] == text)
        if turn.get("embedded"):
            return True
        await asyncio.sleep(0.02)
    return False


async def converse(http, url, session, texts, *, system=None) -> None:
    for index, text in enumerate(texts):
        status, _, _ = await ask(http, url, session, text, system=system)
        assert status == 200
        await stored(http, url, session, turns=index + 1)


def recall_messages(prompt: list[dict[str, Any]]) -> list[int]:
    return [i for i, m in enumerate(prompt) if str(m["content"]).startswith(INTRO)]


async def test_the_pruned_fact_comes_back_just_before_the_question_and_no_distractor(
    upstream, embedder, router_in_process, http
):
    texts = [FACT, *DISTRACTORS, *(FILLER.format(p) for p in PLACES)]
    async with router_in_process(settings_for(upstream.url, history=recall_on(embedder))) as url:
        await converse(http, url, "s", texts)
        assert await embedded(http, url, "s", FACT)
        status, headers, _ = await ask(http, url, "s", QUESTION)
        async with http.get(url + "/metrics") as resp:
            metrics = await resp.text()
    prompt = upstream.prompts[-1]
    assert status == 200 and headers["x-kvrouter-recalled"] == "1"
    assert FACT not in contents(prompt[:-2])  # pruned out of the window
    assert recall_messages(prompt) == [len(prompt) - 2]  # before_last
    recalled = prompt[-2]
    assert recalled["role"] == "system"
    assert f"user: {FACT}\nassistant: reply to {FACT}" in recalled["content"]
    assert not any(d in recalled["content"] for d in DISTRACTORS)
    assert prompt[-1]["content"] == QUESTION
    recall_seconds = next(line for line in metrics.splitlines()
                          if line.startswith("kvrouter_recall_seconds_count"))  # fmt: skip
    assert float(recall_seconds.split()[1]) >= 1


async def test_after_system_puts_the_recalled_turns_right_after_the_system_prompt(
    upstream, embedder, router_in_process, http
):
    history = recall_on(embedder, position="after_system")
    texts = [FACT, *(FILLER.format(p) for p in PLACES)]
    async with router_in_process(settings_for(upstream.url, history=history)) as url:
        await converse(http, url, "s", texts, system="be brief")
        assert await embedded(http, url, "s", FACT)
        status, headers, _ = await ask(http, url, "s", QUESTION)
    prompt = upstream.prompts[-1]
    assert status == 200 and headers["x-kvrouter-recalled"] == "1"
    assert prompt[0]["content"] == "be brief" and recall_messages(prompt) == [1]
    assert FACT in prompt[1]["content"] and prompt[-1]["content"] == QUESTION


async def test_a_turn_still_in_the_window_is_never_recalled_again(
    upstream, embedder, router_in_process, http
):
    fillers = [FILLER.format(p) for p in PLACES]
    texts = [*fillers[:4], FACT, *fillers[4:7]]  # the fact is the fourth turn from the end
    async with router_in_process(settings_for(upstream.url, history=recall_on(embedder))) as url:
        for index, text in enumerate(texts):  # a large max_tokens: a window of about 2 turns
            assert (await ask(http, url, "s", text, max_tokens=120))[0] == 200
            await stored(http, url, "s", turns=index + 1)
        assert await embedded(http, url, "s", FACT)
        status, headers, _ = await ask(http, url, "s", QUESTION, max_tokens=1)
    prompt = upstream.prompts[-1]  # a small one: the window grew back over the fact's turn
    assert FACT in contents(prompt), "the fact's turn should be back in the window"
    assert status == 200 and headers["x-kvrouter-recalled"] == "0"
    assert contents(prompt).count(FACT) == 1 and recall_messages(prompt) == []


async def test_a_failing_embeddings_endpoint_never_fails_a_turn_and_is_counted(
    upstream, embedder, router_in_process, http
):
    history = recall_on(embedder, attempts=2)
    fillers = [FILLER.format(p) for p in PLACES]
    async with router_in_process(settings_for(upstream.url, history=history)) as url:
        await converse(http, url, "s", [FACT, *fillers[:6]])
        assert await embedded(http, url, "s", FACT)
        embedder.fail_next = 10_000
        await converse(http, url, "s", [FACT, *fillers])
        status, headers, _ = await ask(http, url, "s", QUESTION)
        for _ in range(200):
            turns = await counted(http, url, "kvrouter_recall_embedding_failures_total",
                                  kind="turn", reason="error")  # fmt: skip
            if turns:
                break
            await asyncio.sleep(0.02)
        queries = await counted(http, url, "kvrouter_recall_embedding_failures_total",
                                kind="query", reason="error")  # fmt: skip
        embedder.fail_next = 0
        await converse(http, url, "s", [FACT, *fillers, QUESTION, "and one more thing"])
        assert await embedded(http, url, "s", QUESTION)
        flags = [t["embedded"] for t in (await stored(http, url, "s"))[1]["turns"]]
    assert status == 200 and headers["x-kvrouter-recalled"] == "0"
    assert turns >= 1 and queries >= 1
    gave_up = flags.index(False)  # a turn whose embedding failed stays without one ...
    assert any(flags[gave_up:]), flags  # ... while later turns have one again


async def test_a_slow_query_embedding_means_no_recall_and_no_wait(
    upstream, embedder, router_in_process, http
):
    history = recall_on(embedder, query_timeout=0.1)
    texts = [FACT, *(FILLER.format(p) for p in PLACES)]
    async with router_in_process(settings_for(upstream.url, history=history)) as url:
        await converse(http, url, "s", texts)
        assert await embedded(http, url, "s", FACT)
        embedder.delay = 2.0
        started = time.perf_counter()
        status, headers, _ = await ask(http, url, "s", QUESTION)
        took = time.perf_counter() - started
        timeouts = await counted(http, url, "kvrouter_recall_embedding_failures_total",
                                 kind="query", reason="timeout")  # fmt: skip
        embedder.delay = 0.0
    assert status == 200 and headers["x-kvrouter-recalled"] == "0"
    assert took < 1.0, f"the turn waited {took:.2f}s for its embedding"
    assert timeouts >= 1 and recall_messages(upstream.prompts[-1]) == []


async def test_a_failed_batch_is_retried_before_it_is_given_up(
    upstream, embedder, router_in_process, http
):
    texts = [FACT, *(FILLER.format(p) for p in PLACES)]
    embedder.fail_containing = (FACT, 2)  # the batch with the fact's turn fails twice
    history = recall_on(embedder, attempts=3)
    async with router_in_process(settings_for(upstream.url, history=history)) as url:
        await converse(http, url, "s", texts)
        assert await embedded(http, url, "s", FACT)
    assert sum(1 for call in embedder.calls if any(FACT in t for t in call)) == 3


async def test_pruned_turns_are_embedded_in_batches_across_a_restart_on_redis(
    upstream, embedder, router_in_process, http, shared_redis_url, redis_prefix
):
    store = {"url": shared_redis_url, "key_prefix": redis_prefix}
    history = recall_on(embedder, batch_size=8, batch_wait=0.2)
    off = {**history, "recall": {**history["recall"], "enabled": False}}
    texts = [f"{FILLER.format(p)} number {i}" for i in range(3) for p in PLACES]
    async with router_in_process(settings_for(upstream.url, history=off, store=store)) as url:
        await converse(http, url, "s", texts)  # 30 turns, most of them pruned, none embedded
    assert embedder.calls == []
    settings = settings_for(upstream.url, history=history, store=store)
    async with router_in_process(settings) as url:
        await ask(http, url, "s", QUESTION)
        assert await embedded(http, url, "s", texts[0])
        document = (await stored(http, url, "s"))[1]
    batches = [len(call) for call in embedder.calls if len(call) > 1 or call != [QUESTION]]
    assert max(batches) == 8 and sum(batches) == sum(t["embedded"] for t in document["turns"])
    assert sum(t["embedded"] for t in document["turns"]) >= 20


async def test_with_recall_off_nothing_is_embedded_and_no_header_is_sent(
    upstream, embedder, router_in_process, http
):
    history = recall_on(embedder)
    history["recall"]["enabled"] = False
    texts = [FACT, *(FILLER.format(p) for p in PLACES)]
    async with router_in_process(settings_for(upstream.url, history=history)) as url:
        await converse(http, url, "s", texts)
        status, headers, _ = await ask(http, url, "s", QUESTION)
        document = (await stored(http, url, "s"))[1]
    assert status == 200 and "x-kvrouter-recalled" not in headers
    assert embedder.calls == [] and "embedded" not in document["turns"][0]
    assert FACT not in contents(upstream.prompts[-1])


async def test_the_embeddings_client_holds_at_most_its_connection_bound(embedder):
    embedder.delay = 0.05
    client = EmbeddingClient(RecallSettings(url=embedder.url, model="emb", max_connections=2))
    try:
        vectors = await asyncio.gather(*(client.embed([f"text {i}"], 5.0) for i in range(6)))
    finally:
        await client.close()
    assert embedder.most_open == 2 and len(embedder.calls) == 6
    assert all(v.shape == (1, 64) for v in vectors)
    assert abs(float((vectors[0][0] ** 2).sum()) - 1.0) < 1e-5


async def test_an_unreachable_embeddings_endpoint_is_an_error_naming_it():
    client = EmbeddingClient(RecallSettings(url="http://127.0.0.1:9/v1/embeddings", model="e"))
    try:
        with pytest.raises(Exception, match="embeddings endpoint"):
            await client.embed(["x"], 1.0)
    finally:
        await client.close()


async def test_the_vector_cache_gives_the_stored_blob_reading_only_the_tail(
    shared_redis_url, redis_prefix
):
    class Watched(RedisStore):
        """The real Redis store, noting where each vector read started."""

        starts: list[int] = []

        async def read_vectors(self, tenant, session, held=None):
            stored = await super().read_vectors(tenant, session, held)
            self.starts.append(stored.start)
            return stored

    store = Watched(StoreSettings(url=shared_redis_url, key_prefix=redis_prefix))
    cache = VectorCache(1 << 20)
    record = b"\x00\x00\x80\x3f" * 4

    async def add(index: int, tag: str = "0badcafe") -> None:
        records = ((index, turn_digest(b"%d" % index) + record),)
        await store.add_vectors("t", "s", VectorBatch(tag, 4, index, records), 4)

    try:
        await store.append_history("t", "s", "op", [b"x"])
        for index in range(8):
            await add(index)
            got = await cache.read(store, "t", "s")
            assert bytes(got) == (await store.read_vectors("t", "s")).data
        await add(8, tag="feedf00d")  # another model: the copy is stale
        assert bytes(await cache.read(store, "t", "s")) == (await store.read_vectors("t", "s")).data
        await store.forget("t", "s")
        assert await cache.read(store, "t", "s") == b""
    finally:
        await store.close()
    tails = Watched.starts[0::2]  # the cache's reads (each is followed by a whole one)
    assert tails[0] == 0 and all(start > 0 for start in tails[1:4]), tails
    assert cache.held_bytes == 0


async def test_a_router_stops_promptly_with_turns_still_waiting_to_be_embedded(
    upstream, embedder, router_in_process, http
):
    embedder.delay = 4.0  # every embedding call hangs past the router's stop
    history = recall_on(embedder, timeout=10.0)
    texts = [FACT, *(FILLER.format(p) for p in PLACES)]
    context = router_in_process(settings_for(upstream.url, history=history))
    url = await context.__aenter__()
    try:
        await converse(http, url, "s", texts)  # turns answer although nothing gets embedded
    finally:
        started = time.perf_counter()
        await context.__aexit__(None, None, None)
    assert time.perf_counter() - started < 2.0


async def test_a_turn_whose_embedding_failed_is_not_offered_again(embedder):
    embedder.fail_next = 10_000
    settings = RecallSettings(enabled=True, url=embedder.url, model="emb", attempts=2,
                              batch_wait=0)  # fmt: skip
    store, metrics = MemoryStore(), Metrics()
    client = EmbeddingClient(settings)
    indexer = TurnIndexer(settings, client, store, metrics)
    entries = [encode_entry(f"t{i}", 5, {"role": r, "content": f"{r} {i}"})
               for i in range(3) for r in ("user", "assistant")]  # fmt: skip
    await store.append_history("t", "s", "op", entries)
    turns = decode_history(await store.read_history("t", "s")).turns
    indexer.start()
    try:
        assert indexer.offer("t", "s", turns, -1) == 3
        await asyncio.wait_for(indexer.idle.wait(), 10)
        header = (await store.read_vectors("t", "s")).header
        assert header is not None and header.through == turns[-1].last_index
        assert indexer.offer("t", "s", turns, header.through) == 0
    finally:
        await indexer.close()
        await client.close()
    assert len(embedder.calls) == 2  # one batch, tried twice, then given up


def test_a_router_with_recall_off_never_loads_numpy():
    """numpy costs a process some 15 MB and a third of a second to import: only recall loads
    it, when it first runs."""
    check = (
        "import sys, router.cli, router.server, router.http.app, router.root, "
        "router.orchestrator.recall; sys.exit('numpy' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", check], timeout=60).returncode == 0
