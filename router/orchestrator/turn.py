"""The orchestrator mode: the client sends only its new messages, the router keeps the history.

One request: count the new messages; in one round trip store them and read the history before
them (the only store call on the time-to-first-token path with recall off, so the user message
is stored before anything is forwarded); rebuild and prune the prompt, adding recalled turns
with `history.recall` on (`router.orchestrator.recall`, whose reads run beside that round
trip); forward through the same `Forwarder` as any request, watching the answer. Once the
answer is complete, and before the client sees it end, the reply is written (retried in the
background if the store is slow or down). Pruned turns are handed to the summarizer (and the
recall indexer), which the request never waits for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from router.config import HistorySettings
from router.errors import BadRequest, HistoryUnavailable, PayloadTooLarge
from router.metrics import Metrics
from router.orchestrator.history import (
    Conversation,
    Message,
    decode_history,
    encode_entry,
    prompt_body,
    without_turn,
)
from router.orchestrator.outcome import TurnOutcome, discard_turn
from router.orchestrator.persist import Persister
from router.orchestrator.prune import build_prompt, fit_body
from router.orchestrator.recall import RECALLED, Recall
from router.orchestrator.replies import ReplyCollector
from router.orchestrator.summary import Summarizer
from router.orchestrator.tokenizer import Tokenizer
from router.proxy.forward import Forwarder, Outgoing
from router.store import SessionStore, SessionTooLarge, StoredHistory, StoreUnavailable


class Orchestrator:
    def __init__(
        self,
        settings: HistorySettings,
        store: SessionStore,
        forwarder: Forwarder,
        tokenizer: Tokenizer,
        persister: Persister,
        summarizer: Summarizer,
        metrics: Metrics,
        store_wait: float = 1.0,
        *,
        recall: Recall,
        max_body_bytes: int,
    ) -> None:
        self._recall = recall
        self._settings = settings
        self._max_body_bytes = max_body_bytes
        self._store_wait = store_wait
        self._store = store
        self._forwarder = forwarder
        self._tokenizer = tokenizer
        self._persister = persister
        self._summarizer = summarizer
        self._metrics = metrics

    def reconfigure(self, settings: HistorySettings) -> None:
        self._settings = settings
        self._recall.reconfigure(settings.recall)

    @property
    def recall(self) -> Recall:
        return self._recall

    async def read(self, tenant: str, session: str) -> StoredHistory:
        """The stored history, timed; an unreachable store is a 503 that names it."""
        try:
            with self._metrics.store_call("read", self._store.name):
                return await self._store.read_history(tenant, session)
        except StoreUnavailable as err:
            raise HistoryUnavailable(str(err)) from None

    def decode(self, stored: StoredHistory) -> Conversation:
        started = time.perf_counter()
        conversation = decode_history(stored)
        self._metrics.history_decode_seconds.observe(time.perf_counter() - started)
        return conversation

    async def forget(self, tenant: str, session: str) -> bool:
        try:
            with self._metrics.store_call("forget", self._store.name):
                return await self._store.forget(tenant, session)
        except StoreUnavailable as err:
            raise HistoryUnavailable(str(err)) from None

    async def handle(
        self, request: web.Request, out: Outgoing, document: dict[str, Any]
    ) -> web.StreamResponse:
        tenant, session = out.key.tenant, out.key.session
        if session is None:
            raise BadRequest(
                "server-kept history needs a session id (x-session-id header, kvrouter_session "
                "cookie, metadata.session_id or session_id query by default)"
            )
        new = new_messages(document)
        turn = turn_id(tenant, session, client_id(request), new) or out.request_id
        reserve = completion_tokens(document, self._settings)
        budget = self._recall.budget(self._settings.max_prompt_tokens, reserve)
        new_tokens = await self._tokenizer.count(new)
        frame = len(prompt_body(document, []))
        alone = build_prompt(Conversation(), new, new_tokens, budget)  # oversized: 400, unstored
        fit_body(alone, frame, self._max_body_bytes)  # over the body limit: 413, unstored
        entries = [encode_entry(turn, n, m) for m, n in zip(new, new_tokens, strict=True)]
        user_op = f"{turn}:user"
        lookup = self._recall.look_up(tenant, session, new)  # None with recall off
        try:
            stored = await self._store_user_turn(tenant, session, user_op, entries)
        except BaseException:
            if lookup is not None:
                lookup.cancel()
            raise
        collector = ReplyCollector(self._reply_recorder(tenant, session, turn))
        outcome = TurnOutcome(
            collector, lambda: discard_turn(self._store, self._metrics, tenant, session, user_op)
        )
        try:  # from here on, a turn answered with an error is taken back out of the store
            conversation = self.decode(stored)
            earlier = without_turn(conversation, turn)
            prompt = build_prompt(earlier, new, new_tokens, budget)
            prompt = fit_body(prompt, frame, self._max_body_bytes)
            if lookup is not None:
                prompt, request[RECALLED] = await self._recall.apply(
                    lookup, earlier, prompt, budget, frame, self._max_body_bytes
                )
        except BaseException:
            if lookup is not None:
                lookup.cancel()
            await outcome.discard()
            raise
        self._metrics.history_tokens.inc(prompt.history_tokens)
        self._metrics.history_sent_tokens.inc(prompt.tokens)
        self._metrics.pruned_turns.inc(len(prompt.dropped))
        model = str(document.get("model") or "")
        self._summarizer.schedule(tenant, session, model, conversation.summary, prompt.dropped)
        body = prompt_body(document, prompt.messages)
        return await self._answer(
            request, dataclasses.replace(out, body=body, observer=outcome), outcome
        )

    async def _answer(
        self, request: web.Request, out: Outgoing, outcome: TurnOutcome
    ) -> web.StreamResponse:
        """Forward the turn. An error raised instead of an answer, like an error status, takes
        the turn back out of the store (see `router.orchestrator.outcome`)."""
        try:
            response = await self._forwarder.forward(request, out)
        except Exception:
            await outcome.discard()
            raise
        if not outcome.succeeded:  # an error answer that broke off before its end
            await outcome.discard()
        return response

    async def _store_user_turn(
        self, tenant: str, session: str, op_id: str, entries: list[bytes]
    ) -> StoredHistory:
        """Store the new messages and read the history before them in one round trip, the
        only store call before forwarding; a store that cannot take them is a 503 naming it,
        a session with no room for them a 413 naming the limit."""
        try:
            with self._metrics.store_call("read_append", self._store.name):
                return await self._store.read_and_append_history(tenant, session, op_id, entries)
        except StoreUnavailable as err:
            self._metrics.persist_failures.labels("user").inc()
            raise HistoryUnavailable(str(err)) from None
        except SessionTooLarge as err:
            raise PayloadTooLarge(
                f"{err}; start a new session or delete this one (DELETE /v1/sessions/{session})"
            ) from None

    def _reply_recorder(
        self, tenant: str, session: str, turn: str
    ) -> Callable[[Message | None], Awaitable[None]]:
        """Writes the reply before the client sees the answer end, so the client's next turn
        reads it; a slow store is waited for only `store_wait`, after which the write goes on
        (retried) in the background."""

        async def record(reply: Message | None) -> None:
            if reply is None:
                return

            async def entries() -> list[bytes]:
                return [encode_entry(turn, (await self._tokenizer.count([reply]))[0], reply)]

            write = self._persister.append(tenant, session, f"{turn}:reply", entries, op="reply")
            await asyncio.wait([write], timeout=self._store_wait)

        return record


CLIENT_ID_HEADERS = ("Idempotency-Key", "x-request-id")


def client_id(request: web.Request) -> str | None:
    """The id the client (or a gateway) gave this request: `Idempotency-Key`, else
    `x-request-id`."""
    for header in CLIENT_ID_HEADERS:
        value = request.headers.get(header)
        if value:
            return value
    return None


def turn_id(tenant: str, session: str, client: str | None, new: list[Message]) -> str | None:
    """The id of this turn (its entries' group and its appends' operation ids): a digest of the
    session, the client's id and the canonical new messages, so a retry of the same turn is
    stored once and a reused id with other messages is another turn. None without a client
    id: each request is then its own turn."""
    if client is None:
        return None
    canonical = orjson.dumps([tenant, session, client, new], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:32]


def new_messages(document: dict[str, Any]) -> list[Message]:
    messages = document.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array of the new message(s)")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{index}] must be an object with a string 'role'")
    return messages


def completion_tokens(document: dict[str, Any], settings: HistorySettings) -> int:
    """The completion's `max_tokens` (or `max_completion_tokens`), else the configured reserve."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = document.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadRequest(f"'{key}' must be a positive integer")
        return value
    return settings.default_max_tokens
