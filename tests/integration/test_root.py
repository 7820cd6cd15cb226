"""What the composition root guarantees, seen through a real router and a real upstream: the
router's own calls to workers count as load, the tokenizer loads only when needed, the admin
preview takes the same placement path as a request, and new settings reach running parts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from router.config import parse_settings
from router.http.common import ROOT
from router.root import Router
from router.server import running
from router.tooling.fleet import admin_url
from router.tooling.launch import free_port
from tests.conftest import healthy, serving

SERVER = {"x-kvrouter-history": "server"}
OPEN = {"access": "open"}  # stored history open to every client, as on a trusted network
ADMIN = {"Authorization": "Bearer admin-secret-0123456789"}


class Upstream:
    """A worker that records, for each call, how many requests the router had in flight on it."""

    def __init__(self) -> None:
        self.root: Router | None = None
        self.seen: list[tuple[str, int]] = []
        self.url = ""

    def _inflight(self) -> int:
        assert self.root is not None
        return sum(w.inflight for w in self.root.pool)

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        kind = "summary" if "Summarise" in str(body["messages"][0]["content"]) else "chat"
        self.seen.append((kind, self._inflight()))
        message = {"role": "assistant", "content": f"{kind} reply"}
        return web.json_response({"choices": [{"index": 0, "message": message}]})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Queued for 0.3 s, then two events 0.2 s apart."""
        await asyncio.sleep(0.3)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\n')
        await asyncio.sleep(0.2)
        await response.write(b"data: [DONE]\n\n")
        return response

    async def tokenize(self, request: web.Request) -> web.Response:
        self.seen.append(("tokenize", self._inflight()))
        return web.json_response({"count": 7})


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    fake = Upstream()
    app = web.Application()
    app.router.add_get("/health", healthy)
    app.router.add_post("/v1/chat/completions", fake.chat)
    app.router.add_post("/tokenize", fake.tokenize)
    app.router.add_post("/v1/completions", fake.stream)
    async with serving(app) as url:
        fake.url = url
        yield fake


@asynccontextmanager
async def router(*urls: str, **overrides: Any) -> AsyncIterator[tuple[str, Router]]:
    """A router in front of `urls`; its admin API is at `admin_url(root.settings)`."""
    port = free_port()
    raw: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "workers": [{"url": u, "name": f"w{i}"} for i, u in enumerate(urls)],
        "admin": {"token": "admin-secret-0123456789", "listen": f"127.0.0.1:{free_port()}"},
    }
    raw.update(overrides)
    async with running(parse_settings(raw, "test", env={}), "127.0.0.1", port) as runner:
        yield f"http://127.0.0.1:{port}", runner.app[ROOT]


async def chat(http, url: str, text: str, headers: dict[str, str] | None = None) -> int:
    body = {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": 4}
    async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
        await resp.read()
        return resp.status


async def test_summaries_and_tokenizer_calls_hold_a_worker_lease(upstream, http):
    history = {
        **OPEN,
        "max_prompt_tokens": 40,
        "tokenizer": {"kind": "worker"},
        "summary": {"enabled": True},
    }
    async with router(upstream.url, history=history) as (url, root):
        upstream.root = root
        for turn in range(4):
            headers = {**SERVER, "x-session-id": "s1"}
            assert await chat(http, url, f"question {turn} " * 3, headers) == 200
        for _ in range(100):
            if any(kind == "summary" for kind, _ in upstream.seen):
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)
        assert all(w.inflight == 0 for w in root.pool)
    kinds = {kind for kind, _ in upstream.seen}
    assert {"chat", "summary", "tokenize"} <= kinds, upstream.seen
    assert all(inflight >= 1 for _, inflight in upstream.seen), (
        f"a call to the worker was not counted in flight: {upstream.seen}"
    )


async def test_a_router_serving_no_orchestrator_request_loads_no_tokenizer(upstream, http):
    async with router(upstream.url, history=OPEN) as (url, root):
        upstream.root = root
        assert await chat(http, url, "hello", {"x-session-id": "s1"}) == 200
        assert not root.tokenizer.loaded, "a stateless request loaded the tokenizer"
        assert await chat(http, url, "hello", {**SERVER, "x-session-id": "s2"}) == 200
        assert root.tokenizer.loaded


async def test_the_admin_preview_honours_pins_disabled(upstream, http):
    app = web.Application()
    app.router.add_get("/health", healthy)
    routing = {"policy": "consistent_hash", "pins": {"enabled": False}}
    async with serving(app) as second, router(upstream.url, second, routing=routing) as (_, root):
        home = root.balancer.ring_home("default\x1fchat-9")
        assert home is not None
        other = next(w.name for w in root.pool if w is not home)
        await root.store.set_pin("default", "chat-9", other, 60)  # left by an earlier run
        admin = admin_url(root.settings)
        async with http.get(admin + "/admin/sessions/chat-9", headers=ADMIN) as resp:
            where = await resp.json()
        assert resp.status == 200, where
        assert where["pinned"] is None and where["worker"] == home.name, where
        assert where["home"] == home.name


async def test_new_settings_reach_the_running_router(upstream, http):
    async with router(upstream.url, history=OPEN) as (url, root):
        upstream.root = root
        assert await chat(http, url, "hi", {**SERVER, "x-session-id": "s1"}) == 200
        raw = root.settings.model_dump(mode="json")
        raw["history"]["enabled"] = False
        raw["retries"]["attempts"] = 0
        root.reconfigure(parse_settings(raw, "reload", env={}))
        assert await chat(http, url, "hi", {**SERVER, "x-session-id": "s1"}) == 400
        async with http.get(url + "/v1/sessions/s1") as resp:
            assert resp.status == 404
        assert root.forwarder._retries.attempts == 0


async def test_the_worker_listing_shows_each_workers_load_and_whether_it_is_fresh(upstream, http):
    load = {"interval": 0.05, "jitter": 0.0, "stale_after": 0.5}
    async with router(upstream.url, load=load) as (url, root):
        upstream.root = root
        admin = admin_url(root.settings)
        async with http.get(admin + "/admin/workers", headers=ADMIN) as resp:
            listed = (await resp.json())["workers"][0]
        # the upstream has no /metrics: the router's own count stands in, and says so
        assert listed["load"]["fresh"] is False and listed["load"]["scrape_failures"] >= 0
        await asyncio.sleep(0.3)
        async with http.get(admin + "/admin/workers", headers=ADMIN) as resp:
            listed = (await resp.json())["workers"][0]
        assert listed["load"]["scrape_failures"] >= 2, listed
        async with http.get(url + "/metrics") as resp:
            text = await resp.text()
        assert 'kvrouter_worker_load_fresh{worker="w0"} 0.0' in text
        assert 'kvrouter_load_scrape_failures_total{worker="w0"}' in text


async def test_service_time_is_first_token_to_end_of_streamed_answers_only(upstream, http):
    async with router(upstream.url) as (url, root):
        upstream.root = root
        worker = root.pool.get("w0")
        assert await chat(http, url, "not streamed") == 200
        assert worker.service_seconds == 0.0, "a buffered answer says nothing of batch time"
        async with http.post(url + "/v1/completions", json={"prompt": "x"}) as resp:
            assert resp.status == 200
            await resp.read()
        # 0.1 x (0.2 s from first token to end); the 0.3 s queued before it is left out
        assert 0.015 <= worker.service_seconds <= 0.03, worker.service_seconds
