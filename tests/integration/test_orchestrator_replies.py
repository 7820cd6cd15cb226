"""Replies are stored as the worker sent them, whatever the relay's framing."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.conftest import healthy, serving
from tests.integration.test_orchestrator import SERVER, completion, settings_for, stored

BIG = "x" * (1024 * 1024 + 1000)
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}  # fmt: skip


class OddUpstream:
    """Answers `chunked` with a chunked JSON body, `big` with a reply over 1 MiB, `tool` with a
    streamed tool call (in OpenAI's deltas, split mid-argument), anything else with text."""

    def __init__(self) -> None:
        self.prompts: list[list[dict[str, Any]]] = []

    async def chat(self, request: web.Request) -> web.StreamResponse:
        messages = (await request.json())["messages"]
        self.prompts.append(messages)
        last = messages[-1]["content"]
        if last == "chunked":
            body = orjson.dumps(completion("chunked reply"))
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(body[:20])
            await response.write(body[20:])
            await response.write_eof()
            return response
        if last == "big":
            return web.json_response(completion(BIG))
        if last == "tool":
            return await self._tool_call_stream(request)
        return web.json_response(completion(f"reply to {last}"))

    async def _tool_call_stream(self, request: web.Request) -> web.StreamResponse:
        function = CALL["function"]
        deltas = [
            {"role": "assistant", "content": None},
            {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                             "function": {"name": "get_", "arguments": ""}}]},
            {"tool_calls": [{"index": 0, "function": {"name": "weather"}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": function["arguments"][:9]}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": function["arguments"][9:]}}]},
        ]  # fmt: skip
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for delta in deltas:
            chunk = {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
        await response.write(b"data: " + orjson.dumps(end) + b"\n\ndata: [DONE]\n\n")
        return response


@pytest.fixture
async def odd():
    fake = OddUpstream()
    app = web.Application()
    app.router.add_get("/health", healthy)
    app.router.add_post("/v1/chat/completions", fake.chat)
    async with serving(app) as url:
        yield fake, url


async def send(http, url, message: dict[str, Any], *, stream=False) -> tuple[int, bytes]:
    body = {"model": "m", "messages": [message], "stream": stream}
    headers = {**SERVER, "x-session-id": "s"}
    async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
        return resp.status, await resp.read()


async def test_a_chunked_json_reply_is_stored_whole(odd, router_in_process, http):
    upstream, worker = odd
    async with router_in_process(settings_for(worker)) as url:
        status, body = await send(http, url, {"role": "user", "content": "chunked"})
        assert status == 200 and b"chunked reply" in body
        (turn,) = (await stored(http, url, "s", turns=1))[1]["turns"]
        await send(http, url, {"role": "user", "content": "next"})
    assert turn["messages"][1] == {"role": "assistant", "content": "chunked reply"}
    assert upstream.prompts[1][1] == {"role": "assistant", "content": "chunked reply"}


async def test_a_reply_over_a_mebibyte_is_stored_whole(odd, router_in_process, http):
    _, worker = odd
    async with router_in_process(settings_for(worker)) as url:
        status, body = await send(http, url, {"role": "user", "content": "big"})
        assert status == 200 and len(body) > 1024 * 1024
        (turn,) = (await stored(http, url, "s", turns=1))[1]["turns"]
    assert turn["messages"][1] == {"role": "assistant", "content": BIG}
    assert turn["tokens"] > 1000


async def test_a_streamed_tool_call_is_stored_and_precedes_the_tool_answer(
    odd, router_in_process, http
):
    upstream, worker = odd
    async with router_in_process(settings_for(worker)) as url:
        status, _ = await send(http, url, {"role": "user", "content": "tool"}, stream=True)
        assert status == 200
        (turn,) = (await stored(http, url, "s", turns=1))[1]["turns"]
        answer = {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
        assert (await send(http, url, answer))[0] == 200
    reply = turn["messages"][1]
    assert reply["role"] == "assistant" and reply["tool_calls"] == [CALL]
    assert not reply.get("content")
    assert upstream.prompts[1][1]["tool_calls"] == [CALL]
    assert upstream.prompts[1][2] == answer
