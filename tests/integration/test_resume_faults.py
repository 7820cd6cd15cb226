"""Resuming and retrying against workers that misbehave on purpose (a raw socket server beside
real simulated workers): a stream cut twice is resumed twice, a third cut is refused; a
request that cannot be continued ends with the error event and its reason counted; a
non-streamed body that breaks is retried whole while it fits the buffer, and not past it."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.conftest import counted
from tests.integration.test_faults_worker import CASE_SECONDS, FaultyWorker, router_for

pytestmark = pytest.mark.slow

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
        "stream": True}  # fmt: skip


async def post(http, url: str, body: dict, session: str = "s") -> tuple[int, bytes]:
    headers = {"x-session-id": session}
    async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
        return resp.status, await resp.read()


def session_walking(root, *order: str) -> str:
    """A session id whose placement tries the workers in `order` first (the ring walk)."""
    for i in range(2000):
        key, tried = f"default\x1fs{i}", []
        for _ in order:
            tried.append(root.balancer.choose(key, exclude=tried).worker.name)
        if tried == list(order):
            return f"s{i}"
    raise AssertionError(f"no session walks {order}")


def contents(body: bytes) -> str:
    return "".join(
        (choice.get("delta", {}).get("content") or "")
        for line in body.split(b"\n") if line.startswith(b"data: {")
        for choice in orjson.loads(line[6:]).get("choices", [])
    )  # fmt: skip


async def test_a_stream_cut_twice_is_resumed_twice_and_a_third_cut_is_refused(sim_fleet, http):
    good = sim_fleet(1, "--time-scale", "0").urls[0]
    async with asyncio.timeout(CASE_SECONDS), FaultyWorker("reset_mid_stream") as first, \
            FaultyWorker("reset_mid_stream") as second:  # fmt: skip
        async with router_for(first.url, second.url, good) as (url, root):
            status, body = await post(http, url, CHAT, session_walking(root, "w0", "w1"))
            assert status == 200 and b"event: error" not in body, body[-300:]
            assert body.count(b"[DONE]") == 1 and contents(body).startswith("HeHe")
            assert await counted(
                http, url, "kvrouter_stream_resumes_total", outcome="resumed", reason="stream"
            ) == 2
    faulty = [FaultyWorker("reset_mid_stream") for _ in range(3)]
    async with asyncio.timeout(CASE_SECONDS), faulty[0] as a, faulty[1] as b, faulty[2] as c:
        async with router_for(a.url, b.url, c.url, good) as (url, root):
            session = session_walking(root, "w0", "w1", "w2")
            status, body = await post(http, url, CHAT, session)
            assert b"event: error" in body and b"[DONE]" not in body
            assert contents(body) == "HeHeHe"
            assert await counted(
                http, url, "kvrouter_stream_resumes_total", outcome="refused", reason="too_many"
            ) == 1


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"n": 2}, "n"), ({"logprobs": True}, "logprobs"),
     ({"response_format": {"type": "json_object"}}, "structured_output")],
)  # fmt: skip
async def test_a_stream_that_cannot_be_continued_ends_with_the_error_event(
    sim_fleet, http, change, reason
):
    good = sim_fleet(1, "--time-scale", "0").urls[0]
    async with asyncio.timeout(CASE_SECONDS), FaultyWorker("reset_mid_stream") as bad:
        async with router_for(bad.url, good) as (url, root):
            status, body = await post(http, url, {**CHAT, **change}, session_walking(root, "w0"))
            assert status == 200 and b"upstream_stream_broken" in body
            assert await counted(
                http, url, "kvrouter_stream_resumes_total", outcome="refused", reason=reason
            ) == 1


async def test_a_broken_body_is_retried_whole_while_it_fits_the_buffer(sim_fleet, http):
    good = sim_fleet(1, "--time-scale", "0").urls[0]
    body = {**CHAT, "stream": False}
    async with asyncio.timeout(CASE_SECONDS), FaultyWorker("chunked_broken") as bad:
        async with router_for(bad.url, good) as (url, root):
            status, answer = await post(http, url, body, session_walking(root, "w0"))
            assert status == 200 and orjson.loads(answer)["choices"][0]["message"]["content"]
            assert await counted(http, url, "kvrouter_body_retries_total", outcome="retried") == 1
        async with router_for(bad.url, good, retries={"buffer_bytes": 8}) as (url, root):
            status, answer = await post(http, url, body, session_walking(root, "w0"))
            assert status == 200 and answer.startswith(b'{"choices": [') and len(answer) < 100
            assert await counted(http, url, "kvrouter_body_retries_total", outcome="past_cap") == 1
