"""Continue a cut stream on another worker: what was relayed, whether it can be continued, the
continuation request, and the rewriting that makes the continuation one stream with the first.

Everything here runs only when a stream has broken; the relay's hot path only keeps bytes.

**What was relayed** (`read_relayed`): the first stream's `id`, `created`, `model`,
`system_fingerprint` and choice index, the text so far (chat: `delta.content`; completions:
`text`), and the number of events that carried text. That number stands for the tokens
produced: engines send one event per token, except when a detokenizer holds a partial
character back or an engine batches tokens per event (`stream_interval` above 1), when one event
carries several. So it never overcounts and may undercount by the number of tokens merged into
other events: the continuation's `max_tokens` is then too high by that much, at most, and the
derived usage moves that many tokens from completion to prompt.

**The continuation** (`continuation_body`): chat: the original messages plus an assistant
message holding the text so far; for vLLM, SGLang and custom engines with
`continue_final_message: true, add_generation_prompt: false` (the parameters both engines
take), for llama.cpp with none (its server continues a final assistant message by itself, and
echoes that message at the start of its reply: `Stitcher` removes the echo). Completions: the
prompt with the text so far appended. `max_tokens` / `max_completion_tokens` less the tokens
counted. TGI has no continuation of an assistant message: its workers are not used to resume.

**Not continued** (`Refused`, by reason): `n` above 1, `logprobs`, `echo` (completions), a
prompt that is not text, a tool call or reasoning text partly streamed, structured output
partly streamed.

**One stream** (`Stitcher`): each continuation event gets the first stream's `id`, `created`,
`model`, `system_fingerprint` and choice index; the continuation's role is dropped, and an
event left with nothing to say (its role-only opening chunk) is dropped whole. A usage chunk is
derived: prompt tokens = the continuation's prompt tokens less the tokens counted as relayed;
completion tokens = those plus the continuation's; the total their sum.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson

from router.proxy.sse import DONE, EventSplitter, data_of

log = logging.getLogger("kvrouter.proxy")

CONTINUATION_PARAMETERS = {"continue_final_message": True, "add_generation_prompt": False}
PARAMETER_ENGINES = frozenset({"vllm", "sglang", "custom"})
ECHO_ENGINES = frozenset({"llamacpp"})
RESUMING_ENGINES = PARAMETER_ENGINES | ECHO_ENGINES
STRUCTURED_KEYS = (
    "guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs",
    "json_schema", "regex", "ebnf",
)  # fmt: skip
_ABSENT = object()


class Refused(Exception):
    """This stream cannot be continued; `reason` is the metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class Relayed:
    """What the client has of the answer so far."""

    chat: bool
    id: Any = None
    created: Any = None
    model: Any = None
    fingerprint: Any = _ABSENT
    index: int = 0
    text: str = ""
    tokens: int = 0
    finished: bool = False
    done: bool = False
    tool_calls: bool = False
    reasoning: bool = False


def path_kind(path_qs: str) -> bool | None:
    """True for chat completions, False for completions, None for anything else."""
    path = path_qs.partition("?")[0].rstrip("/")
    if path.endswith("/chat/completions"):
        return True
    if path.endswith("/completions"):
        return False
    return None


def read_relayed(data: bytes, chat: bool) -> Relayed:
    """Parse the relayed bytes (whole events)."""
    relayed = Relayed(chat)
    splitter = EventSplitter()
    texts: list[str] = []
    for event in [*splitter.feed(data), *splitter.flush()]:
        for payload in data_of(event):
            if payload == DONE:
                relayed.done = True
                continue
            try:
                document = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if isinstance(document, dict):
                _read_event(relayed, document, texts)
    relayed.text = "".join(texts)
    return relayed


def _read_event(relayed: Relayed, document: dict[str, Any], texts: list[str]) -> None:
    if relayed.id is None:
        relayed.id = document.get("id")
        relayed.created = document.get("created")
        relayed.model = document.get("model")
        relayed.fingerprint = document.get("system_fingerprint", _ABSENT)
    choices = document.get("choices")
    if not isinstance(choices, list):
        return
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        relayed.index = choice.get("index", 0) if isinstance(choice.get("index"), int) else 0
        if choice.get("finish_reason") is not None:
            relayed.finished = True
        if relayed.chat:
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            if delta.get("tool_calls"):
                relayed.tool_calls = True
            if delta.get("reasoning_content") or delta.get("reasoning"):
                relayed.reasoning = True
            text = delta.get("content")
        else:
            text = choice.get("text")
        if isinstance(text, str) and text:
            texts.append(text)
            relayed.tokens += 1


def check(document: Any, relayed: Relayed) -> dict[str, Any]:
    """The request's JSON document, if its stream may be continued; else `Refused`."""
    if not isinstance(document, dict) or document.get("stream") is not True:
        raise Refused("not_streamed")
    n = document.get("n")
    if n is not None and n != 1:
        raise Refused("n")
    if relayed.chat:
        if document.get("logprobs") or document.get("top_logprobs"):
            raise Refused("logprobs")
        if not isinstance(document.get("messages"), list):
            raise Refused("request")
    else:
        if document.get("logprobs") is not None:
            raise Refused("logprobs")
        if document.get("echo"):
            raise Refused("echo")
        prompt = document.get("prompt")
        if not (isinstance(prompt, str) or _one_text(prompt)):
            raise Refused("prompt")
    if relayed.tool_calls:
        raise Refused("tool_call")
    if relayed.reasoning:
        raise Refused("reasoning")
    if relayed.text and _structured(document):
        raise Refused("structured_output")
    return document


