"""The router as a reverse proxy: headers, streaming, errors, models, readiness. Real sockets."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import orjson
import pytest
from aiohttp import web

from router.config import parse_settings
from router.tooling.launch import free_port
from tests.conftest import FAST_HEALTH, SimFleet, chat_body, healthy, serving

ERROR_KEYS = {"message", "type", "param", "code"}


async def error_of(resp: aiohttp.ClientResponse) -> dict:
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body["error"]) == ERROR_KEYS
    return body["error"]


@pytest.fixture
async def echo_upstream():
    """A real HTTP server that answers with what it received, to check what the router sends."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {"method": request.method, "path": request.path_qs, "headers": dict(request.headers),
             "body": body.decode()},
            headers={"Connection": "keep-alive", "X-Upstream": "yes"},
        )  # fmt: skip

    app = web.Application()
    app.router.add_get("/health", healthy)
    app.router.add_route("*", "/{tail:.*}", echo)
    async with serving(app) as url:
        yield url


def one_worker_settings(url: str, **overrides):
    raw = {"listen": f"127.0.0.1:{free_port()}", "workers": [{"url": url, "name": "echo"}]}
    raw.update(overrides)
    return parse_settings(raw, "test", env={})


async def test_forwards_method_path_and_body_unchanged_with_forwarding_headers(
    echo_upstream, router_in_process, http
):
    async with router_in_process(one_worker_settings(echo_upstream)) as url:
        body = b'{"model": "m", "odd":  "spacing kept"}'
        headers = {"x-session-id": "s1", "Connection": "keep-alive, X-Secret", "X-Secret": "hop",
                   "x-request-id": "req-42", "content-type": "application/json"}  # fmt: skip
        async with http.post(url + "/v1/anything?x=1", data=body, headers=headers) as resp:
            seen = await resp.json()
            assert resp.status == 200
            assert resp.headers["x-kvrouter-worker"] == "echo"
            assert resp.headers["x-kvrouter-route"] == "affinity"
            assert resp.headers["x-request-id"] == "req-42"
            assert resp.headers["X-Upstream"] == "yes"
    assert seen["method"] == "POST" and seen["path"] == "/v1/anything?x=1"
    assert seen["body"] == body.decode()
    sent = {k.lower(): v for k, v in seen["headers"].items()}
    assert "x-secret" not in sent, "headers named by Connection are hop-by-hop"
    assert sent["x-forwarded-for"] == "127.0.0.1"
    assert sent["x-forwarded-proto"] == "http"
    assert sent["x-request-id"] == "req-42"
    assert sent["x-session-id"] == "s1"


async def test_generates_a_request_id_and_marks_unkeyed_requests(
    echo_upstream, router_in_process, http
):
    async with router_in_process(one_worker_settings(echo_upstream)) as url:
        async with http.get(url + "/v1/whatever") as resp:
            assert resp.status == 200
            assert len(resp.headers["x-request-id"]) >= 16
            assert resp.headers["x-kvrouter-route"] == "unkeyed"


async def test_path_outside_proxied_prefixes_is_a_json_404(echo_upstream, router_in_process, http):
    async with router_in_process(one_worker_settings(echo_upstream)) as url:
        async with http.get(url + "/admin/secret") as resp:
            assert resp.status == 404
            assert "no route" in (await error_of(resp))["message"]


async def test_invalid_json_is_a_400_when_a_body_field_is_a_key_source(
    echo_upstream, router_in_process, http
):
    settings = one_worker_settings(echo_upstream, session={"sources": [{"body": "user"}]})
    async with router_in_process(settings) as url:
        async with http.post(url + "/v1/chat/completions", data=b"{not json") as resp:
            assert resp.status == 400
            error = await error_of(resp)
            assert "not valid JSON" in error["message"]
            assert error["type"] == "invalid_request_error"


async def test_body_over_the_limit_is_a_413(echo_upstream, router_in_process, http):
    settings = one_worker_settings(echo_upstream, limits={"max_body_bytes": 2048})
    async with router_in_process(settings) as url:
        async with http.post(url + "/v1/completions", data=b"x" * 5000) as resp:
            assert resp.status == 413
            assert "max_body_bytes" in (await error_of(resp))["message"]

        async def chunked():
            for _ in range(10):
                yield b"y" * 1000

        async with http.post(url + "/v1/completions", data=chunked()) as resp:
            assert resp.status == 413
            await error_of(resp)


