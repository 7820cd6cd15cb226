"""What llama.cpp sends, through the router: its stream (a role-only first chunk unless the
first token is part of a character, one chunk per token, the finish chunk, then a chunk with
empty `choices`, `usage` and llama.cpp's own `timings`, then `[DONE]`), its JSON reply, and its
error shape (a numeric `code`). The router relays each as the server sent it and reads the
usage for its own counters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from router.tooling.fleet import LocalFleet
from tests.conftest import counted
from tests.engine.chat import chat

CAPTURES = Path(__file__).resolve().parents[1] / "fixtures" / "llamacpp"


def shape(document: Any) -> Any:
    """The keys of a JSON document, nested, without the values."""
    if isinstance(document, dict):
        return {key: shape(value) for key, value in document.items()}
    if isinstance(document, list):
        return [shape(document[0])] if document else []
    return type(document).__name__ if document is not None else None


MESSAGES = [
    {"role": "system", "content": "You answer in one line."},
    {"role": "user", "content": "What does a prefix cache keep between turns?"},
]


async def test_a_stream_arrives_as_llama_cpp_sent_it_and_its_usage_is_counted(
    fleet: LocalFleet,
) -> None:
    async with fleet.router_in_process() as url, aiohttp.ClientSession() as http:
        reply = await chat(http, url, MESSAGES, max_tokens=12, headers={"x-session-id": "w1"})
        again = await chat(http, url, MESSAGES, max_tokens=12, headers={"x-session-id": "w1"})
        prompt = await counted(http, url, "kvrouter_prompt_tokens_total")
        cached = await counted(http, url, "kvrouter_cached_prompt_tokens_total")

    assert reply.status == 200 and reply.done == 1
    *chunks, finish, tail = reply.events
    deltas = [e["choices"][0]["delta"] for e in chunks]
    # The role comes alone in the first chunk, with the first token's event: when that token
    # is only part of a character (held back until whole), llama.cpp sends no role at all.
    roles = [i for i, d in enumerate(deltas) if "role" in d]
    assert roles in ([], [0]), deltas
    assert not roles or deltas[0] == {"role": "assistant", "content": None}
    texts = [d for d in deltas if d.get("content")]
    assert len(texts) + len(roles) == len(deltas)
    # One chunk per token, but for the bytes of a character split over tokens, held back
    # until it is whole (with random weights, such tokens are common).
    assert 1 <= len(texts) <= reply.usage["completion_tokens"]
    assert all(e["choices"][0]["finish_reason"] is None for e in chunks)
    assert finish["choices"][0]["finish_reason"] == "length"
    assert tail["choices"] == [] and tail["timings"]["prompt_n"] == reply.usage["prompt_tokens"]
    assert len({e["id"] for e in reply.events}) == 1
    # The same prompt again on the same server: all but the last token come from its cache.
    assert again.worker == reply.worker
    assert again.cached == again.usage["prompt_tokens"] - 1
    assert again.events[-1]["timings"]["cache_n"] == again.cached
    assert prompt == reply.usage["prompt_tokens"] + again.usage["prompt_tokens"]
    assert cached == again.cached


async def test_a_json_reply_and_an_error_pass_through_unchanged(fleet: LocalFleet) -> None:
    async with fleet.router_in_process() as url, aiohttp.ClientSession() as http:
        reply = await chat(http, url, MESSAGES, max_tokens=5, stream=False)
        async with http.post(url + "/v1/chat/completions",
                             json={"model": "tiny", "messages": "not a list"}) as resp:  # fmt: skip
            status, error = resp.status, await resp.json()
        healthy = await counted(http, url, "kvrouter_worker_healthy")

    assert reply.status == 200
    assert reply.document["object"] == "chat.completion"
    assert reply.usage["completion_tokens"] == 5
    assert reply.document["timings"]["predicted_n"] == 5
    captured = json.loads((CAPTURES / "chat-completion.json").read_text())
    assert shape(reply.document) == shape(captured)
    assert status == 400
    assert shape(error) == shape(json.loads((CAPTURES / "error-bad-request.json").read_text()))
    assert error["error"]["code"] == 400 and error["error"]["type"] == "invalid_request_error"
    assert "messages" in error["error"]["message"]
    assert healthy == len(fleet.workers)  # a client's error is not the worker's
