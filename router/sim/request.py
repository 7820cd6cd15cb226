"""Validation of OpenAI-style request bodies into plain values; never raises anything
but `InvalidRequest` on bad input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from router.sim.template import render_chat
from router.sim.validation import InvalidRequest, optional

__all__ = [
    "CompletionRequest",
    "InvalidRequest",
    "decode_json",
    "parse_chat",
    "parse_completion",
    "parse_messages",
    "parse_prompt",
    "parse_tokenize",
]


@dataclass(frozen=True)
class CompletionRequest:
    """What the simulator needs from a chat or text completion request."""

    chat: bool
    prompt: str
    max_tokens: int
    explicit_max_tokens: bool
    stream: bool
    include_usage: bool


def decode_json(raw: bytes) -> dict[str, Any]:
    """The JSON object in `raw`."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def parse_chat(body: dict[str, Any], default_max_tokens: int) -> CompletionRequest:
    prompt = render_chat(parse_messages(body.get("messages")))
    return _completion(body, prompt, default_max_tokens, chat=True)


def parse_completion(body: dict[str, Any], default_max_tokens: int) -> CompletionRequest:
    return _completion(body, parse_prompt(body.get("prompt")), default_max_tokens, chat=False)


def parse_tokenize(body: dict[str, Any]) -> str:
    """The text `/tokenize` should count: a raw prompt or a rendered conversation."""
    if "messages" in body:
        add_prompt = optional(body, "add_generation_prompt", bool, default=True)
        return render_chat(parse_messages(body["messages"]), add_prompt)
    return parse_prompt(body.get("prompt"))


def parse_messages(messages: object) -> list[tuple[str, str]]:
    """`(role, content)` pairs; text content parts are joined, other parts refused."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", "messages")
    return [_message(i, message) for i, message in enumerate(messages)]


def parse_prompt(prompt: object) -> str:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidRequest("'prompt' must be a string", "prompt")
    return prompt


def _message(index: int, message: object) -> tuple[str, str]:
    param = f"messages[{index}]"
    if not isinstance(message, dict):
        raise InvalidRequest(f"{param} must be an object", param)
    role = message.get("role")
    if not isinstance(role, str) or not role:
        raise InvalidRequest(f"{param}.role must be a non-empty string", f"{param}.role")
    return role, _content(message.get("content"), f"{param}.content")


def _content(content: object, param: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise InvalidRequest(f"{param} must be a string or an array of parts", param)
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text":
            raise InvalidRequest(f"{param} supports only text parts", param)
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidRequest(f"{param} text parts need a string 'text'", param)
        texts.append(text)
    return "".join(texts)


def _completion(
    body: dict[str, Any], prompt: str, default_max_tokens: int, *, chat: bool
) -> CompletionRequest:
    max_tokens = _max_tokens(body)
    stream = optional(body, "stream", bool, default=False)
    options = optional(body, "stream_options", dict, default={})
    include_usage = optional(options, "include_usage", bool, default=False)
    return CompletionRequest(
        chat=chat,
        prompt=prompt,
        max_tokens=max_tokens or default_max_tokens,
        explicit_max_tokens=max_tokens is not None,
        stream=stream,
        include_usage=stream and include_usage,
    )


def _max_tokens(body: dict[str, Any]) -> int | None:
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"'{key}' must be a positive integer", key)
    return value
