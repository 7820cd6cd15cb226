"""Relay one worker's answer to the client, and count what it says.

An answer that is not an event stream is read whole, up to `retries.buffer_bytes`, and sent in
one piece: a body that breaks before its end is retried whole on another worker (`RetryWhole`
tells the forwarder). A larger one, and every event stream, is passed on chunk by chunk as it
arrives, with the client's back-pressure, bounded by `timeouts.idle` between chunks and the
request's deadline overall. An event stream is passed on in whole events and what it relayed is
kept (`router.proxy.transcript`), so when it breaks after the first byte reached the client
the request's `Resumer` can continue it on another worker, its events rewritten into the same
stream (`router.proxy.resume`); a stream that cannot be continued ends with an SSE error
event. Taps watch the answer on its way: the usage sniffer always, and the request's own
`ResponseObserver` (the orchestrator's reply collector) when it has one: they see the one
stitched stream the client sees.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import NoReturn, Protocol

import orjson
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import Histogram

from router.config import RetrySettings, TimeoutSettings
from router.fleet.workers import Worker, WorkerLease, WorkerPool
from router.metrics import Children, Metrics
from router.placement.policies import Decision
from router.proxy.headers import REHOMED_HEADER, ROUTE_HEADER, WORKER_HEADER, strip_hop_by_hop
from router.proxy.outcomes import Failure, Outcomes, body_failure
from router.proxy.resume import Stitcher
from router.proxy.transcript import Transcript
from router.proxy.upstream import BodyBroken, Response
from router.proxy.usage import Usage, UsageSniffer, usage_from_json

log = logging.getLogger("kvrouter.proxy")

# When a streamed answer's first byte went to the client (perf_counter), for the access log.
FIRST_BYTE_AT = web.ResponseKey("first_byte_at", float)


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
    the worker, the request's observer, when the request started (perf_counter), the
    request's deadline (loop time), and the sniffer that counts its usage for the request's
    tenant (`router.proxy.usage.ReplyMeter`), if any."""

    response: Response
    decision: Decision
    observer: ResponseObserver | None
    started: float
    deadline: float
    sniffer: UsageSniffer | None = None


@dataclass(slots=True)
class Continuation:
    """Another worker's answer continuing a cut stream, and how to rewrite it."""

    decision: Decision
    response: Response
    lease: WorkerLease
    stitcher: Stitcher


class Resumer(Protocol):
    """Continues one request's cut stream (see `router.proxy.forward.StreamResumer`)."""

    async def resume(
        self, failed: Worker, failure: Failure, transcript: Transcript
    ) -> Continuation | bytes | None:
        """A continuation; or the bytes that end an answer that was complete but for its
        end; or None: not resumed (counted and logged by the resumer)."""


