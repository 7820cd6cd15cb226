"""Relay one worker's answer to the client, and count what it says.

A small answer whose length is known is read whole and sent in one piece; anything else (an
event stream, a chunked or large body) is passed on chunk by chunk as it arrives, with the
client's back-pressure, bounded by `timeouts.idle` between chunks and the request's deadline
overall. A stream that breaks after the first byte reached the client ends with an SSE error
event. Taps watch the answer on its way: the usage sniffer always, and the request's own
`ResponseObserver` (the orchestrator's reply collector) when it has one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Protocol

import orjson
from aiohttp import web
from multidict import CIMultiDict

from router.config import TimeoutSettings
from router.fleet.workers import WorkerPool
from router.metrics import Children, Metrics
from router.placement.policies import Decision
from router.proxy.headers import REHOMED_HEADER, ROUTE_HEADER, WORKER_HEADER, strip_hop_by_hop
from router.proxy.outcomes import Failure, Outcomes, body_failure
from router.proxy.upstream import BodyBroken, Response
from router.proxy.usage import UsageSniffer, usage_from_json

log = logging.getLogger("kvrouter.proxy")

BUFFER_LIMIT = 1024 * 1024


class ResponseObserver(Protocol):
    """Watches the answer relayed to the client and may hold part of it back.

    `start` gets the status and the media type (`text/event-stream`, `application/json`,
    ...), whatever the relay's framing; `feed` gets each body chunk and returns what to send
    now; `finish` is awaited once the whole answer is known, before the client sees it end,
    and returns what was held back. Neither is called for a response that broke."""

    def start(self, status: int, content_type: str) -> None: ...

    def feed(self, chunk: bytes) -> bytes: ...

    async def finish(self) -> bytes: ...


@dataclass(slots=True)
class Answer:
    """One worker's answer on its way to the client: its response, the decision that chose
    the worker, the request's observer, when the request started (perf_counter) and the
    request's deadline (loop time)."""

    response: Response
    decision: Decision
    observer: ResponseObserver | None
    started: float
    deadline: float


def streaming_events(upstream: Response) -> bool:
    return upstream.content_type == "text/event-stream"


def sse_error_event(message: str, code: str) -> bytes:
    payload = {"error": {"message": message, "type": "server_error", "code": code}}
    return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"


