"""Continuing a cut reply on another worker process, over real HTTP: the text already relayed
plus the continuation is, byte for byte, the reply an undisturbed worker gives.

Every undisturbed reply comes from one worker process and every continuation from another,
as when a router resumes a stream cut by a dying worker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from router.tooling.fleet import LocalFleet

DEFAULT_MAX_TOKENS = 12
N = 10
CUTS = (0, 1, N // 2, N - 1)
DEFAULT_CUTS = (0, 1, DEFAULT_MAX_TOKENS // 2, DEFAULT_MAX_TOKENS - 1, DEFAULT_MAX_TOKENS)
MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Why does a router keep a conversation on one worker?"},
]
PROMPT = "The prefix cache of an inference server"
CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}
BOTH_FLAGS = "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
FLAGS = ("--time-scale", "0", "--default-max-tokens", str(DEFAULT_MAX_TOKENS))


@pytest.fixture(scope="module")
def workers() -> Iterator[tuple[str, str]]:
    """Two plain worker processes with the same seed: (undisturbed, continuing)."""
    with LocalFleet(2, FLAGS) as fleet:
        yield fleet.urls[0], fleet.urls[1]


@pytest.fixture(scope="module")
def echo_worker() -> Iterator[str]:
    """A worker behaving like llama.cpp's server (`--echo-prefill`), same seed."""
    with LocalFleet(1, (*FLAGS, "--echo-prefill")) as fleet:
        yield fleet.urls[0]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


@dataclass
class Answer:
    """A reply as the client saw it: content per chunk (one piece when not streamed)."""

    pieces: list[str]
    finish_reason: str
    usage: dict[str, Any]
    role: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


async def chat(http: aiohttp.ClientSession, base: str, body: dict[str, Any]) -> Answer:
    if body.get("stream"):
        body = {**body, "stream_options": {"include_usage": True}}
        chunks = await _sse(http, f"{base}/v1/chat/completions", body)
        deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
        pieces = [d["content"] for d in deltas if "content" in d]
        finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1]
        return Answer(pieces, finish, chunks[-1]["usage"], deltas[0].get("role"))
    data = await _post(http, f"{base}/v1/chat/completions", body)
    choice = data["choices"][0]
    message = choice["message"]
    return Answer([message["content"]], choice["finish_reason"], data["usage"], message["role"])


async def complete(http: aiohttp.ClientSession, base: str, body: dict[str, Any]) -> Answer:
    if body.get("stream"):
        body = {**body, "stream_options": {"include_usage": True}}
        chunks = await _sse(http, f"{base}/v1/completions", body)
        choices = [c["choices"][0] for c in chunks if c["choices"]]
        pieces = [c["text"] for c in choices if c["finish_reason"] is None]
        return Answer(pieces, choices[-1]["finish_reason"], chunks[-1]["usage"])
    data = await _post(http, f"{base}/v1/completions", body)
    choice = data["choices"][0]
    return Answer([choice["text"]], choice["finish_reason"], data["usage"])


