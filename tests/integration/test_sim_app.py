"""The simulator's app in process: isolation between apps and load-dependent timing."""

from __future__ import annotations

import asyncio
import base64
import time
from array import array
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from router.sim.app import build_sim_app
from router.sim.embeddings import embed_text
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


async def test_embeddings_answer_in_openai_shape_in_input_order(serve):
    async with (
        serve(SimOptions(name="e", time_scale=0)) as base,
        aiohttp.ClientSession(timeout=TIMEOUT) as http,
    ):
        body = {"model": "m", "input": ["falcon vault", "bread"], "dimensions": 32}
        async with http.post(f"{base}/v1/embeddings", json=body) as resp:
            assert resp.status == 200
            document = await resp.json()
        body = {"input": "bread", "dimensions": 32, "encoding_format": "base64"}
        async with http.post(f"{base}/v1/embeddings", json=body) as resp:
            packed = (await resp.json())["data"][0]["embedding"]
    assert document["object"] == "list" and document["model"] == "m"
    assert [d["index"] for d in document["data"]] == [0, 1]
    assert document["data"][1]["embedding"] == embed_text("bread", 32)
    assert document["usage"]["prompt_tokens"] == 3
    unpacked = array("f", base64.b64decode(packed)).tolist()
    assert unpacked == pytest.approx(embed_text("bread", 32), rel=1e-6)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": []}, "input"),
        ({"input": [1, 2]}, "input"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ],
)
async def test_bad_embeddings_requests_are_a_400_naming_the_field(serve, body, param):
    async with (
        serve(SimOptions(name="e", time_scale=0)) as base,
        aiohttp.ClientSession(timeout=TIMEOUT) as http,
    ):
        async with http.post(f"{base}/v1/embeddings", json=body) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