async def test_session_id_is_read_from_a_nested_body_field(sim_fleet, router_in_process, http):
    fleet = sim_fleet(4, "--time-scale", "0")
    settings = fleet.settings(session={"sources": [{"body": "metadata.session_id"}]})
    async with router_in_process(settings) as url:
        workers = set()
        for _ in range(5):
            body = chat_body(metadata={"session_id": "nested-7"})
            async with http.post(url + "/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
                assert resp.headers["x-kvrouter-route"] == "affinity"
                workers.add(resp.headers["x-kvrouter-worker"])
        assert len(workers) == 1


async def test_streaming_is_incremental(sim_fleet, router_in_process, http):
    fleet = sim_fleet(1, "--decode-ms-per-token", "60", "--prefill-ms-per-token", "0")
    async with router_in_process(fleet.settings()) as url:
        started = time.perf_counter()
        body = chat_body(max_tokens=12, stream=True)
        arrivals = []
        async with http.post(url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/event-stream"
            async for chunk in resp.content.iter_any():
                arrivals.append((time.perf_counter() - started, chunk))
    text = b"".join(c for _, c in arrivals)
    assert text.rstrip().endswith(b"data: [DONE]")
    first, last = arrivals[0][0], arrivals[-1][0]
    assert last - first > 0.4, "chunks must arrive spread over the generation, not at the end"
    assert first < 0.4


async def test_client_disconnect_cancels_the_upstream_request(sim_fleet, router_in_process, http):
    fleet = sim_fleet(1, "--decode-ms-per-token", "100")
    worker = fleet.workers[0]
    async with router_in_process(fleet.settings()) as url:
        body = chat_body(max_tokens=200, stream=True)
        async with http.post(url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            await resp.content.readany()
            resp.close()
        deadline = time.monotonic() + 5
        stats = {}
        while time.monotonic() < deadline:
            async with http.get(worker.url + "/sim/stats") as resp:
                stats = await resp.json()
            if stats["cancelled"] >= 1:
                break
            await asyncio.sleep(0.1)
        assert stats["cancelled"] == 1 and stats["running"] == 0
        async with http.get(url + "/metrics") as resp:
            assert "kvrouter_client_disconnects_total 1.0" in await resp.text()


async def test_stream_broken_by_the_worker_ends_with_an_sse_error_event(
    sim_fleet, router_in_process, http
):
    fleet = sim_fleet(1, "--drop-after-chunks", "3", "--time-scale", "0")
    async with router_in_process(fleet.settings()) as url:
        body = chat_body(max_tokens=20, stream=True)
        async with http.post(url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            text = await resp.text()
    assert text.count("data: {") >= 3
    assert "event: error" in text and "upstream_stream_broken" in text


async def test_retryable_status_is_retried_on_another_worker(sim_fleet, router_in_process, http):
    fleet = sim_fleet(2, "--time-scale", "0")
    async with router_in_process(fleet.settings()) as url:
        async with http.post(
            url + "/v1/chat/completions", json=chat_body(), headers={"x-session-id": "r1"}
        ) as resp:
            home = resp.headers["x-kvrouter-worker"]
        other = next(w for w in fleet.workers if w.name != home)
        async with http.post(
            fleet.by_name(home).url + "/sim/fault", json={"error_rate": 1.0, "error_status": 503}
        ) as resp:
            assert resp.status == 200
        async with http.post(
            url + "/v1/chat/completions", json=chat_body(), headers={"x-session-id": "r1"}
        ) as resp:
            assert resp.status == 200
            assert resp.headers["x-kvrouter-worker"] == other.name
            assert resp.headers["x-kvrouter-route"] == "fallback"


# Bad workers stay in rotation, so every attempt goes where the retry logic sends it.
KEEP_BAD_WORKERS = {**FAST_HEALTH, "passive": {"consecutive_failures": 1000}}


async def requests_seen(http, fleet: SimFleet) -> Counter[str]:
    """Completion requests each simulated worker has received so far."""
    seen: Counter[str] = Counter()
    for worker in fleet.workers:
        async with http.get(worker.url + "/sim/stats") as resp:
            seen[worker.name] = (await resp.json())["requests"]
    return seen


async def tries_of_one_request(http, url: str, fleet: SimFleet, session: str):
    """(status, worker header, tries per worker) of one request, from the workers' counters."""
    before = await requests_seen(http, fleet)
    headers = {"x-session-id": session}
    async with http.post(url + "/v1/chat/completions", json=chat_body(), headers=headers) as resp:
        await resp.read()
        status, worker = resp.status, resp.headers.get("x-kvrouter-worker")
    tries = await requests_seen(http, fleet) - before
    return status, worker, tries


async def test_retries_stop_after_retries_attempts_and_never_revisit_a_worker(
    sim_fleet, router_in_process, http
):
    fleet = sim_fleet(4, "--time-scale", "0", "--error-rate", "1", "--error-status", "503")
    for attempts in (0, 1, 2, 3):
        settings = fleet.settings(retries={"attempts": attempts}, health=KEEP_BAD_WORKERS)
        async with router_in_process(settings) as url:
            for n in range(4):
                status, worker, tries = await tries_of_one_request(
                    http, url, fleet, f"retry-{attempts}-{n}"
                )
                assert status == 503, (attempts, status)
                assert sum(tries.values()) == attempts + 1, (attempts, dict(tries))
                assert max(tries.values()) == 1, f"a worker was tried twice: {dict(tries)}"
                assert worker in tries, "the client sees the answer of a worker that was tried"


async def test_a_request_retried_past_three_bad_workers_is_served_by_the_good_one(
    sim_fleet, router_in_process, http
):
    fleet = sim_fleet(4, "--time-scale", "0")
    good = fleet.workers[0]
    for worker in fleet.workers[1:]:
        async with http.post(
            worker.url + "/sim/fault", json={"error_rate": 1.0, "error_status": 502}
        ) as resp:
            assert resp.status == 200
    settings = fleet.settings(retries={"attempts": 3}, health=KEEP_BAD_WORKERS)
    async with router_in_process(settings) as url:
        longest = 0
        for n in range(20):
            status, worker, tries = await tries_of_one_request(http, url, fleet, f"user-{n}")
            assert status == 200 and worker == good.name, (status, worker, dict(tries))
            assert tries[good.name] == 1 and max(tries.values()) == 1, dict(tries)
            longest = max(longest, sum(tries.values()))
    assert longest == 4, "some session's first three choices should all be bad workers"


async def test_models_answer_from_healthy_workers_when_one_is_down(
    sim_fleet, router_in_process, http
):
    fleet = sim_fleet(2, "--time-scale", "0")
    settings = fleet.settings()
    fleet.workers[1].stop()
    async with router_in_process(settings) as url:
        for _ in range(3):
            async with http.get(url + "/v1/models") as resp:
                assert resp.status == 200
                listing = await resp.json()
                assert [m["id"] for m in listing["data"]] == ["sim-model"]


async def test_no_healthy_worker_gives_503_with_retry_after_and_readyz_fails(
    sim_fleet, router_in_process, http
):
    fleet = sim_fleet(1, "--time-scale", "0")
    settings = fleet.settings()
    async with router_in_process(settings) as url:
        async with http.get(url + "/readyz") as resp:
            assert resp.status == 200
        async with http.post(fleet.workers[0].url + "/sim/fault", json={"fail_health": True}):
            pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            async with http.get(url + "/readyz") as resp:
                if resp.status == 503:
                    break
            await asyncio.sleep(0.1)
        assert resp.status == 503
        async with http.get(url + "/healthz") as resp:
            assert resp.status == 200
        async with http.post(url + "/v1/chat/completions", json=chat_body()) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "1"
            assert (await error_of(resp))["code"] == "no_healthy_worker"


async def test_metrics_count_requests_and_cached_prompt_tokens(sim_fleet, router_in_process, http):
    fleet = sim_fleet(2, "--time-scale", "0")
    async with router_in_process(fleet.settings()) as url:
        messages = [{"role": "system", "content": "You are terse. " * 30}]
        for turn in range(3):
            messages.append({"role": "user", "content": f"question {turn}"})
            body = {"model": "sim-model", "messages": messages, "max_tokens": 5}
            async with http.post(
                url + "/v1/chat/completions", json=body, headers={"x-session-id": "m1"}
            ) as resp:
                reply = orjson.loads(await resp.read())
            messages.append(reply["choices"][0]["message"])
        async with http.get(url + "/metrics") as resp:
            text = await resp.text()
    assert 'kvrouter_requests_total{route="affinity"' in text
    cached = [line for line in text.splitlines() if line.startswith("kvrouter_cached_prompt")]
    assert cached and float(cached[0].rsplit(" ", 1)[1]) > 0
    assert "kvrouter_time_to_first_byte_seconds_bucket" in text


async def test_a_stream_longer_than_the_request_deadline_ends_with_a_timeout_event(
    sim_fleet, router_in_process, http
):
    fleet = sim_fleet(1, "--decode-ms-per-token", "100", "--prefill-ms-per-token", "0")
    async with router_in_process(fleet.settings(timeouts={"total": 1.0})) as url:
        started = time.perf_counter()
        body = chat_body(max_tokens=100, stream=True)
        async with http.post(url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            text = await resp.text()
        assert time.perf_counter() - started < 3
    assert "event: error" in text and "upstream_timeout" in text and "[DONE]" not in text


async def test_a_gzip_request_body_reaches_the_worker_decoded_without_its_encoding(
    echo_upstream, router_in_process, http
):
    import gzip

    body = b'{"model": "m", "messages": []}'
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    async with router_in_process(one_worker_settings(echo_upstream)) as url:
        async with http.post(url + "/v1/x", data=gzip.compress(body), headers=headers) as resp:
            assert resp.status == 200
            seen = await resp.json()
    assert seen["body"] == body.decode()
    assert "content-encoding" not in {k.lower() for k in seen["headers"]}


async def test_an_api_key_that_is_not_utf8_is_a_401_not_a_500(router_in_process, caplog):
    import hashlib
    import logging

    from tests.raw_http import RecordingWorker, get, send_raw

    auth = {"keys": [{"tenant": "t", "sha256": hashlib.sha256(b"good-key").hexdigest()}]}
    async with RecordingWorker() as worker:
        port = free_port()
        raw = {"listen": f"127.0.0.1:{port}", "workers": [{"url": worker.url}], "auth": auth,
               "load": {"enabled": False}}  # fmt: skip
        async with router_in_process(parse_settings(raw, "test", env={})):
            answer = await send_raw(port, get("/v1/chat", b"Authorization: Bearer \xff\xfe"))
            good = await send_raw(port, get("/v1/chat", b"Authorization: Bearer good-key"))
    assert answer.status == 401, answer.head
    assert good.status == 200 and len(worker.requests) == 1
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
