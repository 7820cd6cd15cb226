"""History read + prompt rebuild latency, and client egress per turn, printed as tables.

    python -m router.tooling.bench.history_bench [--redis-url URL | --own-redis] [--quick]

Latency: one orchestrator turn's store work on the time-to-first-token path, measured for
sessions of 10, 100 and 1,000 turns stored in a local Redis (and in memory, for reference):
"read" is the one round trip that stores the user message and reads the history; "rebuild"
decodes it, prunes it to the budget and builds the forwarded body.

Egress: the request body bytes a client sends on each turn of one conversation when it keeps
the history itself (stateless client) vs when the router keeps it (orchestrator).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from router.config import StoreSettings
from router.orchestrator.history import decode_history, encode_entry, prompt_body
from router.orchestrator.prune import Budget, build_prompt
from router.orchestrator.tokenizer import bpe_tokenizer
from router.store import MemoryStore, SessionStore
from router.store.redis import RedisStore
from router.tooling.fleet import RedisServer

WORDS = (
    "the cache router worker session prefix token model reply question answer budget "
    "history prompt stream latency memory block page kernel batch decode prefill"
).split()
SYSTEM = {"role": "system", "content": "You are a helpful assistant. Answer concisely."}
HISTORY_HEADER_BYTES = len("x-kvrouter-history: server\r\n")


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def conversation(turns: int, seed: int = 7) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """`turns` (user, assistant) pairs: ~40-word questions, ~120-word answers."""
    rng = random.Random(seed)
    return [
        ({"role": "user", "content": text(rng, 40)},
         {"role": "assistant", "content": text(rng, 120)})
        for _ in range(turns)
    ]  # fmt: skip


async def populate(store: SessionStore, session: str, turns: int) -> int:
    count = (await bpe_tokenizer("cl100k_base", 4).count([SYSTEM]))[0]
    tokenizer = bpe_tokenizer("cl100k_base", 4)
    await store.append_history("bench", session, "t0:sys", [encode_entry("t0", count, SYSTEM)])
    size = 0
    for i, (user, reply) in enumerate(conversation(turns)):
        counts = await tokenizer.count([user, reply])
        entries = [encode_entry(f"t{i}", counts[0], user), encode_entry(f"t{i}", counts[1], reply)]
        size += sum(len(e) for e in entries)
        await store.append_history("bench", session, f"t{i}:user", entries[:1])
        await store.append_history("bench", session, f"t{i}:reply", entries[1:])
    return size


async def one_turn(store: SessionStore, session: str, budget: Budget) -> tuple[float, float]:
    """The store work of one orchestrator turn before forwarding: store the user message and
    read the history (one round trip), decode, prune, and build the forwarded body. The op id
    is the same every time, so after the first call the append is skipped (the history stays
    at its size) while the script still runs in full otherwise."""
    new = [{"role": "user", "content": "and one more question about the cache"}]
    entries = [encode_entry("bench-turn", 12, new[0])]
    started = time.perf_counter()
    stored = await store.read_and_append_history("bench", session, "bench-turn:user", entries)
    read = time.perf_counter()
    prompt = build_prompt(decode_history(stored), new, [12], budget)
    prompt_body({"model": "m", "messages": new, "max_tokens": 256}, prompt.messages)
    return read - started, time.perf_counter() - read


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def latency_rows(store: SessionStore, quick: bool) -> list[list[str]]:
    rows = []
    budget = Budget(max_prompt_tokens=262_144, max_tokens=256)
    for turns in (10, 100, 1000):
        session = f"bench-{uuid.uuid4().hex[:8]}"
        size = await populate(store, session, turns)
        runs = (200 if quick else 2000) if turns < 1000 else (50 if quick else 300)
        for _ in range(min(runs, 20)):
            await one_turn(store, session, budget)
        samples = [await one_turn(store, session, budget) for _ in range(runs)]
        await store.forget("bench", session)
        reads = [s[0] * 1000 for s in samples]
        rebuilds = [s[1] * 1000 for s in samples]
        totals = [(s[0] + s[1]) * 1000 for s in samples]
        rows.append([
            store.name, str(turns), f"{size / 1024:.0f}",
            f"{statistics.median(reads):.3f}", f"{percentile(reads, 0.99):.3f}",
            f"{statistics.median(rebuilds):.3f}", f"{percentile(rebuilds, 0.99):.3f}",
            f"{statistics.median(totals):.3f}", f"{percentile(totals, 0.99):.3f}",
        ])  # fmt: skip
    return rows


def egress_rows(turns: int = 100) -> tuple[list[list[str]], tuple[int, int]]:
    """Body bytes per turn for both patterns on the same conversation."""
    pairs = conversation(turns)
    history: list[dict[str, Any]] = [SYSTEM]
    rows, totals = [], [0, 0]
    for i, (user, reply) in enumerate(pairs, start=1):
        stateless = len(orjson.dumps({"model": "m", "messages": [*history, user]}))
        first = [SYSTEM, user] if i == 1 else [user]
        server = len(orjson.dumps({"model": "m", "messages": first})) + HISTORY_HEADER_BYTES
        history += [user, reply]
        totals[0] += stateless
        totals[1] += server
        if i in (1, 2, 10, 50, 100, 1000):
            rows.append([str(i), str(stateless), str(server), f"{stateless / server:.1f}x"])
    return rows, (totals[0], totals[1])


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |"
            for r in rows]  # fmt: skip
    return "\n".join([line, rule, *body])


async def main(ns: argparse.Namespace) -> int:
    bpe_tokenizer("cl100k_base", 4)
    gc.freeze()  # as `kvrouter serve` does once started
    stores: list[SessionStore] = [MemoryStore()]
    redis = RedisStore(
        StoreSettings(url=ns.redis_url, key_prefix=f"kvrbench-{uuid.uuid4().hex[:8]}")
    )
    stores.append(redis)
    rows: list[list[str]] = []
    try:
        for store in stores:
            rows += await latency_rows(store, ns.quick)
    finally:
        await redis.close()
    print("History read + prompt rebuild (ms): one turn's work before it is forwarded")
    print(table(["store", "turns", "KiB", "read p50", "read p99", "rebuild p50", "rebuild p99",
                 "total p50", "total p99"], rows))  # fmt: skip
    target = next(r for r in rows if r[0] == "redis" and r[1] == "100")
    verdict = "met" if float(target[8]) <= 2.0 else "NOT met"
    print(f"\nTarget p99 <= 2 ms for a 100-turn session on Redis: {target[8]} ms ({verdict})\n")
    egress, (stateless, server) = egress_rows(ns.egress_turns)
    print(f"Client egress per turn (request body bytes), one {ns.egress_turns}-turn conversation")
    print(table(["turn", "stateless client", "orchestrator", "ratio"], egress))
    print(f"\nTotal over {ns.egress_turns} turns: stateless {stateless / 1024:.0f} KiB, "
          f"orchestrator {server / 1024:.1f} KiB ({stateless / server:.0f}x less)")  # fmt: skip
    return 0


def add_redis_arguments(parser: argparse.ArgumentParser) -> None:
    """`--redis-url`, or `--own-redis` for a private redis-server (see `run_on_redis`)."""
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--own-redis", action="store_true", help="start a private redis-server on a free port"
    )


def run_on_redis(
    main: Callable[[argparse.Namespace], Awaitable[int]], ns: argparse.Namespace
) -> int:
    """Run `main(ns)` on uvloop (when installed) against `ns.redis_url`, or against a private
    redis-server started for the run and stopped by PID after it (`--own-redis`)."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if not ns.own_redis:
        return asyncio.run(main(ns))
    server = RedisServer().start()
    try:
        ns.redis_url = server.url
        return asyncio.run(main(ns))
    finally:
        server.stop()


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_redis_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--egress-turns", type=int, default=100)
    return run_on_redis(main, parser.parse_args())

if __name__ == "__main__":
    raise SystemExit(cli())
