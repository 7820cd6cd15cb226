"""Semantic recall, measured: does the right turn come back, what does it cost, and what does
each position cost in prefix-cache hits. Prints three tables (and plots the last one).

    python -m router.tooling.bench.recall_bench [--redis-url URL | --own-redis] [--quick]

1. Selection: a scripted 200-turn session (turn 3 states a fact, 20 turns share its words,
   turn 180 asks about it) through a router with a window of about 20 turns, recall on and
   off. The chat upstream records each prompt and answers "Noted."; embeddings come from a
   simulated worker's `/v1/embeddings`.
2. Latency: recall's store read, scoring and selection (the embedding call excluded) for a
   session holding 1,000 vectors of 1,024 float32 (4 MB) in Redis, read whole every turn
   (`cache_bytes: 0`) and with the in-process copy (`VectorCache`: only the tail is read).
3. Prefix cache: the same multi-turn chat load through two simulated workers with recall
   off, `before_last` and `after_system`; the hit ratio is cached / prompt tokens from the
   workers' usage.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
from aiohttp import web

from router.config import RecallSettings, StoreSettings, parse_settings
from router.metrics import Metrics
from router.orchestrator.embeddings import EmbeddingClient
from router.orchestrator.history import decode_history, encode_entry
from router.orchestrator.index_turns import TurnIndexer
from router.orchestrator.prune import Budget, build_prompt
from router.orchestrator.recall import INTRO, Recall
from router.orchestrator.similarity import unit_rows
from router.orchestrator.tokenizer import bpe_tokenizer
from router.sim.embeddings import embed_text
from router.store import SessionStore
from router.store.redis import RedisStore
from router.store.vectors import VectorBatch, model_tag, turn_digest
from router.tooling.bench.history_bench import (
    add_redis_arguments,
    percentile,
    run_on_redis,
    table,
)
from router.tooling.fleet import LocalFleet, router_in_process, serving
from router.tooling.launch import free_port

FACT = "Remember this: the access code for the Falcon storage vault is 4417."
QUESTION = "What is the access code for the Falcon storage vault?"
FACT_TURN, QUESTION_TURN, TURNS, WINDOW = 3, 180, 200, 20
DISTRACTORS = [
    "The Falcon team wants a new logo for the spring launch.",
    "Our storage bill went up after the move to the new region.",
    "The vault in the old bank building became a small museum.",
    "Can you explain how the access badges for visitors work?",
    "The code review for the billing service took three days.",
    "Falcon is also the name of the drone we tested last month.",
    "We need more storage shelves in the basement workshop.",
    "The vault door was painted green during the renovation.",
    "Access to the roof terrace closes at nine in the evening.",
    "The code of conduct was updated for the next conference.",
    "The Falcon project demo went well with the board.",
    "Storage of old laptops is handled by the facilities team.",
    "The museum vault tour is popular with school groups.",
    "Guest access to the wireless network changes every week.",
    "Her code sample used a clever trick with generators.",
    "A falcon nested on the tower of the city library.",
    "Cold storage for the farm's apples runs on solar power.",
    "The bank moved the vault records to a digital archive.",
    "Access roads to the stadium are closed on match days.",
    "The postal code for the warehouse district changed.",
]
TOPICS = ("bread", "tomatoes", "cycling", "jazz", "chess", "orchids", "kayaks", "poetry",
          "volcanoes", "origami", "tea", "beetles", "glaciers", "puppets", "sailing")  # fmt: skip
PLACES = ("Lisbon", "Oslo", "Quito", "Hanoi", "Perth", "Tunis", "Lima", "Riga", "Accra",
          "Pune", "Cusco", "Bergen", "Dakar", "Hobart")  # fmt: skip
SYSTEM = "You are a helpful assistant. Answer briefly."
REPLY = "Noted."


def scripted_session() -> list[str]:
    """The 200 user messages: the fact at turn 3, the distractors spread over turns 10 to 170,
    the question at turn 180, small talk everywhere else (turn n is index n - 1)."""
    rng = random.Random(11)
    texts = [
        f"Tell me one thing about {rng.choice(TOPICS)} near {rng.choice(PLACES)} today."
        for _ in range(TURNS)
    ]
    texts[FACT_TURN - 1] = FACT
    for i, text in enumerate(DISTRACTORS):
        texts[10 + i * 8 - 1] = text
    texts[QUESTION_TURN - 1] = QUESTION
    return texts


class Recorder:
    """A chat upstream that records each prompt and answers REPLY."""

    def __init__(self) -> None:
        self.prompts: list[list[dict[str, Any]]] = []

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.prompts.append(body["messages"])
        message = {"role": "assistant", "content": REPLY}
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        return web.json_response({"object": "chat.completion", "usage": usage,
                                  "choices": [{"index": 0, "message": message,
                                               "finish_reason": "stop"}]})  # fmt: skip

    @staticmethod
    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})


async def turn_tokens(texts: list[str]) -> int:
    """The tokens of an average turn (question and reply), as the router counts them."""
    tokenizer = bpe_tokenizer("cl100k_base", 4)
    counted = [await tokenizer.count([{"role": "user", "content": t},
                                      {"role": "assistant", "content": REPLY}])
               for t in texts]  # fmt: skip
    return round(statistics.mean(sum(c) for c in counted))


def recall_section(embeddings_url: str, **overrides: Any) -> dict[str, Any]:
    return {"enabled": True, "url": embeddings_url, "model": "sim-embed", "batch_wait": 0,
            "max_tokens": 256, "top_k": 3, "min_similarity": 0.5, **overrides}  # fmt: skip


async def post_turn(
    http: aiohttp.ClientSession, url: str, session: str, messages: list[dict[str, str]],
    max_tokens: int,
) -> tuple[int, dict[str, Any], str]:
    body = {"model": "m", "messages": messages, "max_tokens": max_tokens}
    headers = {"x-session-id": session, "x-kvrouter-history": "server"}
    async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
        document = orjson.loads(await resp.read())
        return resp.status, document, resp.headers.get("x-kvrouter-recalled", "-")


def recalled_users(prompt: list[dict[str, Any]]) -> list[str]:
    """The user messages of the turns in a prompt's recall message, in its order."""
    for message in prompt:
        content = str(message.get("content"))
        if content.startswith(INTRO):
            return [line[len("user: "):] for line in content.splitlines()
                    if line.startswith("user: ")]  # fmt: skip
    return []