class Relay:
    """Passes answers on and keeps the per-request metrics."""

    def __init__(
        self, outcomes: Outcomes, metrics: Metrics, timeouts: TimeoutSettings, pool: WorkerPool
    ) -> None:
        self._outcomes = outcomes
        self._pool = pool
        self._metrics = metrics
        self._timeouts = timeouts
        self._requests = Children(metrics.requests)
        self._request_seconds = Children(metrics.request_seconds)
        self._first_byte_seconds = Children(metrics.first_byte_seconds)
        self._prompt_tokens = Children(metrics.prompt_tokens)
        self._cached_prompt_tokens = Children(metrics.cached_prompt_tokens)

    def reconfigure(self, timeouts: TimeoutSettings) -> None:
        self._timeouts = timeouts

    async def relay(
        self, request: web.Request, answer: Answer, request_id: str
    ) -> web.StreamResponse:
        """Pass the answer on; its deadline (loop time) bounds the whole request. The upstream
        connection is given back (or closed) whatever happens."""
        upstream, observer = answer.response, answer.observer
        headers = _response_headers(upstream, answer.decision, request_id)
        length = upstream.content_length
        streaming = upstream.content_type == "text/event-stream"
        buffered = not streaming and length is not None and length <= BUFFER_LIMIT
        if observer is not None:
            observer.start(upstream.status, upstream.content_type)
        try:
            if buffered:
                return await self._buffered(answer, headers)
            return await self._stream(request, answer, headers)
        finally:
            upstream.release()

    async def _buffered(self, answer: Answer, headers: CIMultiDict[str]) -> web.Response:
        upstream, decision, observer = answer.response, answer.decision, answer.observer
        try:
            if upstream.complete:  # the usual small answer came with its head
                body = await upstream.read()
            else:
                async with asyncio.timeout_at(answer.deadline):
                    body = await upstream.read()
        except (BodyBroken, TimeoutError) as err:
            upstream.close()
            failure = body_failure(err, decision.worker, relayed=False)
            self._outcomes.failed(decision.worker, failure)
            raise failure.error(decision.worker) from None
        if upstream.status < 500:
            self._outcomes.succeeded(decision.worker)
        if b'"usage"' in body:
            self._count_usage(decision, usage_from_json(body))
        self._observe(decision, upstream.status, answer.started, first_byte=True)
        if observer is not None:
            body = observer.feed(body) + await observer.finish()
        return web.Response(body=body, status=upstream.status, headers=headers)

    async def _stream(
        self, request: web.Request, answer: Answer, headers: CIMultiDict[str]
    ) -> web.StreamResponse:
        upstream, decision, observer = answer.response, answer.decision, answer.observer
        response = web.StreamResponse(status=upstream.status, headers=headers)
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        sniffer = UsageSniffer()
        sent_first = False
        first_at = 0.0
        try:
            await response.prepare(request)
            async with asyncio.timeout_at(answer.deadline):
                async for chunk in upstream.chunks(self._timeouts.idle):
                    sniffer.feed(chunk)
                    await response.write(chunk if observer is None else observer.feed(chunk))
                    if not sent_first:
                        sent_first = True
                        first_at = time.perf_counter()
                        self._first_byte_seconds(decision.route.value).observe(
                            first_at - answer.started
                        )
        except asyncio.CancelledError:
            upstream.close()
            self._metrics.client_disconnects.inc()
            raise
        except ConnectionResetError:  # the client left: a normal end, not a router error
            upstream.close()
            self._metrics.client_disconnects.inc()
            return response
        except (BodyBroken, TimeoutError) as err:
            upstream.close()
            failure = body_failure(err, decision.worker, relayed=True)
            await self._end_broken(response, decision, failure)
            return response
        if upstream.status < 500:
            self._outcomes.succeeded(decision.worker)
            if sent_first and streaming_events(upstream):
                self._pool.record_service(decision.worker, time.perf_counter() - first_at)
        self._count_usage(decision, sniffer.usage)
        self._observe(decision, upstream.status, answer.started, first_byte=not sent_first)
        if observer is not None:
            held = await observer.finish()
            if held:
                await response.write(held)
        await response.write_eof()
        return response

    async def _end_broken(
        self, response: web.StreamResponse, decision: Decision, failure: Failure
    ) -> None:
        """The worker failed mid-stream: tell the client in-band, count it, and end."""
        self._outcomes.failed(decision.worker, failure)
        self._observe(decision, 502, 0.0, first_byte=False)
        log.warning(failure.message)
        code = "upstream_timeout" if failure.timed_out else "upstream_stream_broken"
        try:
            if response.content_type == "text/event-stream":
                await response.write(sse_error_event(failure.message, code))
            await response.write_eof()
        except ConnectionResetError:
            pass

    def _observe(
        self, decision: Decision, status: int, started: float, *, first_byte: bool
    ) -> None:
        route = decision.route.value
        self._requests(route, decision.worker.name, str(status)).inc()
        if started:
            elapsed = time.perf_counter() - started
            self._request_seconds(route).observe(elapsed)
            if first_byte:
                self._first_byte_seconds(route).observe(elapsed)

    def _count_usage(self, decision: Decision, usage: tuple[int, int] | None) -> None:
        if usage is None:
            return
        prompt, cached = usage
        labels = (decision.worker.name, decision.route.value)
        self._prompt_tokens(*labels).inc(prompt)
        if cached:
            self._cached_prompt_tokens(*labels).inc(cached)


def _response_headers(upstream: Response, decision: Decision, request_id: str) -> CIMultiDict[str]:
    headers = strip_hop_by_hop(upstream.headers)
    headers[WORKER_HEADER] = decision.worker.name
    headers[ROUTE_HEADER] = decision.route.value
    if decision.rehomed is not None:
        headers[REHOMED_HEADER] = decision.rehomed.value
    headers["x-request-id"] = request_id
    return headers

