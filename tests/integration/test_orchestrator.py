"""Server-kept history end to end: real router, real HTTP upstreams, the in-memory store."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from aiohttp import web

from router.config import parse_settings
from router.http.auth import key_digest
from router.tooling.launch import free_port
from tests.conftest import counted, healthy, serving

SERVER = {"x-kvrouter-history": "server"}
OPEN = {"access": "open"}  # stored history open to every client, as on a trusted network


class ChatUpstream:
    """A real chat-completions server that records every prompt and answers 'reply to <q>'."""

    def __init__(self) -> None:
        self.prompts: list[list[dict[str, Any]]] = []
        self.headers: list[dict[str, str]] = []
        self.summaries = 0
        self.summary_delay = 0.0
        self.url = ""

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        messages = body["messages"]
        if "Summarise" in str(messages[0].get("content")):
            self.summaries += 1
            await asyncio.sleep(self.summary_delay)
            return web.json_response(completion(f"SUMMARY-{self.summaries}"))
        self.prompts.append(messages)
        self.headers.append(dict(request.headers))
        text = f"reply to {messages[-1]['content']}"
        if "worker error" in text:
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if not body.get("stream"):
            return web.json_response(completion(text))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in (text[:5], text[5:]):
            chunk = {"choices": [{"index": 0, "delta": {"content": piece}}]}
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response


def completion(text: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": text}
    return {"object": "chat.completion", "choices": [{"index": 0, "message": message}]}


@pytest.fixture
async def upstream():
    fake = ChatUpstream()
    app = web.Application()
    app.router.add_get("/health", healthy)
    app.router.add_post("/v1/chat/completions", fake.chat)
    async with serving(app) as url:
        fake.url = url
        yield fake


def settings_for(url: str, **overrides: Any):
    """A router in front of `url`. These tests (and those importing this helper) are about
    what the orchestrator does, not who may use it (that is test_history_access.py), so stored
    history is open to every client, as on a trusted network, unless `history` says otherwise."""
    raw = {"listen": f"127.0.0.1:{free_port()}", "workers": [{"url": url, "name": "up"}]}
    raw.update(overrides)
    raw["history"] = {"access": "open", **raw.get("history", {})}
    return parse_settings(raw, "test", env={})


async def say(http, url, session, text, *, stream=False, headers=None, system=None, **extra):
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})
    body = {"model": "m", "messages": messages, "stream": stream, **extra}
    hdrs = {**SERVER, "x-session-id": session, **(headers or {})}
    async with http.post(url + "/v1/chat/completions", json=body, headers=hdrs) as resp:
        return resp.status, await resp.read()


async def stored(http, url, session, headers=None, *, turns: int | None = None):
    """GET the session, waiting (briefly) until `turns` complete turns are stored."""
    for _ in range(100):
        async with http.get(f"{url}/v1/sessions/{session}", headers=headers) as resp:
            document = await resp.json()
            if resp.status != 200 or turns is None:
                return resp.status, document
        if sum(t["complete"] for t in document["turns"]) >= turns:
            return resp.status, document
        await asyncio.sleep(0.02)
    raise AssertionError(f"{turns} turns were not stored: {document}")


def contents(messages) -> list[str]:
    return [m["content"] for m in messages]


async def test_the_client_sends_only_new_messages_and_each_turn_reads_the_previous_reply(
    upstream, router_in_process, http
):
    async with router_in_process(settings_for(upstream.url)) as url:
        assert (await say(http, url, "s1", "q1", system="be brief"))[0] == 200
        assert (await say(http, url, "s1", "q2", stream=True))[0] == 200
        status, body = await say(http, url, "s1", "q3")
        assert status == 200 and orjson.loads(body)["choices"][0]["message"]["content"]
        status, document = await stored(http, url, "s1", turns=3)
    assert contents(upstream.prompts[2]) == [
        "be brief", "q1", "reply to q1", "q2", "reply to q2", "q3",
    ]  # fmt: skip
    assert status == 200 and document["object"] == "session"
    assert contents(document["messages"]) == [
        "be brief", "q1", "reply to q1", "q2", "reply to q2", "q3", "reply to q3",
    ]  # fmt: skip


async def test_the_pinned_worker_sees_the_same_prefix_as_with_client_kept_history(
    sim_fleet, router_in_process, http
):
    fleet = sim_fleet(1, "--time-scale", "0")
    async with router_in_process(fleet.settings(history=OPEN)) as url:
        client_kept: list[dict[str, str]] = []
        usage = {"client": [], "server": []}
        for turn in range(3):
            question = {"role": "user", "content": f"question number {turn} about caches"}
            client_kept.append(question)
            body = {"model": "m", "messages": client_kept, "max_tokens": 8}
            async with http.post(url + "/v1/chat/completions", json=body,
                                 headers={"x-session-id": "a"}) as resp:  # fmt: skip
                document = await resp.json()
            client_kept.append(document["choices"][0]["message"])
            usage["client"].append(document["usage"])
            body = {"model": "m", "messages": [question], "max_tokens": 8}
            async with http.post(url + "/v1/chat/completions", json=body,
                                 headers={**SERVER, "x-session-id": "b"}) as resp:  # fmt: skip
                usage["server"].append((await resp.json())["usage"])
            await stored(http, url, "b", turns=turn + 1)
    prompt = [u["prompt_tokens"] for u in usage["client"]]
    assert prompt == [u["prompt_tokens"] for u in usage["server"]]
    assert all(u["prompt_tokens_details"]["cached_tokens"] > 0 for u in usage["server"][1:])


async def test_old_turns_are_pruned_whole_and_folded_into_a_background_summary(
    upstream, router_in_process, http
):
    history = {"max_prompt_tokens": 70, "summary": {"enabled": True}}
    async with router_in_process(settings_for(upstream.url, history=history)) as url:
        await say(http, url, "s", "q0", system="be brief", max_tokens=10)
        for turn in range(1, 5):
            await stored(http, url, "s", turns=turn)
            assert (await say(http, url, "s", f"q{turn}", max_tokens=10))[0] == 200
        for _ in range(100):
            document = (await stored(http, url, "s", turns=5))[1]
            if document["summary"]:
                break
            await asyncio.sleep(0.02)
        assert document["summary"]["text"].startswith("SUMMARY-")
        await say(http, url, "s", "q5", max_tokens=10)
        metrics = await (await http.get(url + "/metrics")).text()
    pruned = upstream.prompts[3]
    assert pruned[0]["content"] == "be brief" and "q0" not in contents(pruned)
    assert contents(pruned)[-1] == "q3"
    last = contents(upstream.prompts[-1])
    assert last[0] == "be brief" and last[1].startswith("Summary of the earlier conversation")
    assert "q0" not in last and last[-1] == "q5"
    assert 'kvrouter_history_summaries_total{outcome="made"}' in metrics
    assert "kvrouter_history_pruned_turns_total 0.0" not in metrics


async def test_a_turn_that_starts_a_summary_does_not_wait_for_it(upstream, router_in_process, http):
    upstream.summary_delay = 2.0  # a slow summary model
    history = {"max_prompt_tokens": 70, "summary": {"enabled": True}}
    async with router_in_process(settings_for(upstream.url, history=history)) as url:
        turns = []
        for turn in range(5):
            before = upstream.summaries
            started = time.perf_counter()
            status, _ = await say(http, url, "s", f"q{turn}", system="be brief", max_tokens=10)
            turns.append((time.perf_counter() - started, upstream.summaries - before))
            assert status == 200
            await stored(http, url, "s", turns=turn + 1)
        assert sum(started for _, started in turns) >= 1, f"no summary was started: {turns}"
        # the first turn also loads the tokenizer, so only turns that started a summary count
        slowest = max(seconds for seconds, started in turns if started)
        assert slowest < 0.5 * upstream.summary_delay, f"a turn waited for the summary: {turns}"
        for _ in range(200):  # the summary still lands, after the turns
            document = (await stored(http, url, "s"))[1]
            if document["summary"]:
                break
            await asyncio.sleep(0.02)
        assert document["summary"]["text"] == "SUMMARY-1"


async def test_a_new_message_over_the_budget_is_a_400_and_nothing_is_stored(
    upstream, router_in_process, http
):
    history = {"max_prompt_tokens": 64}
    async with router_in_process(settings_for(upstream.url, history=history)) as url:
        status, body = await say(http, url, "s", "word " * 100, max_tokens=16)
        assert status == 400
        error = orjson.loads(body)["error"]
        assert error["code"] == "context_length_exceeded" and "budget of 48" in error["message"]
        assert (await stored(http, url, "s"))[0] == 404
    assert upstream.prompts == []


async def test_a_turn_refused_for_the_budget_after_it_was_stored_leaves_no_trace(
    upstream, router_in_process, http
):
    history = {"max_prompt_tokens": 64}
    async with router_in_process(settings_for(upstream.url, history=history)) as url:
        status, _ = await say(http, url, "s", "hi", system="word " * 25, max_tokens=16)
        assert status == 200
        # alone the new message fits; with the stored system prompt it does not
        status, body = await say(http, url, "s", "word " * 20, max_tokens=16)
        assert status == 400, body
        _, document = await stored(http, url, "s")
        users = [m["content"] for t in document["turns"] for m in t["messages"]
                 if m["role"] == "user"]  # fmt: skip
        assert users == ["hi"], document["turns"]


async def test_sessions_are_scoped_by_tenant_and_can_be_forgotten(
    upstream, router_in_process, http
):
    session = {"tenant_header": "x-tenant"}
    async with router_in_process(settings_for(upstream.url, session=session)) as url:
        acme, globex = {"x-tenant": "acme"}, {"x-tenant": "globex"}
        await say(http, url, "s", "acme secret", headers=acme)
        await stored(http, url, "s", acme, turns=1)
        assert (await stored(http, url, "s", globex))[0] == 404
        await say(http, url, "s", "globex question", headers=globex)
        await stored(http, url, "s", globex, turns=1)
        assert "acme secret" not in contents(upstream.prompts[-1])
        async with http.delete(f"{url}/v1/sessions/s", headers=acme) as resp:
            assert resp.status == 200 and (await resp.json())["deleted"] is True
        assert (await stored(http, url, "s", acme))[0] == 404
        assert (await stored(http, url, "s", globex))[0] == 200


async def test_api_keys_choose_the_tenant_and_a_bad_key_is_a_401(upstream, router_in_process, http):
    keys = [{"tenant": "acme", "sha256": key_digest("sk-acme")},
            {"tenant": "globex", "sha256": key_digest("sk-globex")}]  # fmt: skip
    settings = settings_for(upstream.url, auth={"keys": keys}, session={"tenant_header": "x-t"},
                            history={"access": "keys"})  # fmt: skip
    async with router_in_process(settings) as url:
        status, body = await say(http, url, "s", "hi", headers={"Authorization": "Bearer nope"})
        assert status == 401 and orjson.loads(body)["error"]["code"] == "invalid_api_key"
        acme = {"Authorization": "Bearer sk-acme"}
        assert (await say(http, url, "s", "acme q", headers=acme))[0] == 200
        await stored(http, url, "s", acme, turns=1)
        forged = {"Authorization": "Bearer sk-globex", "x-t": "acme"}
        assert (await stored(http, url, "s", forged))[0] == 404
        async with http.get(url + "/v1/sessions/s") as resp:
            assert resp.status == 401
    assert "Authorization" not in upstream.headers[0]


async def test_mode_comes_from_the_header_or_the_route_default(upstream, router_in_process, http):
    history = {"server_routes": ["/v1/chat/completions"]}
    async with router_in_process(settings_for(upstream.url, history=history)) as url:
        body = {"model": "m", "messages": [{"role": "user", "content": "q1"}]}
        headers = {"x-session-id": "s"}
        async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
            assert resp.status == 200
        await stored(http, url, "s", turns=1)
        client = {**headers, "x-kvrouter-history": "client"}
        body["messages"] = [{"role": "user", "content": "own history"}]
        async with http.post(url + "/v1/chat/completions", json=body, headers=client) as resp:
            assert resp.status == 200
        assert contents(upstream.prompts[-1]) == ["own history"]
        bad = {**headers, "x-kvrouter-history": "maybe"}
        async with http.post(url + "/v1/chat/completions", json=body, headers=bad) as resp:
            assert resp.status == 400
        async with http.post(url + "/v1/chat/completions", json=body, headers=SERVER) as resp:
            assert resp.status == 400
            assert "session id" in (await resp.json())["error"]["message"]


async def test_the_worker_tokenizer_counts_with_the_workers_tokenize_endpoint(
    sim_fleet, router_in_process, http
):
    fleet = sim_fleet(1, "--time-scale", "0")
    worker = fleet.workers[0].url
    history = {**OPEN, "tokenizer": {"kind": "worker"}}
    async with router_in_process(fleet.settings(history=history)) as url:
        await say(http, url, "s", "count these five words", max_tokens=4)
        document = (await stored(http, url, "s", turns=1))[1]
    (turn,) = document["turns"]
    assert [m["role"] for m in turn["messages"]] == ["user", "assistant"]
    counts = []
    for message in turn["messages"]:
        tokenize = {"messages": [message], "add_generation_prompt": False}
        async with http.post(worker + "/tokenize", json=tokenize) as resp:
            counts.append((await resp.json())["count"])
    # each stored message is counted as the worker counts it alone, template included
    assert turn["tokens"] == sum(counts), (turn["tokens"], counts)
    assert document["tokens"] == turn["tokens"]


async def test_a_reply_is_recorded_only_when_its_stream_completes(
    sim_fleet, router_in_process, http
):
    fleet = sim_fleet(1, "--time-scale", "0")
    worker = fleet.workers[0].url
    async with router_in_process(fleet.settings(retries={"attempts": 0}, history=OPEN)) as url:
        async with http.post(worker + "/sim/fault", json={"drop_after_chunks": 2}) as resp:
            assert resp.status == 200
        status, body = await say(http, url, "s", "first", stream=True, max_tokens=8)
        assert status == 200 and b"upstream_stream_broken" in body
        async with http.post(worker + "/sim/fault", json={"drop_after_chunks": 0}) as resp:
            assert resp.status == 200
        status, _ = await say(http, url, "s", "second", stream=True, max_tokens=8)
        assert status == 200
        document = (await stored(http, url, "s", turns=1))[1]
    first, second = document["turns"]
    assert contents(first["messages"]) == ["first"] and not first["complete"]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant"]


async def test_a_turn_that_would_pass_max_session_bytes_is_a_413_naming_the_limit(
    upstream, router_in_process, http
):
    store = {"max_session_bytes": 600}
    async with router_in_process(settings_for(upstream.url, store=store)) as url:
        assert (await say(http, url, "s", "hi"))[0] == 200
        status, body = await say(http, url, "s", "long " * 120)
        assert status == 413, body
        error = orjson.loads(body)["error"]
        assert error["code"] == "payload_too_large", error
        assert "store.max_session_bytes (600)" in error["message"], error
        document = (await stored(http, url, "s", turns=1))[1]
    assert contents(document["messages"]) == ["hi", "reply to hi"]
    assert len(upstream.prompts) == 1, "the refused turn was not forwarded"


async def test_a_reply_that_would_pass_max_session_bytes_is_counted_as_a_lost_write(
    upstream, router_in_process, http, caplog
):
    store = {"max_session_bytes": 600}
    async with router_in_process(settings_for(upstream.url, store=store)) as url:
        question = "q" * 300
        status, body = await say(http, url, "s", question)
        assert status == 200 and "reply to" in body.decode()
        document = (await stored(http, url, "s"))[1]
        assert contents(document["messages"]) == [question]
        assert await counted(http, url, "kvrouter_history_persist_failures_total", op="reply") == 1
    assert "store.max_session_bytes" in caplog.text


async def test_a_turn_answered_with_a_worker_error_leaves_no_trace(
    upstream, router_in_process, http
):
    async with router_in_process(settings_for(upstream.url)) as url:
        assert (await say(http, url, "s", "first"))[0] == 200
        for stream in (False, True):
            status, _ = await say(http, url, "s", "worker error", stream=stream)
            assert status == 500
            document = (await stored(http, url, "s", turns=1))[1]
            assert contents(document["messages"]) == ["first", "reply to first"], document


async def test_the_in_memory_store_counts_the_sessions_it_evicts(upstream, router_in_process, http):
    store = {"max_sessions": 1}
    async with router_in_process(settings_for(upstream.url, store=store)) as url:
        for session in ("a", "b", "c"):
            assert (await say(http, url, session, "hi"))[0] == 200
        assert (await stored(http, url, "a"))[0] == 404
        assert (await stored(http, url, "c"))[0] == 200
        assert await counted(http, url, "kvrouter_store_evictions_total", kind="history") == 2