async def selection(fleet: LocalFleet, quick: bool) -> list[list[str]]:
    texts = scripted_session()
    per_turn = await turn_tokens(texts)
    recall = recall_section(fleet.urls[0] + "/v1/embeddings")
    # the window: WINDOW turns, plus the system prompt, the new message and the completion's
    # reserve; recall holds its own budget back on top of it, so both runs keep the same window
    window = WINDOW * per_turn + 60 + 64
    rows = []
    for enabled in (True, False):
        budget = window + (recall["max_tokens"] if enabled else 0)
        recorder = Recorder()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", recorder.chat)
        app.router.add_get("/health", recorder.health)
        async with serving(app) as upstream:
            history = {"access": "open", "max_prompt_tokens": budget, "default_max_tokens": 64,
                       "recall": {**recall, "enabled": enabled}}  # fmt: skip
            raw = {"listen": f"127.0.0.1:{free_port()}", "history": history,
                   "workers": [{"url": upstream, "name": "recorder"}]}  # fmt: skip
            settings = parse_settings(raw, "recall bench", env={})
            async with router_in_process(settings) as url, aiohttp.ClientSession() as http:
                headers_at = {}
                for number, text in enumerate(texts, start=1):
                    messages = [{"role": "system", "content": SYSTEM}] if number == 1 else []
                    messages.append({"role": "user", "content": text})
                    status, _, recalled = await post_turn(http, url, "scripted", messages, 64)
                    assert status == 200, f"turn {number} answered {status}"
                    headers_at[number] = recalled
                    if enabled and number < QUESTION_TURN:
                        await asyncio.sleep(0.002)  # the indexer runs beside the turns
        prompt = recorder.prompts[QUESTION_TURN - 1]
        kept = sum(1 for m in prompt if m["role"] == "user") - 1  # the question is no turn
        brought = recalled_users(prompt)
        in_prompt = any(FACT in str(m.get("content")) for m in prompt)
        distractors = sum(1 for u in brought if u in DISTRACTORS)
        rank = str(brought.index(FACT) + 1) if FACT in brought else "-"
        rows.append(["on" if enabled else "off", str(kept), headers_at[QUESTION_TURN],
                     rank, str(distractors), "yes" if in_prompt else "no"])  # fmt: skip
    return rows


