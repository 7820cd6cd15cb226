"""The orchestrator mode on a real engine: the client sends only its new message, the router
rebuilds the conversation, and llama.cpp renders it with the model's own chat template
(`tokenizer.chat_template` in the GGUF) into the very prompt the full history would give:
same prompt tokens, and the previous turn's prompt found in the server's cache."""

from __future__ import annotations

import itertools

import aiohttp

from router.tooling.fleet import LocalFleet
from tests.engine.chat import chat

SYSTEM = {"role": "system", "content": "You are terse. Answer with one word when you can."}
QUESTIONS = ["Where is the KV cache kept?", "And what evicts it?", "How long does it last?"]
SERVER = {"x-kvrouter-history": "server", "x-session-id": "orchestrated-1"}


async def test_a_rebuilt_prompt_renders_as_the_full_history_would(fleet: LocalFleet) -> None:
    history: list[dict[str, str]] = [SYSTEM]
    # Placement by the ring alone: this test is about the prompt, not about where it goes.
    routing = {"policy": "consistent_hash"}
    async with fleet.router_in_process(history={"access": "open"}, routing=routing) as url, \
            aiohttp.ClientSession() as http:  # fmt: skip
        replies = []
        for number, question in enumerate(QUESTIONS):
            sent = [SYSTEM] if number == 0 else []
            reply = await chat(http, url, [*sent, {"role": "user", "content": question}],
                               max_tokens=8, headers=SERVER)  # fmt: skip
            assert reply.status == 200, reply.raw
            replies.append(reply)
            history += [{"role": "user", "content": question},
                        {"role": "assistant", "content": reply.text}]  # fmt: skip
        async with http.get(url + "/v1/sessions/orchestrated-1") as resp:
            stored = await resp.json()
        server = fleet.by_name(replies[-1].worker).url
        # The whole conversation as a client that keeps its own history would send it.
        direct = await chat(http, server, history[:-1], max_tokens=1)

    assert len({r.worker for r in replies}) == 1, [(r.worker, r.route) for r in replies]
    assert [m["content"] for m in stored["messages"]] == [m["content"] for m in history]
    assert direct.usage["prompt_tokens"] == replies[-1].usage["prompt_tokens"]
    for before, after in itertools.pairwise(replies):
        assert after.cached >= before.usage["prompt_tokens"], (before.usage, after.usage)


async def test_history_counted_by_the_engines_own_tokenizer(fleet: LocalFleet) -> None:
    """`history.tokenizer.kind: worker` on llama.cpp: each message rendered with the model's
    template (`/apply-template`) and counted by its tokenizer (`/tokenize` on text), where
    vLLM's `/tokenize` takes the messages; with a budget that holds about two turns, the
    oldest turns are pruned by those counts and every turn is still answered."""
    history = {"access": "open", "tokenizer": {"kind": "worker"}, "max_prompt_tokens": 160}
    headers = {**SERVER, "x-session-id": "counted-by-llama"}
    async with fleet.router_in_process(history=history) as url, aiohttp.ClientSession() as http:
        replies = [
            await chat(http, url, [{"role": "user", "content": q}], max_tokens=8, headers=headers)
            for q in QUESTIONS * 2
        ]
        async with http.get(url + "/metrics") as resp:
            metrics = await resp.text()
    assert [r.status for r in replies] == [200] * len(replies), [r.raw for r in replies]
    prompts = [r.usage["prompt_tokens"] for r in replies]
    # unpruned, each turn's prompt would be longer than the one before; pruned by the counts,
    # it stays near the budget (a message counted alone and inside the conversation can
    # differ by a few tokens at its edges)
    assert any(after <= before for before, after in itertools.pairwise(prompts)), prompts
    assert max(prompts) <= 160 * 1.25, prompts
    assert "kvrouter_tokenizer_fallbacks_total 0.0" in metrics
