"""What hostile clients send, over raw sockets to a real router in front of a raw worker: bytes
that are not UTF-8 where a session id or tenant is read, paths with dot-segments, malformed
requests. Each answer is a 4xx (OpenAI-shaped JSON where the router answers) and never a
traceback; the worker sees only what it should. Also a worker's oversized response head."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from router.config import parse_settings
from router.http.common import ROOT
from router.server import running
from router.tooling.launch import free_port
from tests.conftest import FAST_HEALTH, counted
from tests.raw_http import RecordingWorker, get, send_raw


@asynccontextmanager
async def router_before(
    worker: RecordingWorker, router_in_process, **sections
) -> AsyncIterator[int]:
    """A router in this process in front of `worker` alone; yields its port."""
    port = free_port()
    raw = {
        "listen": f"127.0.0.1:{port}",
        "workers": [{"url": worker.url, "name": "raw-0"}],
        "health": FAST_HEALTH,
        "load": {"enabled": False},
        **sections,
    }
    async with router_in_process(parse_settings(raw, "test", env={})):
        yield port


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


NOT_UTF8 = [
    pytest.param(get("/v1/chat", b"x-session-id: a\xffb"), "header 'x-session-id'", id="header"),
    pytest.param(get("/v1/chat", b"x-session-id: \xed\xb3\xbf"), "header 'x-session-id'",
                 id="header-encoded-surrogate"),
    pytest.param(get("/v1/chat", b"x-tenant: t\xfe", b"x-session-id: s"),
                 "tenant header 'x-tenant'", id="tenant"),
    pytest.param(get("/v1/chat?session_id=a%ffb"), "query 'session_id'", id="query"),
    pytest.param(get("/v1/sessions/s1", b"x-tenant: \xc3"), "tenant header 'x-tenant'",
                 id="sessions-api-tenant"),
]  # fmt: skip


@pytest.mark.parametrize(("request_bytes", "named"), NOT_UTF8)
async def test_bytes_that_are_not_utf8_in_a_session_id_or_tenant_are_a_400_naming_it(
    request_bytes: bytes, named: str, router_in_process, caplog
):
    async with RecordingWorker() as worker, router_before(
        worker, router_in_process, session={"tenant_header": "x-tenant"}
    ) as port:
        answer = await send_raw(port, request_bytes)
        assert answer.status == 400, answer.head
        error = answer.error()
        assert error["code"] == "bad_request"
        assert named in error["message"] and "UTF-8" in error["message"], error
        assert worker.requests == []
        good = await send_raw(port, get("/v1/chat", b"x-session-id: caf\xc3\xa9"))
        assert good.status == 200 and good.header("x-kvrouter-route") == "affinity"
    assert tracebacks(caplog) == []


async def test_a_cookie_that_is_not_utf8_is_ignored_like_any_other_illegal_cookie(
    router_in_process, caplog
):
    async with RecordingWorker() as worker, router_before(worker, router_in_process) as port:
        answer = await send_raw(port, get("/v1/chat", b"Cookie: kvrouter_session=a\xffb"))
        assert answer.status == 200 and answer.header("x-kvrouter-route") != "affinity"
        quoted = await send_raw(port, get("/v1/chat", b'Cookie: kvrouter_session="a\\377b"'))
        assert quoted.status == 200 and quoted.header("x-kvrouter-route") == "affinity"
    assert tracebacks(caplog) == []


async def test_with_redis_state_a_tenant_or_session_that_is_not_utf8_never_reaches_a_key(
    router_in_process, shared_redis_url, redis_prefix, caplog
):
    store = {"url": shared_redis_url, "key_prefix": redis_prefix}
    async with RecordingWorker() as worker, router_before(
        worker, router_in_process, store=store, session={"tenant_header": "x-tenant"},
        history={"access": "open"},  # the tenant header names the tenant of stored history
    ) as port:
        sessions = await send_raw(port, get("/v1/sessions/s1", b"x-tenant: t\xff"))
        body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
        chat = get(
            "/v1/chat/completions", b"x-session-id: s\xff", b"x-kvrouter-history: server",
            b"Content-Type: application/json", b"Content-Length: %d" % len(body), method=b"POST",
        ) + body  # fmt: skip
        turn = await send_raw(port, chat)
        for answer, named in ((sessions, "x-tenant"), (turn, "x-session-id")):
            assert answer.status == 400, answer.head
            assert named in answer.error()["message"]
        assert worker.requests == []
    assert tracebacks(caplog) == []


DOT_SEGMENTS = [
    "/v1/../x", "/v1/%2e%2e/x", "/v1/%2E%2E%2Fadmin", "/v1/..%2fx", "/v1/..\\x", "/v1/./x",
    "/v1/x/..", "/v1/.%2e/metrics", "/v1/%252e%252e/x", "/v1/chat/completions/../../healthz",
]  # fmt: skip


@pytest.mark.parametrize("path", DOT_SEGMENTS)
async def test_a_path_with_dot_segments_is_refused_with_a_400_and_never_forwarded(
    path: str, router_in_process, caplog
):
    async with RecordingWorker() as worker, router_before(worker, router_in_process) as port:
        for method in (b"GET", b"POST"):
            answer = await send_raw(port, get(path, b"Content-Length: 0", method=method))
            assert answer.status == 400, (path, answer.head)
            message = answer.error()["message"]
            assert "'..'" in message and "segment" in message
        assert worker.requests == []
        plain = await send_raw(port, get("/v1/models/llama-3.1.Q4..gguf/x..y/...//z"))
        assert plain.status == 200
        assert worker.targets == [b"GET /v1/models/llama-3.1.Q4..gguf/x..y/...//z HTTP/1.1"]
    assert tracebacks(caplog) == []


async def test_an_absolute_form_target_is_a_421_whatever_its_host(router_in_process, caplog):
    async with RecordingWorker() as worker, router_before(worker, router_in_process) as port:
        for target in ("http://evil.example/v1/models", f"http://127.0.0.1:{port}/v1/chat",
                       "http://evil.example/v1/../x"):  # fmt: skip
            answer = await send_raw(port, get(target))
            assert answer.status == 421, (target, answer.head)
            assert answer.error()["code"] == "misdirected_request"
        http09 = await send_raw(port, b"GET /v1/chat\r\n\r\n")
        assert http09.status == 400 and "HTTP/0.9" in http09.error()["message"]
        assert worker.requests == []
    assert tracebacks(caplog) == []


HUGE_HEAD = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200_000 + b"\r\nContent-Length: 2\r\n\r\nok"


async def test_a_worker_response_head_over_64_kib_is_a_502_naming_the_worker(
    router_in_process, http
):
    async with RecordingWorker(answer=HUGE_HEAD) as worker, router_before(
        worker, router_in_process, retries={"attempts": 0}
    ) as port:
        answer = await send_raw(port, get("/v1/chat", b"x-session-id: s1"))
        assert answer.status == 502 and answer.header("x-big") is None
        error = answer.error()
        assert "raw-0" in error["message"] and "head over 65536 bytes" in error["message"]
        assert len(answer.head) < 4096
        protocol = await counted(
            http, f"http://127.0.0.1:{port}", "kvrouter_upstream_errors_total", kind="protocol"
        )
        assert protocol == 1


async def test_a_huge_head_is_retried_on_another_worker(router_in_process):
    async with RecordingWorker(answer=HUGE_HEAD) as bad, RecordingWorker() as good:
        port = free_port()
        raw = {
            "listen": f"127.0.0.1:{port}", "health": FAST_HEALTH, "load": {"enabled": False},
            "workers": [{"url": bad.url, "name": "bad"}, {"url": good.url, "name": "good"}],
            "routing": {"policy": "consistent_hash"},
        }  # fmt: skip
        async with router_in_process(parse_settings(raw, "test", env={})):
            served = set()
            for i in range(8):
                answer = await send_raw(port, get("/v1/chat", b"x-session-id: s%d" % i))
                assert answer.status == 200, answer.head
                served.add(answer.header("x-kvrouter-worker"))
            assert served == {"good"}
            assert bad.requests, "no session's home was the bad worker: nothing was retried"


MALFORMED = {
    "bad-request-line": b"GET /v1/x HTTP/1.1 extra\r\nHost: a\r\n\r\n",
    "bad-method": b"G\x01T /v1/x HTTP/1.1\r\nHost: a\r\n\r\n",
    "bad-header-name": b"GET /v1/x HTTP/1.1\r\nHost: a\r\nBad Header: y\r\n\r\n",
    "nul-in-header": b"GET /v1/x HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
    "cl-and-te": b"POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "duplicate-cl": b"POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
    b"Content-Length: 4\r\n\r\nabcd",
    "bad-chunk-size": b"POST /v1/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nabc\r\n0\r\n\r\n",
    "not-gzip-body": b"POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Encoding: gzip\r\n"
    b"Content-Length: 3\r\n\r\nabc",
}


async def test_malformed_requests_are_refused_with_at_most_one_log_line_per_second_per_kind(
    router_in_process, caplog
):
    caplog.set_level(logging.DEBUG)
    async with RecordingWorker() as worker, router_before(worker, router_in_process) as port:
        started = time.monotonic()
        for _ in range(10):
            for raw in MALFORMED.values():
                answer = await send_raw(port, raw)
                assert answer.closed_silently or 400 <= answer.status < 500, (raw, answer.head)
        elapsed = time.monotonic() - started
        assert worker.requests == []
        assert tracebacks(caplog) == [] and all(r.exc_info is None for r in caplog.records)
        lines = [r for r in caplog.records if r.name == "kvrouter.clients"]
        kinds = {r.getMessage().split(":")[1].strip() for r in lines}
        assert 1 <= len(lines) <= len(kinds) * (int(elapsed) + 2), [r.getMessage() for r in lines]
        assert all("\n" not in r.getMessage() for r in lines)

        await asyncio.sleep(1.05)
        await send_raw(port, MALFORMED["duplicate-cl"])
        last = [r.getMessage() for r in caplog.records if r.name == "kvrouter.clients"][-1]
        assert "BadHttpMessage" in last and "more like it" in last, last

        assert (await send_raw(port, get("/healthz"))).status == 200
        assert (await send_raw(port, get("/v1/chat", b"x-session-id: s"))).status == 200


async def test_a_real_error_in_a_handler_is_logged_once_with_its_traceback(caplog):
    class Broken:
        needs_body = False

        def extract(self, *args, **kwargs):
            raise RuntimeError("a real router bug")

    async with RecordingWorker() as worker:
        port = free_port()
        raw = {"listen": f"127.0.0.1:{port}", "workers": [{"url": worker.url, "name": "w"}]}
        async with running(parse_settings(raw, "test", env={}), "127.0.0.1", port) as runner:
            runner.app[ROOT].extractor = Broken()  # type: ignore[assignment]
            answer = await send_raw(port, get("/v1/chat"))
            assert answer.status == 500 and answer.error()["code"] == "internal_error"
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1 and "a real router bug" in str(logged[0].exc_info[1])