def similarity_rows() -> list[list[str]]:
    """The sim's cosine similarity of the question to the fact and to the distractors."""
    question = np.array(embed_text(QUESTION, 256))
    fact = float(question @ np.array(embed_text(f"{FACT}\n{REPLY}", 256)))
    others = sorted(float(question @ np.array(embed_text(f"{d}\n{REPLY}", 256)))
                    for d in DISTRACTORS)  # fmt: skip
    return [["fact (turn 3)", f"{fact:.3f}"], ["best distractor", f"{others[-1]:.3f}"],
            ["median distractor", f"{statistics.median(others):.3f}"]]  # fmt: skip


# --- latency ---------------------------------------------------------------------------

async def fill_session(store: SessionStore, tenant: str, session: str, count: int, dim: int,
                       query: np.ndarray) -> None:  # fmt: skip
    """A session with `count` complete turns t0.. and a vector for each; three of them close
    to `query`, the rest random."""
    rng = np.random.default_rng(3)
    entries = []
    for i in range(count):
        question = {"role": "user", "content": f"question {i}"}
        answer = {"role": "assistant", "content": "answer"}
        entries += [encode_entry(f"t{i}", 12, question), encode_entry(f"t{i}", 12, answer)]
    for at in range(0, len(entries), 500):
        await store.append_history(tenant, session, f"fill-{at}", entries[at : at + 500])
    vectors = unit_rows(rng.standard_normal((count, dim)).astype(np.float32))
    for i in (10, 20, 30):
        vectors[i] = unit_rows((query + 0.3 * vectors[i])[None, :])[0]
    tag = model_tag("bench-embed")
    for at in range(0, count, 100):
        records = tuple(
            (2 * i + 1, turn_digest(orjson.dumps(f"t{i}")) + vectors[i].astype("<f4").tobytes())
            for i in range(at, min(at + 100, count))
        )
        batch = VectorBatch(tag, dim, records[-1][0], records)
        await store.add_vectors(tenant, session, batch, count)


async def latency_rows(store: SessionStore, quick: bool, label: str) -> list[list[str]]:
    dim, count = 1024, 1000
    query = unit_rows(np.random.default_rng(5).standard_normal((1, dim)).astype(np.float32))[0]
    session = f"bench-{uuid.uuid4().hex[:8]}"
    await fill_session(store, "bench", session, count, dim, query)
    conversation = decode_history(await store.read_history("bench", session))
    budget = Budget(1_000_000, 256, 512)
    new = [{"role": "user", "content": "the new question"}]
    prompt = build_prompt(conversation, new, [8], Budget(20 * 24 + 300, 256, 512))
    rows = []
    runs = 60 if quick else 300
    modes = [("whole blob every turn", 0, False), ("cached copy, nothing new", 1 << 30, False),
             ("cached copy, 1 new vector a turn", 1 << 30, True)]  # fmt: skip
    if store.in_process:
        modes = modes[:1]
    metrics = Metrics()
    for name, cache_bytes, grow in modes:
        settings = RecallSettings(enabled=True, url="http://127.0.0.1:9/", model="bench-embed",
                                  cache_bytes=cache_bytes, max_vectors=count, top_k=3,
                                  min_similarity=0.5, max_tokens=512)  # fmt: skip
        client = EmbeddingClient(settings)
        recall = Recall(settings, store, client, TurnIndexer(settings, client, store, metrics),
                        metrics)  # fmt: skip
        reads, picks, totals, chosen = [], [], [], 0
        extra = count
        for run in range(runs + 10):
            if grow:  # as a turn that pruned one more turn: one vector appended (not timed)
                digest = turn_digest(orjson.dumps(f"t{extra % count}"))
                record = digest + query.astype("<f4").tobytes()
                batch = VectorBatch(model_tag("bench-embed"), dim, 10_000 + extra,
                                    ((10_000 + extra, record),))  # fmt: skip
                await store.add_vectors("bench", session, batch, count)
                extra += 1
            started = time.perf_counter()
            vectors = await recall.read_vectors("bench", session)
            read = time.perf_counter()
            picked = recall.choose(vectors.blob, query, conversation, prompt, budget)
            done = time.perf_counter()
            if run >= 10:  # warm-up
                reads.append((read - started) * 1000)
                picks.append((done - read) * 1000)
                totals.append((done - started) * 1000)
                chosen = len(picked)
        await client.close()
        rows.append([label, name, f"{statistics.median(reads):.3f}",
                     f"{percentile(reads, 0.99):.3f}", f"{statistics.median(picks):.3f}",
                     f"{percentile(picks, 0.99):.3f}", f"{statistics.median(totals):.3f}",
                     f"{percentile(totals, 0.99):.3f}", str(chosen)])  # fmt: skip
    await store.forget("bench", session)
    return rows


