"""`POST /v1/chat/completions` and `POST /v1/completions`, as JSON or as SSE streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from router.sim.appkeys import ENGINE
from router.sim.engine import Job, SimEngine
from router.sim.openai import SSE_DONE, Envelope
from router.sim.options import SimOptions
from router.sim.request import (
    CompletionRequest,
    InvalidRequest,
    decode_json,
    parse_chat,
    parse_completion,
)
from router.sim.responses import error_response, json_bytes_response

_Parser = Callable[[dict[str, Any], SimOptions], CompletionRequest]
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, _parse_chat)


async def text_completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, _parse_text)


def _parse_chat(body: dict[str, Any], opts: SimOptions) -> CompletionRequest:
    return parse_chat(body, opts.default_max_tokens, echo_prefill=opts.echo_prefill)


def _parse_text(body: dict[str, Any], opts: SimOptions) -> CompletionRequest:
    return parse_completion(body, opts.default_max_tokens)


async def _complete(request: web.Request, parse: _Parser) -> web.StreamResponse:
    """Counts a client that goes away at any point (stall, prefill, decode) as cancelled."""
    engine = request.app[ENGINE]
    try:
        completion = parse(decode_json(await request.read()), engine.opts)
    except InvalidRequest as exc:
        return error_response(400, str(exc), exc.param)
    engine.counters.requests += 1
    try:
        return await _serve(request, engine, completion)
    except asyncio.CancelledError:
        engine.counters.cancelled += 1
        raise


async def _serve(
    request: web.Request, engine: SimEngine, completion: CompletionRequest
) -> web.StreamResponse:
    faults = engine.faults
    if faults.stall_seconds:
        await asyncio.sleep(faults.stall_seconds)
    if engine.should_fail():
        engine.counters.errors += 1
        return error_response(faults.error_status, f"injected fault on {engine.opts.name}")
    try:
        admission = engine.admission(completion)
    except InvalidRequest as exc:
        return error_response(400, str(exc), exc.param)
    async with admission as job:
        await engine.prefill(job)
        envelope = Envelope(
            engine.next_response_id(completion.chat),
            int(time.time()),
            engine.opts.model,
            completion.chat,
        )
        finish = "length" if completion.explicit_max_tokens else "stop"
        if completion.stream:
            stream = _Stream(engine, job, envelope, finish, completion.include_usage)
            return await stream.send(request, faults.drop_after_chunks)
        await engine.decode(job)
        engine.complete(job)
        return json_bytes_response(envelope.completion(job, finish))


class _Stream:
    """One SSE reply: a chunk per output token, the finish chunk, usage, `[DONE]`. The first
    chat chunk names the role along with the first token; when the reply echoes text (llama.cpp
    mode) or has no token at all, a chunk of its own opens the stream with the role and the
    echoed text (or "") before the token chunks."""

    def __init__(
        self, engine: SimEngine, job: Job, envelope: Envelope, finish: str, include_usage: bool
    ) -> None:
        self._engine = engine
        self._job = job
        self._envelope = envelope
        self._finish = finish
        self._include_usage = include_usage

    async def send(self, request: web.Request, drop_after_chunks: int) -> web.StreamResponse:
        """Writes every chunk as soon as it is produced. With `drop_after_chunks` > 0 the
        connection is aborted after that many token chunks (an opening chunk of echoed text
        does not count); the cache keeps nothing unless the client received the whole reply."""
        response = web.StreamResponse(headers=_SSE_HEADERS)
        try:
            await response.prepare(request)
            if not await self._write_tokens(response, drop_after_chunks):
                _abort(request)
                self._engine.counters.dropped += 1
                return response
            await self._write_tail(response)
        except ConnectionResetError:
            self._engine.counters.cancelled += 1
            return response
        self._engine.complete(self._job)
        return response

    async def _write_tokens(self, response: web.StreamResponse, drop_after_chunks: int) -> bool:
        """False when the stream must break here."""
        engine, envelope, usage, job = self._engine, self._envelope, self._include_usage, self._job
        opened = envelope.chat and bool(job.echo or not job.reply.pieces)
        if opened:
            await response.write(envelope.content_chunk(job.echo, usage, opening=True))
        for index, piece in enumerate(job.reply.pieces):
            await engine.decode_step(job)
            opening = index == 0 and not opened
            await response.write(envelope.content_chunk(piece, usage, opening=opening))
            if index + 1 == drop_after_chunks:
                return False
        return True

    async def _write_tail(self, response: web.StreamResponse) -> None:
        await response.write(self._envelope.final_chunk(self._finish, self._include_usage))
        if self._include_usage:
            await response.write(self._envelope.usage_chunk(self._job))
        await response.write(SSE_DONE)


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()