async def _post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(url, json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def _sse(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[dict]:
    async with http.post(url, json=body) as resp:
        assert resp.status == 200, await resp.text()
        lines = [line async for line in resp.content if line.startswith(b"data: ")]
    assert lines[-1] == b"data: [DONE]\n"
    return [orjson.loads(line[len(b"data: ") :]) for line in lines[:-1]]


async def error(http: aiohttp.ClientSession, base: str, body: dict[str, Any]) -> str:
    async with http.post(f"{base}/v1/chat/completions", json=body) as resp:
        assert resp.status == 400
        return (await resp.json())["error"]["message"]


def with_prefix(prefix: str) -> list[dict[str, str]]:
    return [*MESSAGES, {"role": "assistant", "content": prefix}]


@pytest.mark.parametrize("k", CUTS)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
async def test_chat_continuation_with_max_tokens_is_the_rest_of_the_reply(workers, http, stream, k):
    first, second = workers
    whole = await chat(http, first, {"messages": MESSAGES, "max_tokens": N, "stream": True})
    assert len(whole.pieces) == N
    prefix = "".join(whole.pieces[:k])
    body = {"messages": with_prefix(prefix), **CONTINUE, "max_tokens": N - k, "stream": stream}
    rest = await chat(http, second, body)
    assert prefix + rest.text == whole.text
    if stream:
        assert rest.pieces == whole.pieces[k:]
    assert rest.role == "assistant"
    assert rest.finish_reason == whole.finish_reason == "length"
    assert rest.usage["completion_tokens"] == N - k
    assert rest.usage["prompt_tokens"] == whole.usage["prompt_tokens"] + k


@pytest.mark.parametrize("k", DEFAULT_CUTS)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
async def test_chat_continuation_without_max_tokens_stops_where_the_reply_stopped(
    workers, http, stream, k
):
    first, second = workers
    whole = await chat(http, first, {"messages": MESSAGES, "stream": stream})
    assert len(whole.text.split()) == DEFAULT_MAX_TOKENS
    prefix = " ".join(whole.text.split()[:k])
    rest = await chat(http, second, {"messages": with_prefix(prefix), **CONTINUE, "stream": stream})
    assert prefix + rest.text == whole.text
    assert rest.finish_reason == whole.finish_reason == "stop"
    assert rest.usage["completion_tokens"] == DEFAULT_MAX_TOKENS - k
    assert rest.role == "assistant"


async def test_a_continuation_with_nothing_left_streams_the_role_then_stops(workers, http):
    first, second = workers
    whole = await chat(http, first, {"messages": MESSAGES})
    body = {"messages": with_prefix(whole.text), **CONTINUE, "stream": True}
    rest = await chat(http, second, body)
    assert (rest.role, rest.pieces, rest.finish_reason) == ("assistant", [""], "stop")
    assert rest.usage["completion_tokens"] == 0


@pytest.mark.parametrize("k", CUTS)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
async def test_text_completion_of_prompt_plus_relayed_text_is_the_rest(workers, http, stream, k):
    first, second = workers
    whole = await complete(http, first, {"prompt": PROMPT, "max_tokens": N, "stream": True})
    assert len(whole.pieces) == N
    prefix = "".join(whole.pieces[:k])
    body = {"prompt": PROMPT + prefix, "max_tokens": N - k, "stream": stream}
    rest = await complete(http, second, body)
    assert prefix + rest.text == whole.text
    if stream:
        assert rest.pieces == whole.pieces[k:]
    assert rest.finish_reason == whole.finish_reason == "length"
    assert rest.usage["completion_tokens"] == N - k
    assert rest.usage["prompt_tokens"] == whole.usage["prompt_tokens"] + k


async def test_tokenize_counts_a_continued_turn_as_the_completion_does(workers, http):
    _, second = workers
    body = {"messages": with_prefix("alpha beta"), **CONTINUE}
    counted = await _post(http, f"{second}/tokenize", body)
    answer = await chat(http, second, {**body, "max_tokens": 1})
    assert counted["count"] == answer.usage["prompt_tokens"]


async def test_continuing_and_adding_a_generation_prompt_are_exclusive(workers, http):
    base = workers[0]
    explicit = {"continue_final_message": True, "add_generation_prompt": True}
    assert await error(http, base, {"messages": with_prefix("a"), **explicit}) == BOTH_FLAGS
    defaulted = {"messages": with_prefix("a"), "continue_final_message": True}
    assert await error(http, base, defaulted) == BOTH_FLAGS


async def test_continuing_needs_a_final_assistant_message(workers, http):
    message = await error(http, workers[0], {"messages": MESSAGES, **CONTINUE})
    assert message == (
        "`continue_final_message` needs a final message from the assistant to continue; "
        "the last message is from 'user'."
    )


async def test_without_continuation_a_final_assistant_message_is_a_closed_turn(workers, http):
    base = workers[0]
    messages = with_prefix("alpha beta")
    counted = await _post(http, f"{base}/tokenize", {"messages": messages})
    answer = await chat(http, base, {"messages": messages, "max_tokens": 3})
    assert answer.usage["prompt_tokens"] == counted["count"]
    assert not answer.text.startswith(" ")
    cue = "<|assistant|>\nalpha beta\n<|assistant|>\n"
    tail = await _post(http, f"{base}/tokenize", {"prompt": cue})
    assert counted["tokens"][-tail["count"] :] == tail["tokens"]


async def test_no_generation_prompt_renders_the_conversation_without_the_cue(workers, http):
    base = workers[0]
    body = {"messages": MESSAGES, "add_generation_prompt": False, "max_tokens": 2}
    cued = await _post(http, f"{base}/tokenize", {"messages": MESSAGES})
    bare = await _post(
        http, f"{base}/tokenize", {"messages": MESSAGES, "add_generation_prompt": False}
    )
    answer = await chat(http, base, body)
    assert answer.usage["prompt_tokens"] == bare["count"] < cued["count"]
    assert cued["tokens"][: bare["count"]] == bare["tokens"]


@pytest.mark.parametrize("k", CUTS)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
async def test_echo_prefill_starts_the_reply_with_the_given_text(
    workers, echo_worker, http, stream, k
):
    whole = await chat(http, workers[0], {"messages": MESSAGES, "max_tokens": N, "stream": True})
    prefix = "".join(whole.pieces[:k])
    body = {"messages": with_prefix(prefix), "max_tokens": N - k, "stream": stream}
    echoed = await chat(http, echo_worker, body)
    assert echoed.text == whole.text
    assert echoed.text.startswith(prefix)
    if stream:
        opening = [prefix] if k else []
        assert echoed.pieces == [*opening, *whole.pieces[k:]]
    assert echoed.role == "assistant"
    assert echoed.finish_reason == "length"
    assert echoed.usage["completion_tokens"] == N - k
    assert echoed.usage["prompt_tokens"] == whole.usage["prompt_tokens"] + k


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
async def test_echo_prefill_without_max_tokens_counts_the_prefix(
    workers, echo_worker, http, stream
):
    whole = await chat(http, workers[0], {"messages": MESSAGES})
    prefix = " ".join(whole.text.split()[:5])
    echoed = await chat(http, echo_worker, {"messages": with_prefix(prefix), "stream": stream})
    assert echoed.text == whole.text
    assert echoed.finish_reason == "stop"
    assert echoed.usage["completion_tokens"] == DEFAULT_MAX_TOKENS - 5


async def test_echo_prefill_leaves_other_chats_alone_and_refuses_two_final_replies(
    workers, echo_worker, http
):
    body = {"messages": MESSAGES, "max_tokens": 4}
    assert (await chat(http, echo_worker, body)).text == (await chat(http, workers[0], body)).text
    two = [*with_prefix("alpha"), {"role": "assistant", "content": "beta"}]
    assert await error(http, echo_worker, {"messages": two}) == (
        "Cannot have 2 or more assistant messages at the end of the list."
    )


async def test_an_echoed_opening_chunk_does_not_count_toward_drop_after_chunks(sim_fleet, http):
    fleet = sim_fleet(1, *FLAGS, "--echo-prefill", "--drop-after-chunks", "2")
    body = {"messages": with_prefix("alpha beta"), "max_tokens": 5, "stream": True}
    lines: list[bytes] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(f"{fleet.urls[0]}/v1/chat/completions", json=body) as resp:
            async for line in resp.content:
                lines.append(line)
    chunks = [orjson.loads(line[len(b"data: ") :]) for line in lines if line.startswith(b"data: ")]
    contents = [chunk["choices"][0]["delta"]["content"] for chunk in chunks]
    assert len(contents) == 3
    assert contents[0] == "alpha beta"
