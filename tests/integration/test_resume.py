"""A worker killed (SIGKILL) while it streams costs a pause, not the answers: every stream it
was serving is continued on another worker and each client gets one stream, equal byte for
byte (in its text) to the answer an undisturbed worker gives: one id, one role, one finish,
one `[DONE]`, no error event. Real processes, real sockets; the simulated worker continues an
answer exactly (router/sim/chat.py), so this tests the router's stitching, not the generator.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import FAST_HEALTH, counted

pytestmark = pytest.mark.slow

STREAMS = 50
TOKENS = 40
SLOW = ("--time-scale", "1", "--decode-ms-per-token", "25", "--decode-batch-penalty", "0")


def request_body(i: int, *, chat: bool, usage: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "sim-model", "max_tokens": TOKENS, "stream": True}
    text = f"question {i}: how do caches and batches and queues relate, case {i * 7}?"
    if chat:
        body["messages"] = [{"role": "system", "content": "be brief"},
                            {"role": "user", "content": text}]  # fmt: skip
    else:
        body["prompt"] = text
    if usage:
        body["stream_options"] = {"include_usage": True}
    return body


def events(body: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: {")]


def text_of(found: list[dict[str, Any]], chat: bool) -> str:
    parts = []
    for event in found:
        for choice in event.get("choices", []):
            parts.append((choice.get("delta", {}).get("content") if chat else choice.get("text"))
                         or "")  # fmt: skip
    return "".join(parts)


class Stream:
    def __init__(self) -> None:
        self.worker = ""
        self.body = b""
        self.status = 0
        self.started = asyncio.Event()


async def stream(http: aiohttp.ClientSession, url: str, path: str, body: dict[str, Any],
                 session: str, out: Stream) -> None:  # fmt: skip
    async with http.post(url + path, json=body, headers={"x-session-id": session}) as resp:
        out.status, out.worker = resp.status, resp.headers.get("x-kvrouter-worker", "")
        async for chunk in resp.content.iter_any():
            out.body += chunk
            if b'"content":"' in out.body or b'"text":"' in out.body:
                out.started.set()
    out.started.set()


async def undisturbed(http: aiohttp.ClientSession, url: str, path: str,
                      body: dict[str, Any]) -> bytes:  # fmt: skip
    async with http.post(url + path, json=body) as resp:
        assert resp.status == 200
        return await resp.read()


async def kill_mid_answer(sim_fleet, router_in_process, http, *, chat: bool, usage: bool = False,
                          extra: tuple[str, ...] = (), engine: str = "vllm") -> None:  # fmt: skip
    fleet = sim_fleet(3, *SLOW, *extra)
    path = "/v1/chat/completions" if chat else "/v1/completions"
    settings = fleet.settings(
        engine=engine, health=FAST_HEALTH, load={"enabled": False},
        routing={"policy": "consistent_hash", "slow_start": {"window": 0}},
    )  # fmt: skip
    bodies = [request_body(i, chat=chat, usage=usage) for i in range(STREAMS)]
    async with router_in_process(settings) as url:
        streams = [Stream() for _ in bodies]
        tasks = [
            asyncio.create_task(stream(http, url, path, body, f"s{i}", out))
            for i, (body, out) in enumerate(zip(bodies, streams, strict=True))
        ]
        async with asyncio.timeout(20):
            await asyncio.gather(*(s.started.wait() for s in streams))
        victim = Counter(s.worker for s in streams).most_common(1)[0][0]
        cut = [i for i, s in enumerate(streams) if s.worker == victim and b"[DONE]" not in s.body]
        fleet.kill(fleet.names.index(victim))
        async with asyncio.timeout(60):
            await asyncio.gather(*tasks)
        assert len(cut) >= 5, f"only {len(cut)} streams were mid-answer on {victim}"
        resumed = await counted(http, url, "kvrouter_stream_resumes_total",
                                outcome="resumed", reason="stream")  # fmt: skip
        assert resumed >= len(cut) - 1, (resumed, len(cut))  # one may have ended in time
        pauses = await counted(http, url, "kvrouter_stream_resume_pause_seconds_bucket", le="+Inf")
        assert pauses == resumed
        survivor = next(u for n, u in zip(fleet.names, fleet.urls, strict=True) if n != victim)
        expectations = await asyncio.gather(*(undisturbed(http, survivor, path, b) for b in bodies))
        for i, (got, expected) in enumerate(zip(streams, expectations, strict=True)):
            assert got.status == 200, (i, got.status)
            assert b"event: error" not in got.body, (i, got.body[-300:])
            assert got.body.count(b"[DONE]") == 1 and got.body.endswith(b"data: [DONE]\n\n"), i
            mine, theirs = events(got.body), events(expected)
            assert text_of(mine, chat) == text_of(theirs, chat), (i, i in cut)
            assert len({e["id"] for e in mine}) == 1 and len({e["created"] for e in mine}) == 1
            finishes = [c["finish_reason"] for e in mine for c in e["choices"]
                        if c.get("finish_reason")]  # fmt: skip
            assert finishes == ["length"], (i, finishes)
            if chat:
                roles = [c["delta"]["role"] for e in mine for c in e["choices"]
                         if "role" in c.get("delta", {})]  # fmt: skip
                assert roles == ["assistant"], (i, roles)
            if usage:  # derived exactly: the sim sends one event per token
                counts = ("prompt_tokens", "completion_tokens", "total_tokens")
                assert [{k: e["usage"][k] for k in counts} for e in mine if e.get("usage")] == [
                    {k: e["usage"][k] for k in counts} for e in theirs if e.get("usage")
                ], i


async def test_fifty_streams_survive_their_worker_killed_mid_answer(
    sim_fleet, router_in_process, http
):
    await kill_mid_answer(sim_fleet, router_in_process, http, chat=True, usage=True)


async def test_completion_streams_survive_their_worker_killed_mid_answer(
    sim_fleet, router_in_process, http
):
    await kill_mid_answer(sim_fleet, router_in_process, http, chat=False)


async def test_on_llamacpp_workers_the_echoed_text_is_not_sent_twice(
    sim_fleet, router_in_process, http
):
    await kill_mid_answer(
        sim_fleet, router_in_process, http, chat=True, extra=("--echo-prefill",),
        engine="llamacpp",
    )  # fmt: skip