# --- prefix cache ----------------------------------------------------------------------

@dataclass
class LoadResult:
    prompt: int = 0
    cached: int = 0
    recalled_turns: int = 0
    requests: int = 0
    with_recall: int = 0
    prompt_with_recall: int = 0
    cached_with_recall: int = 0
    per_turn: dict[int, list[float]] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.cached / self.prompt if self.prompt else 0.0

    @property
    def ratio_with_recall(self) -> float:
        return self.cached_with_recall / self.prompt_with_recall if self.prompt_with_recall else 0


LOAD_WINDOW_TOKENS = 640  # about ten turns of this load, with its system prompt and reply
LOAD_REPLY_TOKENS = 12
LOAD_THRESHOLD = 0.3  # the sim's replies are random words, which dilute a turn's vector


def chat_script(session: int, turns: int) -> list[str]:
    """One session's user messages: facts in its first turns, small talk, and questions that
    come back to the facts once they are pruned."""
    rng = random.Random(1000 + session)
    place, topic = rng.choice(PLACES), rng.choice(TOPICS)
    facts = [f"My project {place} stores its {topic} records in bucket number {session * 7}.",
             f"The deadline for the {topic} report in {place} is the third of June."]  # fmt: skip
    questions = [f"Which bucket number stores the {topic} records of project {place}?",
                 f"When is the deadline for the {topic} report in {place}?"]  # fmt: skip
    texts = []
    for turn in range(turns):
        if turn < len(facts):
            texts.append(facts[turn])
        elif turn >= turns // 2 and turn % 4 == 0:
            texts.append(questions[(turn // 4) % 2])
        else:
            texts.append(f"Say something about {rng.choice(TOPICS)} in {rng.choice(PLACES)}.")
    return texts


async def one_session(http: aiohttp.ClientSession, url: str, session: str, texts: list[str],
                      result: LoadResult) -> None:  # fmt: skip
    for turn, text in enumerate(texts):
        messages = [{"role": "system", "content": SYSTEM}] if turn == 0 else []
        messages.append({"role": "user", "content": text})
        status, document, recalled = await post_turn(
            http, url, session, messages, LOAD_REPLY_TOKENS
        )
        if status != 200:
            raise RuntimeError(f"session {session} turn {turn}: {status} {document}")
        usage = document["usage"]
        prompt, cached = usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"]
        result.prompt += prompt
        result.cached += cached
        result.requests += 1
        result.per_turn.setdefault(turn, []).append(cached / prompt if prompt else 0.0)
        if recalled not in ("-", "0"):
            result.with_recall += 1
            result.recalled_turns += int(recalled)
            result.prompt_with_recall += prompt
            result.cached_with_recall += cached
        await asyncio.sleep(0.01)  # a client reads the answer before it types the next turn


async def prefix_cache(fleet: LocalFleet, quick: bool) -> dict[str, LoadResult]:
    sessions, turns = (6, 24) if quick else (16, 32)
    scripts = {i: chat_script(i, turns) for i in range(sessions)}
    results: dict[str, LoadResult] = {}
    for name in ("off", "before_last", "after_system"):
        fleet.reset_caches()
        recall = recall_section(fleet.urls[0] + "/v1/embeddings", enabled=name != "off",
                                position="before_last" if name == "off" else name,
                                min_similarity=LOAD_THRESHOLD)  # fmt: skip
        # the same window in every run: recall's budget comes on top of the turns' budget
        budget = LOAD_WINDOW_TOKENS + (recall["max_tokens"] if recall["enabled"] else 0)
        history = {"access": "open", "max_prompt_tokens": budget,
                   "default_max_tokens": LOAD_REPLY_TOKENS, "recall": recall}  # fmt: skip
        result = LoadResult()
        async with fleet.router_in_process(history=history) as url, aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=60)
        ) as http:
            started = time.perf_counter()
            await asyncio.gather(*(one_session(http, url, f"{name}-{i}", texts, result)
                                   for i, texts in scripts.items()))  # fmt: skip
            print(f"  prefix cache, recall {name}: {result.requests} turns in "
                  f"{time.perf_counter() - started:.1f}s", flush=True)
        results[name] = result
    return results


def prefix_rows(results: dict[str, LoadResult]) -> list[list[str]]:
    rows = []
    for name, r in results.items():
        mean = r.recalled_turns / r.with_recall if r.with_recall else 0.0
        rows.append([name, str(r.requests), str(r.with_recall), f"{mean:.2f}", str(r.prompt),
                     str(r.cached), f"{r.ratio:.3f}",
                     f"{r.ratio_with_recall:.3f}" if r.with_recall else "-"])  # fmt: skip
    return rows


def plot(results: dict[str, LoadResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (bars, lines) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(results)
    bars.bar(names, [results[n].ratio for n in names], color=["grey", "tab:blue", "tab:orange"])
    bars.set_ylabel("prefix-cache hit ratio (cached / prompt tokens)")
    bars.set_title("Whole load")
    for name in names:
        per_turn = results[name].per_turn
        turns = sorted(per_turn)
        lines.plot([t + 1 for t in turns], [statistics.mean(per_turn[t]) for t in turns],
                   label=f"recall {name}")  # fmt: skip
    lines.set_xlabel("turn of the session")
    lines.set_ylabel("mean hit ratio")
    lines.set_title("By turn")
    lines.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


async def main(ns: argparse.Namespace) -> int:
    gc.freeze()  # as `kvrouter serve` does once started
    with LocalFleet(2, ("--time-scale", "0")) as fleet:
        print("1/3 selection: a scripted 200-turn session, recall on and off", flush=True)
        selected = await selection(fleet, ns.quick)
        print("2/3 latency: 1,000 vectors of 1,024 float32 per session", flush=True)
        redis = RedisStore(StoreSettings(
            url=ns.redis_url, key_prefix=f"kvrbench-{uuid.uuid4().hex[:8]}",
            max_session_bytes=16 * 1024 * 1024,
        ))  # fmt: skip
        from router.store import MemoryStore

        try:
            latency = await latency_rows(redis, ns.quick, "redis")
        finally:
            await redis.close()
        latency += await latency_rows(MemoryStore(max_session_bytes=16 * 1024 * 1024),
                                      ns.quick, "memory")  # fmt: skip
        print("3/3 prefix cache: the same chat load, recall off and at each position", flush=True)
        cached = await prefix_cache(fleet, ns.quick)
    print("\nSelection: turn 3 states a fact, 20 turns share its words, turn 180 asks about it")
    print(table(["recall", "turns in window", "x-kvrouter-recalled", "fact's rank",
                 "distractors recalled", "fact in prompt"], selected))  # fmt: skip
    print("\nCosine similarity to the question (the sim's embeddings), threshold 0.5")
    print(table(["turn", "similarity"], similarity_rows()))
    print("\nRecall latency (ms): store read + scoring + selection, embedding call excluded;"
          " 1,000 vectors x 1,024 float32 (4 MB) per session")
    print(table(["store", "read", "read p50", "read p99", "select p50", "select p99",
                 "total p50", "total p99", "recalled"], latency))  # fmt: skip
    print("\nPrefix cache: the same chat load with recall off and at each position")
    print(table(["recall", "turns", "turns with a recall", "recalled per such turn",
                 "prompt tokens", "cached tokens", "hit ratio", "hit ratio on recall turns"],
                prefix_rows(cached)))  # fmt: skip
    plot(cached, Path(ns.plot))
    print(f"\nplot: {ns.plot}")
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_redis_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="fewer samples and sessions")
    parser.add_argument("--plot", default="bench-out/recall_prefix_cache.png")
    return run_on_redis(main, parser.parse_args())

if __name__ == "__main__":
    raise SystemExit(cli())
