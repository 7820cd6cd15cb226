"""Prefix affinity for requests without a session id: a key from the start of the prompt.

Requests whose system prompt and first user message agree share the start of their prompt, so
they meet the same prefix cache: so do the turns of one conversation whose client sends no
session id. Pure: it reads a parsed JSON body and returns a short digest.
"""

from __future__ import annotations

from hashlib import blake2b
from typing import Any

_SYSTEM_ROLES = frozenset({"system", "developer"})


def _text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a content array."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _chat_prefix(messages: list[Any], user_chars: int) -> list[str] | None:
    """Every system message up to the first user message, then that message's first
    `user_chars` characters; None when there is no user message to key on."""
    parts: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            return None
        role = message.get("role")
        if role in _SYSTEM_ROLES:
            parts.append(f"{role}:{_text(message.get('content'))}")
        elif role == "user":
            parts.append(f"user:{_text(message.get('content'))[:user_chars]}")
            return parts
    return None


def prefix_key(document: Any, user_chars: int) -> str | None:
    """A digest of the system prompt and the first `user_chars` characters of the first user
    message (chat), or of the prompt (completions); None when the body has neither."""
    if not isinstance(document, dict):
        return None
    messages = document.get("messages")
    prompt = document.get("prompt")
    if isinstance(messages, list):
        parts = _chat_prefix(messages, user_chars)
    elif isinstance(prompt, str) and prompt:
        parts = [f"prompt:{prompt[:user_chars]}"]
    else:
        parts = None
    if not parts:
        return None
    digest = blake2b(digest_size=8)
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\x00")
    return digest.hexdigest()
