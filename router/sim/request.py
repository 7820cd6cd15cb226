"""Validation of OpenAI-style request bodies into plain values; never raises anything
but `InvalidRequest` on bad input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from router.sim.chat import chat_prompt
from router.sim.tokens import tokenize
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
    """What the simulator needs from a chat or text completion request. `max_tokens` is the
    number of new tokens to produce; `echo` is text the reply's content starts with before
    them (llama.cpp's echo of a continued assistant message)."""

    chat: bool
    prompt: str
    max_tokens: int
    explicit_max_tokens: bool
    stream: bool
    include_usage: bool
    echo: str = ""


def decode_json(raw: bytes) -> dict[str, Any]:
    """The JSON object in `raw`."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def parse_chat(
    body: dict[str, Any], default_max_tokens: int, *, echo_prefill: bool = False
) -> CompletionRequest:
    """A chat request (see `router.sim.chat` for continuations). Without an explicit
    `max_tokens`, a continued assistant message counts toward `default_max_tokens`: the reply
    stops where the undisturbed one would have, so a message of k tokens gets
    `default_max_tokens - k` new ones, none when k reaches the default."""
    prompt = chat_prompt(body, parse_messages(body.get("messages")), echo_prefill=echo_prefill)
    default = max(default_max_tokens - len(tokenize(prompt.prefill)), 0)
    echo = prompt.prefill if prompt.echo else ""
    return _completion(body, prompt.text, default, chat=True, echo=echo)


def parse_completion(body: dict[str, Any], default_max_tokens: int) -> CompletionRequest:
    """A text completion request. A continuation is the prompt with the text already produced
    appended; the sim cannot tell that text from the prompt, so without an explicit
    `max_tokens` a continuation gets `default_max_tokens` new tokens, not the rest of the
    default length (send `max_tokens` to continue exactly)."""
    return _completion(body, parse_prompt(body.get("prompt")), default_max_tokens, chat=False)


def parse_tokenize(body: dict[str, Any], *, echo_prefill: bool = False) -> str:
    """The text `/tokenize` should count: a raw prompt, or a conversation rendered as a chat
    request with the same `add_generation_prompt`/`continue_final_message` would be."""
    if "messages" in body:
        messages = parse_messages(body["messages"])
        return chat_prompt(body, messages, echo_prefill=echo_prefill).text
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
    body: dict[str, Any], prompt: str, default_max_tokens: int, *, chat: bool, echo: str = ""
) -> CompletionRequest:
    max_tokens = _max_tokens(body)
    stream = optional(body, "stream", bool, default=False)
    options = optional(body, "stream_options", dict, default={})
    include_usage = optional(options, "include_usage", bool, default=False)
    return CompletionRequest(
        chat=chat,
        prompt=prompt,
        max_tokens=default_max_tokens if max_tokens is None else max_tokens,
        explicit_max_tokens=max_tokens is not None,
        stream=stream,
        include_usage=stream and include_usage,
        echo=echo,
    )


def _max_tokens(body: dict[str, Any]) -> int | None:
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"'{key}' must be a positive integer", key)
    return value
