"""A small multi-turn chat load: sessions that resend their growing history every turn.

Used by `kvrouter demo --load` and the tests; the full locust workload lives in loadtests/.
The summary says whether placement kept each session with its cache: how many follow-up turns
went to the previous turn's worker, and how much of the history (beyond the system prompt that
every worker caches anyway) was served from cache.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import orjson

SYSTEM_PROMPT = (
    "You are a careful assistant for a platform engineering team. Answer briefly, cite the "
    "configuration keys you rely on, and say when you are unsure."
)
TOPICS = ("autoscaling", "KV cache", "tensor parallelism", "quantisation", "batching", "LoRA")


@dataclass(frozen=True, slots=True)
class Turn:
    session: str
    turn: int
    status: int
    worker: str
    route: str
    prompt_tokens: int
    cached_tokens: int
    seconds: float
    error: str = ""
    completion_tokens: int = 0


# KV-cache block size: caches hold whole blocks (vLLM's default and the simulated worker's).
BLOCK_TOKENS = 16


@dataclass(slots=True)
class LoadReport:
    turns: list[Turn] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def errors(self) -> list[Turn]:
        return [t for t in self.turns if t.status != 200]

    def _follow_ups(self) -> list[tuple[Turn, Turn]]:
        """(previous turn, turn) for every successful turn after a successful first one."""
        by_session: dict[str, dict[int, Turn]] = {}
        for t in self.turns:
            if t.status == 200:
                by_session.setdefault(t.session, {})[t.turn] = t
        return [
            (turns[t.turn - 1], t)
            for turns in by_session.values()
            for t in turns.values()
            if t.turn > 1 and t.turn - 1 in turns
        ]

    def same_worker_share(self) -> float:
        """Share of follow-up turns (turn > 1 whose previous turn succeeded) served by the
        worker that served the previous turn: where the session's history is cached."""
        pairs = self._follow_ups()
        return sum(1 for prev, t in pairs if t.worker == prev.worker) / len(pairs) if pairs else 0.0

    def shared_prefix_tokens(self) -> int:
        """S: the most cached tokens any first turn got. A first turn can only find the prefix
        every session shares (the system prompt: each user message starts with its session
        id), so S is the shared system prompt's cached length, in whole blocks."""
        return max((t.cached_tokens for t in self.turns if t.turn == 1 and t.status == 200),
                   default=0)  # fmt: skip

    def history_cached_share(self, block: int = BLOCK_TOKENS) -> float:
        """Share of history tokens served from cache, over the follow-up turns:

            sum(min(H, max(0, cached - S))) / sum(H),
            H = floor((prompt_prev + completion_prev) / block) * block - S

        where prompt_prev + completion_prev is the conversation up to the end of the
        previous turn (which this turn's prompt starts with), `block` the KV block size (a
        cache holds whole blocks, so the last partial block never counts), cached this turn's
        cached prompt tokens, and S `shared_prefix_tokens()`. The shared system prompt is
        cached on every worker, so it is left out of both sides: what remains is the part of
        the cache only the right placement gives. Perfect affinity with no eviction scores
        100 %."""
        shared = self.shared_prefix_tokens()
        history = cached = 0
        for prev, t in self._follow_ups():
            own = (prev.prompt_tokens + prev.completion_tokens) // block * block - shared
            history += max(0, own)
            cached += min(max(0, own), max(0, t.cached_tokens - shared))
        return cached / history if history else 0.0

    def cached_ratio(self) -> float:
        prompt = sum(t.prompt_tokens for t in self.turns)
        return sum(t.cached_tokens for t in self.turns) / prompt if prompt else 0.0

    def sessions_on_one_worker(self) -> float:
        seen: dict[str, set[str]] = {}
        for t in self.turns:
            if t.status == 200:
                seen.setdefault(t.session, set()).add(t.worker)
        return sum(1 for s in seen.values() if len(s) == 1) / len(seen) if seen else 0.0

    def latency(self, q: float) -> float:
        values = sorted(t.seconds for t in self.turns if t.status == 200)
        return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0

    def table(self) -> str:
        per_worker = Counter(t.worker for t in self.turns if t.status == 200)
        rows = [
            ("requests", f"{len(self.turns)}"),
            ("errors", f"{len(self.errors)}"),
            ("throughput", f"{len(self.turns) / max(self.wall_seconds, 1e-9):.1f} req/s"),
            ("follow-up turns on the previous turn's worker", f"{self.same_worker_share():.1%}"),
            ("history tokens served from cache", f"{self.history_cached_share():.1%}"),
            ("prompt tokens served from cache (any)", f"{self.cached_ratio():.1%}"),
            ("sessions that stayed on one worker", f"{self.sessions_on_one_worker():.1%}"),
            ("latency p50 / p99", f"{self.latency(0.5) * 1e3:.0f} ms / "
                                  f"{self.latency(0.99) * 1e3:.0f} ms"),
            ("turns per worker", ", ".join(f"{w}={n}" for w, n in sorted(per_worker.items()))),
        ]  # fmt: skip
        width = max(len(k) for k, _ in rows)
        lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  {'-' * 24}"]
        lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
        return "\n".join(lines)