def _one_text(prompt: Any) -> bool:
    return isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str)


def _structured(document: dict[str, Any]) -> bool:
    response_format = document.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") not in (None, "text"):
        return True
    return any(document.get(key) is not None for key in STRUCTURED_KEYS)


def continuation_body(document: dict[str, Any], relayed: Relayed, engine: str) -> bytes:
    """The request that continues the answer on a worker running `engine`."""
    if not relayed.text:  # nothing relayed yet but the role: the request again, as it was
        return orjson.dumps(document)
    body = dict(document)
    if relayed.chat:
        body["messages"] = [
            *document["messages"], {"role": "assistant", "content": relayed.text}
        ]
        if engine in PARAMETER_ENGINES:
            body.update(CONTINUATION_PARAMETERS)
    else:
        prompt = document["prompt"]
        body["prompt"] = [prompt[0] + relayed.text] if isinstance(prompt, list) else (
            prompt + relayed.text
        )  # fmt: skip
    for key in ("max_completion_tokens", "max_tokens"):
        limit = body.get(key)
        if isinstance(limit, int) and not isinstance(limit, bool):
            body[key] = max(1, limit - relayed.tokens)
    return orjson.dumps(body)


def limit_reached(document: dict[str, Any], relayed: Relayed) -> bool:
    """Whether the tokens counted as relayed already reach the request's token limit."""
    for key in ("max_completion_tokens", "max_tokens"):
        limit = document.get(key)
        if isinstance(limit, int) and not isinstance(limit, bool):
            return relayed.tokens >= limit
    return False


def finish_tail(relayed: Relayed) -> bytes:
    """The end of an answer cut just after its last token: the finish chunk (`length`: the
    limit was reached) in the first stream's identity, then `[DONE]`."""
    choice: dict[str, Any] = {"index": relayed.index}
    if relayed.chat:
        choice["delta"] = {}
    else:
        choice["text"] = ""
    choice["finish_reason"] = "length"
    document: dict[str, Any] = {
        "id": relayed.id,
        "object": "chat.completion.chunk" if relayed.chat else "text_completion",
        "created": relayed.created,
        "model": relayed.model,
        "choices": [choice],
    }
    if relayed.fingerprint is not _ABSENT:
        document["system_fingerprint"] = relayed.fingerprint
    return b"data: " + orjson.dumps(document) + b"\n\ndata: [DONE]\n\n"


class Stitcher:
    """Rewrites a continuation's events into the first stream's (see the module docstring);
    `echo`: the worker starts its reply with the relayed text, which is removed."""

    def __init__(self, relayed: Relayed, *, echo: bool) -> None:
        self._relayed = relayed
        self._strip = relayed.text if echo and relayed.chat else ""
        self._events = EventSplitter()

    def feed(self, chunk: bytes) -> bytes:
        return b"".join(self._event(event) for event in self._events.feed(chunk))

    def rest(self) -> bytes:
        return b"".join(self._event(event) for event in self._events.flush())

    def _event(self, event: bytes) -> bytes:
        payloads = list(data_of(event))
        if len(payloads) != 1 or event.lstrip().startswith(b"event:"):
            return event + b"\n\n"  # not one plain data event (an error event): as it came
        payload = payloads[0]
        if payload == DONE:
            return b"data: [DONE]\n\n"
        try:
            document = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return event + b"\n\n"
        if not isinstance(document, dict) or not self._rewrite(document):
            return b""
        return b"data: " + orjson.dumps(document) + b"\n\n"

    def _rewrite(self, document: dict[str, Any]) -> bool:
        """Rewrite in place; False when nothing is left to send."""
        relayed = self._relayed
        for key, value in (("id", relayed.id), ("created", relayed.created)):
            if value is not None:
                document[key] = value
        if relayed.model is not None:
            document["model"] = relayed.model
        if relayed.fingerprint is _ABSENT:
            document.pop("system_fingerprint", None)
        else:
            document["system_fingerprint"] = relayed.fingerprint
        says = False
        choices = document.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict):
                    says = self._choice(choice) or says
        usage = document.get("usage")
        if isinstance(usage, dict):
            self._usage(usage)
            says = True
        return says

    def _choice(self, choice: dict[str, Any]) -> bool:
        choice["index"] = self._relayed.index
        says = choice.get("finish_reason") is not None
        if not self._relayed.chat:
            return says or bool(choice.get("text"))
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return says
        delta.pop("role", None)
        content = delta.get("content")
        if isinstance(content, str) and self._strip:
            content = self._unecho(content)
            delta["content"] = content
        if content in ("", None):
            delta.pop("content", None)
        return says or any(value not in (None, "", []) for value in delta.values())

    def _unecho(self, content: str) -> str:
        strip = self._strip
        if content.startswith(strip):
            self._strip = ""
            return content[len(strip):]
        if strip.startswith(content):
            self._strip = strip[len(content):]
            return ""
        log.warning("a resumed stream's worker did not echo the relayed text; sent as it came")
        self._strip = ""
        return content

    def _usage(self, usage: dict[str, Any]) -> None:
        relayed = self._relayed.tokens
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and isinstance(completion, int):
            usage["prompt_tokens"] = max(0, prompt - relayed)
            usage["completion_tokens"] = completion + relayed
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
