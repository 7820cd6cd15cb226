"""OpenAI-compatible response bodies, encoded with orjson."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from router.sim.engine import Job

SSE_DONE = b"data: [DONE]\n\n"
_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 429: "rate_limit_error"}


def error_body(status: int, message: str, param: str | None = None) -> bytes:
    """`{"error": {...}}` with a type derived from the status and the status as code."""
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps(
        {"error": {"message": message, "type": kind, "param": param, "code": status}}
    )


def usage(job: Job) -> dict[str, Any]:
    """Token accounting in the shape vLLM reports, cached tokens included."""
    prompt = len(job.prompt_ids)
    completion = len(job.reply.token_ids)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": job.cached_tokens},
    }


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


@dataclass(frozen=True)
class Envelope:
    """Fields shared by every body of one response, chunks included."""

    id: str
    created: int
    model: str
    chat: bool

    def completion(self, job: Job, finish_reason: str) -> bytes:
        """The whole reply; a chat message's content is the echoed text, then the reply."""
        text = job.echo + job.reply.text
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text}
        choice["logprobs"] = None
        choice["finish_reason"] = finish_reason
        kind = "chat.completion" if self.chat else "text_completion"
        return orjson.dumps({**self._head(kind), "choices": [choice], "usage": usage(job)})

    def content_chunk(self, piece: str, include_usage: bool, *, opening: bool) -> bytes:
        """A chunk carrying `piece`, one output token or echoed text; the opening chat chunk
        also names the role."""
        if not self.chat:
            return self._chunk({"index": 0, "text": piece, "logprobs": None}, None, include_usage)
        delta = {"role": "assistant", "content": piece} if opening else {"content": piece}
        return self._chunk({"index": 0, "delta": delta, "logprobs": None}, None, include_usage)

    def final_chunk(self, finish_reason: str, include_usage: bool) -> bytes:
        body = {"index": 0, "delta": {}} if self.chat else {"index": 0, "text": ""}
        body["logprobs"] = None
        return self._chunk(body, finish_reason, include_usage)

    def usage_chunk(self, job: Job) -> bytes:
        return sse({**self._head(self._chunk_kind()), "choices": [], "usage": usage(job)})

    def _chunk(
        self, choice: dict[str, Any], finish_reason: str | None, include_usage: bool
    ) -> bytes:
        choice["finish_reason"] = finish_reason
        payload = {**self._head(self._chunk_kind()), "choices": [choice]}
        if include_usage:
            payload["usage"] = None
        return sse(payload)

    def _chunk_kind(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}