def _user_message(rng: random.Random, session: str, turn: int) -> str:
    """Starts with the session id, so no two sessions share more than the system prompt."""
    topic = rng.choice(TOPICS)
    return (f"[{session}] Turn {turn}: how does {topic} interact with our deployment of "
            f"{rng.randrange(1000)}?")  # fmt: skip


async def _one_session(
    http: aiohttp.ClientSession,
    url: str,
    session_id: str,
    turns: int,
    rng: random.Random,
    report: LoadReport,
    on_turn: Callable[[Turn], None] | None,
) -> None:
    messages: list[dict[str, str]] = [{"role": "system", "content": SYSTEM_PROMPT}]
    for turn in range(1, turns + 1):
        messages.append({"role": "user", "content": _user_message(rng, session_id, turn)})
        body = orjson.dumps({"model": "sim-model", "messages": messages, "max_tokens": 24})
        started = time.perf_counter()
        result = await _post_turn(http, url, session_id, turn, body, started)
        report.turns.append(result[0])
        if on_turn:
            on_turn(result[0])
        if result[1] is None:
            return
        messages.append({"role": "assistant", "content": result[1]})


async def _post_turn(
    http: aiohttp.ClientSession, url: str, session_id: str, turn: int, body: bytes, started: float
) -> tuple[Turn, str | None]:
    headers = {"x-session-id": session_id, "content-type": "application/json"}
    try:
        async with http.post(url + "/v1/chat/completions", data=body, headers=headers) as resp:
            payload = await resp.read()
            elapsed = time.perf_counter() - started
            worker = resp.headers.get("x-kvrouter-worker", "")
            route = resp.headers.get("x-kvrouter-route", "")
            if resp.status != 200:
                text = payload.decode(errors="replace")[:200]
                return Turn(session_id, turn, resp.status, worker, route, 0, 0, elapsed, text), None
    except (aiohttp.ClientError, TimeoutError) as err:
        elapsed = time.perf_counter() - started
        return Turn(session_id, turn, 0, "", "", 0, 0, elapsed, repr(err)), None
    doc = orjson.loads(payload)
    usage = doc.get("usage") or {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reply = doc["choices"][0]["message"]["content"]
    turn_result = Turn(
        session_id, turn, 200, worker, route, usage.get("prompt_tokens", 0), cached, elapsed,
        completion_tokens=usage.get("completion_tokens", 0),
    )
    return turn_result, reply


async def run_chat_load(
    url: str,
    sessions: int = 40,
    turns: int = 4,
    concurrency: int = 16,
    seed: int = 7,
    prefix: str = "demo",
    on_turn: Callable[[Turn], None] | None = None,
    timeout: float = 60.0,
) -> LoadReport:
    """Run `sessions` chats of `turns` turns, at most `concurrency` sessions at once."""
    report = LoadReport()
    gate = asyncio.Semaphore(concurrency)
    client_timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=5)

    async def one(index: int, http: aiohttp.ClientSession) -> None:
        async with gate:
            rng = random.Random(seed * 100_003 + index)
            await _one_session(http, url, f"{prefix}-{index}", turns, rng, report, on_turn)

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as http:
        await asyncio.gather(*(one(i, http) for i in range(sessions)))
    report.wall_seconds = time.perf_counter() - started
    return report
