"""One chat completion over real HTTP, its stream read event by event, and the chat sessions
the engine tests play (`loadtests.workload` plans, so `loadtests.player.Player` plays them)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from loadtests.workload import SYSTEM_PROMPTS, SessionPlan, TurnPlan, user_text


@dataclass(slots=True)
class Reply:
    """What the client got: status, the worker header, the events of a stream (or the JSON
    document), the text, and the usage."""

    status: int
    worker: str
    route: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    document: dict[str, Any] = field(default_factory=dict)
    done: int = 0
    raw: bytes = b""

    @property
    def text(self) -> str:
        if self.document:
            return str(self.document["choices"][0]["message"]["content"])
        return "".join(
            (choice.get("delta") or {}).get("content") or ""
            for event in self.events for choice in event.get("choices") or ()
        )  # fmt: skip

    @property
    def usage(self) -> dict[str, Any]:
        if self.document:
            return dict(self.document.get("usage") or {})
        found = [e["usage"] for e in self.events if e.get("usage")]
        return dict(found[-1]) if found else {}

    @property
    def cached(self) -> int:
        return int((self.usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)


async def chat(
    http: aiohttp.ClientSession,
    url: str,
    messages: list[dict[str, str]],
    *,
    max_tokens: int = 16,
    stream: bool = True,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Reply:
    """POST /v1/chat/completions (streams ask for the usage chunk) and read the whole answer."""
    body: dict[str, Any] = {"model": "tiny", "messages": messages, "max_tokens": max_tokens,
                            "stream": stream, **extra}  # fmt: skip
    if stream:
        body["stream_options"] = {"include_usage": True}
    async with http.post(url + "/v1/chat/completions", json=body, headers=headers or {}) as resp:
        raw = await resp.read()
        head = resp.headers
        reply = Reply(resp.status, head.get("x-kvrouter-worker", ""),
                      head.get("x-kvrouter-route", ""), raw=raw)  # fmt: skip
    if resp.status != 200 or not stream:
        reply.document = orjson.loads(raw)
        return reply
    for line in raw.split(b"\n"):
        if line == b"data: [DONE]":
            reply.done += 1
        elif line.startswith(b"data: "):
            reply.events.append(orjson.loads(line[6:]))
    return reply


def sessions(count: int, turns: int, *, seed: int, words: tuple[int, int] = (20, 40),
             max_tokens: int = 16, think: float = 0.05) -> list[SessionPlan]:  # fmt: skip
    """`count` chats of `turns` turns, each with one of the workload's system prompts made its
    own by a first line naming the chat. (llama.cpp gives a request the idle slot whose prompt
    shares the largest part of it, and takes the prompt cache only when that part is small: a
    chat sharing a long system prompt with another can get the other's slot, and then only
    the system prompt from its cache. Own prompts keep each chat's reuse its own.)"""
    rng = random.Random(seed)
    return [
        SessionPlan(
            f"engine-{seed}-{i}",
            f"Chat {seed}-{i}. {SYSTEM_PROMPTS[i % len(SYSTEM_PROMPTS)]}",
            tuple(TurnPlan((user_text(rng, words, t),), max_tokens, think)
                  for t in range(1, turns + 1)),
        )
        for i in range(count)
    ]  # fmt: skip
