"""The simulated worker as a real process, spoken to over real HTTP."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = aiohttp.ClientTimeout(total=10)
SYSTEM = {"role": "system", "content": "You are a terse assistant. Answer in a few words."}
QUESTION = {"role": "user", "content": "Why does a router keep a conversation on one worker?"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_answering(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"worker exited with {proc.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1.0):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"worker at {url} did not answer /health within 10 s: {log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def start_sim(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Starts `python -m router.sim` with extra flags and returns its base URL."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*flags: str) -> str:
        port = _free_port()
        log = tmp_path / f"sim-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "router.sim", "--port", str(port), "--name", "w1", *flags],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        _wait_until_answering(url, proc, log)
        return url

    yield start
    for proc in procs:
        _stop(proc)


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        yield session


async def post_json(
    client: aiohttp.ClientSession, url: str, body: Any
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    async with client.post(url, json=body) as resp:
        return resp.status, await resp.json(), resp


async def stats(client: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with client.get(f"{base}/sim/stats") as resp:
        return await resp.json()


async def wait_for_stat(
    client: aiohttp.ClientSession, base: str, key: str, value: int
) -> dict[str, Any]:
    deadline = time.monotonic() + 5.0
    current = await stats(client, base)
    while current[key] != value and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        current = await stats(client, base)
    return current


def sse_payloads(lines: list[bytes]) -> list[bytes]:
    return [line[len(b"data: ") :].strip() for line in lines if line.startswith(b"data: ")]


async def test_chat_completion_returns_openai_shape_and_usage(start_sim, client):
    base = start_sim("--time-scale", "0")
    body = {"model": "sim-model", "messages": [SYSTEM, QUESTION], "max_tokens": 5}
    status, data, resp = await post_json(client, f"{base}/v1/chat/completions", body)
    assert status == 200
    assert resp.headers["x-sim-worker"] == "w1"
    assert data["object"] == "chat.completion"
    assert data["model"] == "sim-model"
    message = data["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert len(message["content"].split()) == 5
    usage = data["usage"]
    assert usage["completion_tokens"] == 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}


async def test_text_completion_returns_text_choice(start_sim, client):
    base = start_sim("--time-scale", "0")
    status, data, _ = await post_json(
        client, f"{base}/v1/completions", {"prompt": "Once upon a time", "max_tokens": 4}
    )
    assert status == 200
    assert data["object"] == "text_completion"
    assert len(data["choices"][0]["text"].split()) == 4


async def test_second_turn_reports_the_earlier_conversation_as_cached(start_sim, client):
    base = start_sim("--time-scale", "0")
    url = f"{base}/v1/chat/completions"
    _, first, _ = await post_json(client, url, {"messages": [SYSTEM, QUESTION], "max_tokens": 20})
    reply = {"role": "assistant", "content": first["choices"][0]["message"]["content"]}
    history = [SYSTEM, QUESTION, reply]
    _, second, _ = await post_json(
        client, url, {"messages": [*history, {"role": "user", "content": "Shorter?"}]}
    )
    _, counted, _ = await post_json(
        client, f"{base}/tokenize", {"messages": history, "add_generation_prompt": False}
    )
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > 0
    assert cached == counted["count"] // 16 * 16
    assert cached > first["usage"]["total_tokens"] - 16


async def test_same_seed_gives_the_same_replies_in_another_process(start_sim, client):
    """Each process gets its own random string-hash salt; replies must not depend on it."""
    same = [start_sim("--time-scale", "0", "--seed", "3") for _ in range(2)]
    other = start_sim("--time-scale", "0", "--seed", "4")
    chat = {"messages": [SYSTEM, QUESTION], "max_tokens": 12}
    text = {"prompt": "Once upon a time", "max_tokens": 12}

    async def replies(base: str) -> tuple[str, str]:
        _, answer, _ = await post_json(client, f"{base}/v1/chat/completions", chat)
        _, completion, _ = await post_json(client, f"{base}/v1/completions", text)
        return answer["choices"][0]["message"]["content"], completion["choices"][0]["text"]

    first, second, third = [await replies(base) for base in (*same, other)]
    assert first == second
    assert first[0] != third[0] and first[1] != third[1]


async def test_stream_delivers_chunks_as_they_are_generated(start_sim, client):
    base = start_sim("--decode-ms-per-token", "50")
    body = {"messages": [QUESTION], "max_tokens": 10, "stream": True}
    start = time.monotonic()
    arrivals: list[float] = []
    async with client.post(f"{base}/v1/chat/completions", json=body) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for line in resp.content:
            if line.startswith(b"data: "):
                arrivals.append(time.monotonic() - start)
    total = arrivals[-1]
    assert total >= 0.45
    assert arrivals[0] < total / 3


async def test_stream_ends_with_finish_reason_usage_and_done(start_sim, client):
    base = start_sim("--time-scale", "0")
    body = {
        "messages": [QUESTION],
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with client.post(f"{base}/v1/chat/completions", json=body) as resp:
        payloads = sse_payloads([line async for line in resp.content])
    assert payloads[-1] == b"[DONE]"
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]).strip()
    assert [c["choices"][0]["finish_reason"] for c in chunks[:3]] == [None, None, None]
    assert chunks[3]["choices"][0]["finish_reason"] == "length"
    assert chunks[4]["choices"] == []
    assert chunks[4]["usage"]["completion_tokens"] == 3
    assert len(chunks) == 5


async def test_text_completion_stream_without_usage_has_no_usage_chunk(start_sim, client):
    base = start_sim("--time-scale", "0")
    body = {"prompt": "abc", "max_tokens": 2, "stream": True}
    async with client.post(f"{base}/v1/completions", json=body) as resp:
        payloads = sse_payloads([line async for line in resp.content])
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    assert payloads[-1] == b"[DONE]"
    assert [c["choices"][0]["text"] != "" for c in chunks] == [True, True, False]
    assert all("usage" not in c for c in chunks)


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/v1/chat/completions", b"{not json"),
        ("/v1/chat/completions", b'{"messages": "hi"}'),
        ("/v1/chat/completions", b"{}"),
        ("/v1/completions", b'{"prompt": 42}'),
        ("/v1/completions", b'{"prompt": "x", "max_tokens": -1}'),
    ],
)
async def test_bad_requests_get_400_with_openai_error(start_sim, client, path, raw):
    base = start_sim("--time-scale", "0")
    headers = {"Content-Type": "application/json"}
    async with client.post(f"{base}{path}", data=raw, headers=headers) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert "Traceback" not in error["message"]


async def test_fail_health_answers_503(start_sim, client):
    base = start_sim("--fail-health")
    async with client.get(f"{base}/health") as resp:
        assert resp.status == 503


async def test_fault_endpoint_toggles_health_and_reports_settings(start_sim, client):
    base = start_sim()
    status, faults, _ = await post_json(client, f"{base}/sim/fault", {"fail_health": True})
    assert status == 200
    assert faults["fail_health"] is True
    async with client.get(f"{base}/health") as resp:
        assert resp.status == 503
    await post_json(client, f"{base}/sim/fault", {"fail_health": False})
    async with client.get(f"{base}/health") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}
    status, _, _ = await post_json(client, f"{base}/sim/fault", {"error_rate": 7})
    assert status == 400


async def test_error_rate_one_answers_every_completion_with_error_status(start_sim, client):
    base = start_sim("--error-rate", "1", "--error-status", "503")
    for _ in range(3):
        status, data, _ = await post_json(
            client, f"{base}/v1/chat/completions", {"messages": [QUESTION]}
        )
        assert status == 503
        assert data["error"]["type"] == "server_error"
    await post_json(client, f"{base}/sim/fault", {"error_rate": 0})
    status, _, _ = await post_json(
        client, f"{base}/v1/completions", {"prompt": "ok now", "max_tokens": 1}
    )
    assert status == 200


async def test_client_disconnect_mid_stream_counts_as_cancelled(start_sim, client):
    base = start_sim("--decode-ms-per-token", "50")
    body = {"messages": [SYSTEM, QUESTION], "max_tokens": 40, "stream": True}
    resp = await client.post(f"{base}/v1/chat/completions", json=body)
    assert (await resp.content.readline()).startswith(b"data: ")
    resp.close()
    after = await wait_for_stat(client, base, "cancelled", 1)
    assert after["cancelled"] == 1
    assert after["completed"] == 0
    assert after["running"] == 0
    assert after["cache_blocks"] == 0


async def test_client_disconnect_during_stall_counts_as_cancelled(start_sim, client):
    base = start_sim("--stall-seconds", "5")
    short = aiohttp.ClientTimeout(total=0.3)
    with pytest.raises(asyncio.TimeoutError):
        await client.post(f"{base}/v1/completions", json={"prompt": "x"}, timeout=short)
    after = await wait_for_stat(client, base, "cancelled", 1)
    assert after["cancelled"] == 1


async def test_drop_after_chunks_breaks_the_stream(start_sim, client):
    base = start_sim("--time-scale", "0", "--drop-after-chunks", "3")
    body = {"messages": [QUESTION], "max_tokens": 10, "stream": True}
    lines: list[bytes] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.post(f"{base}/v1/chat/completions", json=body) as resp:
            async for line in resp.content:
                lines.append(line)
    payloads = sse_payloads(lines)
    assert len(payloads) <= 3
    assert b"[DONE]" not in payloads
    after = await stats(client, base)
    assert (after["dropped"], after["completed"], after["cache_blocks"]) == (1, 0, 0)


async def test_tokenize_counts_prompt_and_chat_tokens(start_sim, client):
    base = start_sim()
    status, data, _ = await post_json(client, f"{base}/tokenize", {"prompt": "hello big world"})
    assert status == 200
    assert data["count"] == 3 == len(data["tokens"])
    assert data["max_model_len"] > 0
    _, chat, _ = await post_json(client, f"{base}/tokenize", {"messages": [QUESTION]})
    status, usage, _ = await post_json(
        client, f"{base}/v1/chat/completions", {"messages": [QUESTION], "max_tokens": 1}
    )
    assert chat["count"] == usage["usage"]["prompt_tokens"]


async def test_models_lists_the_one_served_model(start_sim, client):
    base = start_sim("--model", "tiny-sim")
    async with client.get(f"{base}/v1/models") as resp:
        data = await resp.json()
    assert data["object"] == "list"
    assert [(m["id"], m["owned_by"]) for m in data["data"]] == [("tiny-sim", "kvrouter-sim")]


async def test_metrics_and_stats_count_requests_and_cached_tokens(start_sim, client):
    base = start_sim("--time-scale", "0")
    body = {"messages": [SYSTEM, QUESTION], "max_tokens": 2}
    for _ in range(2):
        await post_json(client, f"{base}/v1/chat/completions", body)
    current = await stats(client, base)
    assert (current["requests"], current["completed"], current["name"]) == (2, 2, "w1")
    assert current["cached_tokens"] > 0
    assert 0 < current["cache_blocks"] <= current["cache_capacity_blocks"]
    async with client.get(f"{base}/metrics") as resp:
        text = await resp.text()
    assert 'sim_requests_total{worker="w1"} 2.0' in text
    assert "sim_cached_prompt_tokens_total" in text
    assert "sim_cache_blocks_used" in text


async def vllm_gauges(client: aiohttp.ClientSession, base: str) -> tuple[float, float, float]:
    """Running, waiting and KV-cache usage as a router scraping vLLM would read them."""
    async with client.get(f"{base}/metrics") as resp:
        text = await resp.text()
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return (
        values["vllm:num_requests_running"],
        values["vllm:num_requests_waiting"],
        values["vllm:kv_cache_usage_perc"],
    )


async def test_batch_limit_queues_requests_in_order_and_metrics_show_it(start_sim, client):
    base = start_sim("--max-running", "2", "--decode-ms-per-token", "25")
    start = time.monotonic()

    async def stream(i: int) -> tuple[float, float]:
        """Seconds from the start to this request's first token and to its end."""
        question = {"role": "user", "content": f"Question {i}: why pin a session?"}
        body = {"messages": [SYSTEM, question], "max_tokens": 40, "stream": True}
        first_token = None
        async with client.post(f"{base}/v1/chat/completions", json=body) as resp:
            async for line in resp.content:
                if first_token is None and line.startswith(b"data: "):
                    first_token = time.monotonic() - start
        assert first_token is not None
        return first_token, time.monotonic() - start

    tasks = []
    for i in range(6):
        tasks.append(asyncio.create_task(stream(i)))
        await asyncio.sleep(0.03)
    await wait_for_stat(client, base, "waiting", 4)
    running, waiting, usage = await vllm_gauges(client, base)
    assert (running, waiting) == (2, 4)
    assert usage > 0.0
    times = await asyncio.gather(*tasks)
    await wait_for_stat(client, base, "running", 0)
    assert await vllm_gauges(client, base) == (0.0, 0.0, 0.0)
    ttft = [first for first, _ in times]
    first_total = max(total for _, total in times[:2])
    assert max(ttft[:2]) < min(ttft[2:4]) < min(ttft[4:])
    assert min(ttft[2:4]) >= 0.9 * min(total for _, total in times[:2])
    assert min(ttft[4:]) >= first_total


async def test_reset_cache_forgets_every_block(start_sim, client):
    base = start_sim("--time-scale", "0")
    await post_json(client, f"{base}/v1/chat/completions", {"messages": [SYSTEM, QUESTION]})
    assert (await stats(client, base))["cache_blocks"] > 0
    status, _, _ = await post_json(client, f"{base}/sim/reset-cache", {})
    assert status == 200
    assert (await stats(client, base))["cache_blocks"] == 0


def test_worker_exits_cleanly_on_sigterm(tmp_path):
    port = _free_port()
    log = tmp_path / "sim.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "router.sim", "--port", str(port), "--name", "term"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_answering(f"http://127.0.0.1:{port}", proc, log)
        proc.terminate()
        assert proc.wait(5) == 0
    finally:
        _stop(proc)
    assert log.read_text().splitlines() == [f"sim worker term listening on http://127.0.0.1:{port}"]