class RetryWhole(Exception):
    """A non-streamed answer's body broke before any of it was sent: try another worker."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def streaming_events(upstream: Response) -> bool:
    return upstream.content_type == "text/event-stream"


def sse_error_event(message: str, code: str) -> bytes:
    payload = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"


class Relay:
    """Passes answers on and keeps the per-request metrics."""

    def __init__(
        self,
        outcomes: Outcomes,
        metrics: Metrics,
        timeouts: TimeoutSettings,
        pool: WorkerPool,
        retries: RetrySettings | None = None,
    ) -> None:
        self._outcomes = outcomes
        self._pool = pool
        self._metrics = metrics
        self._timeouts = timeouts
        self._retries = retries or RetrySettings()
        self._requests = Children(metrics.requests)
        self._request_seconds = Children(metrics.request_seconds)
        self._first_byte_seconds = Children(metrics.first_byte_seconds)
        self._prompt_tokens = Children(metrics.prompt_tokens)
        self._cached_prompt_tokens = Children(metrics.cached_prompt_tokens)
        self._body_retries = Children(metrics.body_retries)

    def reconfigure(self, timeouts: TimeoutSettings, retries: RetrySettings | None = None) -> None:
        self._timeouts = timeouts
        if retries is not None:
            self._retries = retries

    async def relay(
        self,
        request: web.Request,
        answer: Answer,
        request_id: str,
        resumer: Resumer | None = None,
    ) -> web.StreamResponse:
        """Pass the answer on; its deadline (loop time) bounds the whole request. The upstream
        connection is given back (or closed) whatever happens. Raises `RetryWhole` when a
        body that was being read whole broke."""
        upstream, observer = answer.response, answer.observer
        headers = _response_headers(upstream, answer.decision, request_id)
        try:
            if observer is not None:
                observer.start(upstream.status, upstream.content_type)
            if streaming_events(upstream):
                return await self._stream(request, answer, headers, resumer)
            cap = self._retries.buffer_bytes
            length = upstream.content_length
            if length is not None and length <= cap:
                return await self._buffered(answer, headers)
            if length is None and cap:
                return await self._read_some(request, answer, headers, cap)
            return await self._stream(request, answer, headers, None)
        finally:
            upstream.release()

    async def _buffered(self, answer: Answer, headers: CIMultiDict[str]) -> web.Response:
        upstream = answer.response
        try:
            if upstream.complete:  # the usual small answer came with its head
                body = upstream.read_complete()
            else:
                async with asyncio.timeout_at(answer.deadline):
                    body = await upstream.read()
        except (BodyBroken, TimeoutError) as err:
            self._retry_whole(answer, err)
        if answer.observer is None:
            return self._whole_now(answer, headers, body)
        return await self._whole(answer, headers, body)

    async def _read_some(
        self, request: web.Request, answer: Answer, headers: CIMultiDict[str], cap: int
    ) -> web.StreamResponse:
        """A body of unknown length: read whole while it fits `cap`, else streamed."""
        upstream = answer.response
        parts: list[bytes] = []
        size = 0
        chunks = upstream.chunks(self._timeouts.idle)
        try:
            async with asyncio.timeout_at(answer.deadline):
                async for chunk in chunks:
                    parts.append(chunk)
                    size += len(chunk)
                    if size > cap:
                        break
                else:
                    return await self._whole(answer, headers, b"".join(parts))
        except (BodyBroken, TimeoutError) as err:
            self._retry_whole(answer, err)
        return await self._stream(request, answer, headers, None, b"".join(parts), chunks)

    def _retry_whole(self, answer: Answer, err: BaseException) -> NoReturn:
        answer.response.close()
        failure = body_failure(err, answer.decision.worker, relayed=False)
        self._outcomes.failed(answer.decision.worker, failure)
        raise RetryWhole(failure) from None

    async def _whole(
        self, answer: Answer, headers: CIMultiDict[str], body: bytes
    ) -> web.Response:
        observer = answer.observer
        if observer is None:
            return self._whole_now(answer, headers, body)
        self._count_whole(answer, body)
        body = observer.feed(body) + await observer.finish()
        return web.Response(body=body, status=answer.response.status, headers=headers)

    def _whole_now(self, answer: Answer, headers: CIMultiDict[str], body: bytes) -> web.Response:
        """`_whole` for an answer without an observer: nothing to wait for."""
        self._count_whole(answer, body)
        return web.Response(body=body, status=answer.response.status, headers=headers)

    def _count_whole(self, answer: Answer, body: bytes) -> None:
        upstream, decision = answer.response, answer.decision
        if upstream.status < 500:
            self._outcomes.succeeded(decision.worker)
        sniffer = answer.sniffer
        if sniffer is not None:
            sniffer.whole(body)
            self._count_usage(decision, sniffer.usage)
        elif b'"usage"' in body:
            self._count_usage(decision, usage_from_json(body))
        self._observe(decision, upstream.status, answer.started, first_byte=True)

    async def _stream(
        self,
        request: web.Request,
        answer: Answer,
        headers: CIMultiDict[str],
        resumer: Resumer | None,
        already: bytes = b"",
        chunks: AsyncIterator[bytes] | None = None,
    ) -> web.StreamResponse:
        upstream = answer.response
        response = web.StreamResponse(status=upstream.status, headers=headers)
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        resumable = resumer is not None and upstream.status == 200
        pump = _Pump(
            response, answer,
            Transcript(self._retries.mid_stream_bytes) if resumable else None,
            self._timeouts.idle,
            self._first_byte_seconds(answer.decision.route.value, answer.decision.worker.name),
            self._metrics.resume_pause_seconds,
        )  # fmt: skip
        current, continuations = answer, []
        try:
            await response.prepare(request)
            if already:
                await pump.send(already)
            while True:
                try:
                    await pump.run(current, chunks)
                    break
                except (BodyBroken, TimeoutError) as err:
                    chunks = None
                    current.response.close()
                    failed = current.decision.worker
                    failure = body_failure(err, failed, relayed=True)
                    self._outcomes.failed(failed, failure)
                    resumed = None
                    if resumer is not None and pump.transcript is not None:
                        pump.transcript.drop_held()
                        resumed = await resumer.resume(failed, failure, pump.transcript)
                    elif streaming_events(upstream):
                        reason = "off" if resumer is None else f"status_{upstream.status}"
                        self._metrics.resumes.labels("refused", reason).inc()
                    else:
                        self._body_retries("past_cap").inc()
                    if resumed is None:
                        await self._end_broken(response, current.decision, failure)
                        return response
                    if isinstance(resumed, bytes):
                        await pump.send(resumed)
                        break
                    continuations.append(resumed)
                    current = Answer(
                        resumed.response, resumed.decision, answer.observer, answer.started,
                        answer.deadline, answer.sniffer,
                    )  # fmt: skip
                    pump.resumed(resumed.stitcher)
        except asyncio.CancelledError:
            current.response.close()
            self._metrics.client_disconnects.inc()
            raise
        except ConnectionResetError:  # the client left: a normal end, not a router error
            current.response.close()
            self._metrics.client_disconnects.inc()
            return response
        finally:
            for continuation in continuations:
                continuation.response.release()
                continuation.lease.release()
        worker = current.decision.worker
        if current.response.status < 500:
            self._outcomes.succeeded(worker)
            if pump.first_at and not continuations and streaming_events(upstream):
                self._pool.record_service(worker, time.perf_counter() - pump.first_at)
        self._count_usage(current.decision, pump.sniffer.usage)
        self._observe(
            current.decision, upstream.status, answer.started, first_byte=not pump.first_at
        )
        observer = answer.observer
        if observer is not None:
            held = await observer.finish()
            if held:
                await response.write(held)
        await response.write_eof()
        return response

    async def _end_broken(
        self, response: web.StreamResponse, decision: Decision, failure: Failure
    ) -> None:
        """The stream broke and was not resumed: tell the client in-band, count it, end."""
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
                self._first_byte_seconds(route, decision.worker.name).observe(elapsed)

    def _count_usage(self, decision: Decision, usage: Usage | None) -> None:
        if usage is None:
            return
        prompt, cached = usage.prompt, usage.cached
        labels = (decision.worker.name, decision.route.value)
        self._prompt_tokens(*labels).inc(prompt)
        if cached:
            self._cached_prompt_tokens(*labels).inc(cached)


class _Pump:
    """Moves one stream's chunks to the client, across continuations: the taps, the
    transcript, first-byte time and the pause a resume cost."""

    __slots__ = (
        "_first_byte", "_idle", "_observer", "_pause", "_pause_from", "_response",
        "_started", "_stitcher", "first_at", "last_at", "sniffer", "transcript",
    )  # fmt: skip

    def __init__(
        self,
        response: web.StreamResponse,
        answer: Answer,
        transcript: Transcript | None,
        idle: float,
        first_byte: Histogram,
        pause: Histogram,
    ) -> None:
        self._response = response
        self._observer = answer.observer
        self._started = answer.started
        self._idle = idle
        self._first_byte = first_byte
        self._pause = pause
        self.transcript = transcript
        self.sniffer = answer.sniffer or UsageSniffer()
        self._stitcher: Stitcher | None = None
        self._pause_from = 0.0
        self.first_at = 0.0
        self.last_at = 0.0

    def resumed(self, stitcher: Stitcher) -> None:
        self._stitcher = stitcher
        self._pause_from = self.last_at

    async def run(self, answer: Answer, chunks: AsyncIterator[bytes] | None) -> None:
        """Relay `answer` to its end; raises BodyBroken or TimeoutError when it breaks."""
        transcript, stitcher = self.transcript, self._stitcher
        if chunks is None:
            chunks = answer.response.chunks(self._idle)
        async with asyncio.timeout_at(answer.deadline):
            async for chunk in chunks:
                if stitcher is not None:
                    chunk = stitcher.feed(chunk)
                if transcript is not None:
                    chunk = transcript.take(chunk)
                if chunk:
                    await self.send(chunk)
        rest = stitcher.rest() if stitcher is not None else b""
        if transcript is not None:
            rest = transcript.take(rest) + transcript.rest()
        if rest:
            await self.send(rest)

    async def send(self, chunk: bytes) -> None:
        self.sniffer.feed(chunk)
        observer = self._observer
        await self._response.write(chunk if observer is None else observer.feed(chunk))
        now = time.perf_counter()
        if not self.first_at:
            self.first_at = self._response[FIRST_BYTE_AT] = now
            self._first_byte.observe(now - self._started)
        elif self._pause_from:
            self._pause.observe(now - self._pause_from)
            self._pause_from = 0.0
        self.last_at = now


def _response_headers(upstream: Response, decision: Decision, request_id: str) -> CIMultiDict[str]:
    headers = strip_hop_by_hop(upstream.headers)
    headers[WORKER_HEADER] = decision.worker.name
    headers[ROUTE_HEADER] = decision.route.value
    if decision.rehomed is not None:
        headers[REHOMED_HEADER] = decision.rehomed.value
    headers["x-request-id"] = request_id
    return headers

