"""The simulator's app in process: isolation between apps and load-dependent timing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from router.sim.app import build_sim_app
from router.sim.options import SimOptions

TIMEOUT = aiohttp.ClientTimeout(total=10)


@pytest.fixture
def serve() -> Callable[[SimOptions], AbstractAsyncContextManager[str]]:
    @asynccontextmanager
    async def run(opts: SimOptions) -> AsyncIterator[str]:
        server = TestServer(build_sim_app(opts), handler_cancellation=True)
        await server.start_server()
        try:
            yield str(server.make_url("")).rstrip("/")
        finally:
            await server.close()

    return run


async def test_two_apps_in_one_process_keep_separate_state_and_metrics(serve):
    async with (
        serve(SimOptions(name="a", time_scale=0)) as a,
        serve(SimOptions(name="b", time_scale=0)) as b,
        aiohttp.ClientSession(timeout=TIMEOUT) as http,
    ):
        async with http.post(f"{a}/v1/completions", json={"prompt": "x"}) as resp:
            assert resp.headers["x-sim-worker"] == "a"
        async with http.get(f"{b}/sim/stats") as resp:
            assert (await resp.json())["requests"] == 0
        async with http.get(f"{b}/metrics") as resp:
            assert 'sim_requests_total{worker="b"} 0.0' in await resp.text()


async def test_every_response_names_the_worker_even_unknown_paths(serve):
    async with (
        serve(SimOptions(name="named")) as base,
        aiohttp.ClientSession(timeout=TIMEOUT) as http,
        http.get(f"{base}/no/such/path") as resp,
    ):
        assert resp.status == 404
        assert resp.headers["x-sim-worker"] == "named"


async def test_time_to_first_token_grows_with_queued_prefills(serve):
    opts = SimOptions(prefill_ms_per_token=1.0, decode_ms_per_token=1.0, block_size=4)
    async with serve(opts) as base, aiohttp.ClientSession(timeout=TIMEOUT) as http:

        async def first_token_after(text: str) -> float:
            body = {"prompt": text, "max_tokens": 2, "stream": True}
            start = time.monotonic()
            async with http.post(f"{base}/v1/completions", json=body) as resp:
                await resp.content.readline()
                ttft = time.monotonic() - start
                await resp.read()
            return ttft

        prompts = [f"prompt {i} " + "word " * 100 for i in range(3)]
        ttfts = sorted(await asyncio.gather(*(first_token_after(p) for p in prompts)))
    assert ttfts[0] < 0.2
    assert ttfts[2] > 0.28


async def test_cache_hit_shortens_time_to_first_token(serve):
    opts = SimOptions(prefill_ms_per_token=2.0, decode_ms_per_token=0.0)
    body = {"prompt": "context " * 150, "max_tokens": 1}
    async with serve(opts) as base, aiohttp.ClientSession(timeout=TIMEOUT) as http:
        durations = []
        for _ in range(2):
            start = time.monotonic()
            async with http.post(f"{base}/v1/completions", json=body) as resp:
                usage = (await resp.json())["usage"]
            durations.append(time.monotonic() - start)
    assert usage["prompt_tokens_details"]["cached_tokens"] >= 144
    assert durations[0] > 0.25
    assert durations[1] < 0.1
