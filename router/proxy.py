"""Forward one request to a worker and stream its answer back.

A failure before the worker sent any response byte (refused, reset, connect timeout, or a
retryable status) is retried on the next choice, excluding workers already tried, within the
request's deadline. Once the first byte has reached the client nothing is retried: a broken
event stream ends with an SSE error event the client can see.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Protocol

import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from router.balancer import Decision
from router.config import RetrySettings, TimeoutSettings
from router.errors import UpstreamError, UpstreamTimeout
from router.health import PassiveHealth
from router.metrics import Children, Metrics
from router.placement import Placement
from router.session import RoutingKey
from router.upstream import (
    BodyBroken,
    ClosedBeforeHead,
    ConnectFailed,
    ProtocolError,
    Response,
    UpstreamClient,
)
from router.usage import UsageSniffer, usage_from_json
from router.workers import Worker

log = logging.getLogger("kvrouter.proxy")

HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
        "te", "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length",
        "expect",
    }
)  # fmt: skip
BUFFER_LIMIT = 1024 * 1024
SSE_DONE = b"data: [DONE]\n\n"
WORKER_HEADER = "x-kvrouter-worker"
ROUTE_HEADER = "x-kvrouter-route"
REHOMED_HEADER = "x-kvrouter-rehomed"


class ResponseObserver(Protocol):
    """Sees the response relayed to the client: its status and each body chunk. `finish` is
    awaited once the whole answer is known and before the client can see that it ended (before
    a buffered body is sent; before an event stream's `data: [DONE]` and end), never for a
    broken stream."""

    def start(self, status: int, streaming: bool) -> None: ...

    def feed(self, chunk: bytes) -> None: ...

    async def finish(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Outgoing:
    """What is sent upstream: the same for every attempt of one request."""

    method: str
    path_qs: str
    headers: CIMultiDict[str]
    body: bytes
    request_id: str
    key: RoutingKey
    observer: ResponseObserver | None = None


def strip_hop_by_hop(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    """Copy end-to-end headers only, including any named by the Connection header."""
    kept = headers.copy()
    for name in HOP_BY_HOP.intersection(map(str.lower, headers.keys())):
        kept.popall(name, None)
    connection = headers.get("connection")
    if connection:
        for token in connection.split(","):
            kept.popall(token.strip(), None)
    return kept


def upstream_headers(request: web.BaseRequest, request_id: str) -> CIMultiDict[str]:
    """The client's headers without hop-by-hop ones, plus X-Forwarded-* and the request id."""
    headers = strip_hop_by_hop(request.headers)
    peer = request.remote or ""
    prior = headers.get("x-forwarded-for")
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    headers["X-Forwarded-Proto"] = request.scheme
    if request.host:
        headers.setdefault("X-Forwarded-Host", request.host)
    headers["x-request-id"] = request_id
    return headers


def sse_error_event(message: str, code: str) -> bytes:
    payload = {"error": {"message": message, "type": "server_error", "code": code}}
    return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"


class Forwarder:
    """Sends requests to workers chosen by placement, with retries and passive health."""

    def __init__(
        self,
        client: UpstreamClient,
        placement: Placement,
        passive: PassiveHealth,
        metrics: Metrics,
        retries: RetrySettings,
        timeouts: TimeoutSettings,
    ) -> None:
        self._client = client
        self._placement = placement
        self._passive = passive
        self._metrics = metrics
        self._requests = Children(metrics.requests)
        self._request_seconds = Children(metrics.request_seconds)
        self._first_byte_seconds = Children(metrics.first_byte_seconds)
        self._prompt_tokens = Children(metrics.prompt_tokens)
        self._cached_prompt_tokens = Children(metrics.cached_prompt_tokens)
        self._retries = retries
        self._timeouts = timeouts

    async def forward(self, request: web.Request, out: Outgoing) -> web.StreamResponse:
        """Choose, send, retry before the first byte, then relay the answer."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeouts.total
        tried: list[str] = []
        while True:
            decision = await self._placement.place(out.key, tried)
            worker = decision.worker
            worker.inflight += 1
            try:
                upstream = await self._attempt(decision, out, tried, deadline - loop.time())
                if upstream is None:
                    continue
                return await self._relay(request, upstream, decision, out, started, deadline)
            finally:
                worker.inflight -= 1

    async def _attempt(
        self, decision: Decision, out: Outgoing, tried: list[str], remaining: float
    ) -> Response | None:
        """Open the upstream response; None means 'try the next worker'."""
        worker = decision.worker
        can_retry = len(tried) < self._retries.attempts and remaining > 0
        try:
            upstream = await self._open(worker, out, remaining)
        except UpstreamError as err:
            self._metrics.upstream_errors.labels(worker.name, err.kind).inc()
            # nothing listening ejects at once; a connect timeout (perhaps a full backlog)
            # only counts toward the run of consecutive failures
            self._passive.on_failure(worker, err.kind, immediate=err.kind == "connect")
            tried.append(worker.name)
            if err.retryable and can_retry:
                self._metrics.retries.labels(err.kind).inc()
                log.info("retrying %s after %s on %s", out.request_id, err.kind, worker.name)
                return None
            raise
        status = upstream.status
        if status >= 500:
            self._metrics.upstream_errors.labels(worker.name, "status").inc()
            self._passive.on_failure(worker, "status")
            if status in self._retries.on_status and can_retry:
                upstream.close()
                tried.append(worker.name)
                self._metrics.retries.labels("status").inc()
                return None
        else:
            self._passive.on_success(worker)
        return upstream

    async def _open(self, worker: Worker, out: Outgoing, remaining: float) -> Response:
        """Send the request and wait for the response head (connect included, bounded by
        `timeouts.first_byte` and the request's deadline), mapping failures to our errors."""
        budget = min(self._timeouts.first_byte, max(remaining, 0.001))
        try:
            async with asyncio.timeout(budget):
                return await self._client.request(
                    worker.url, out.method, out.path_qs, out.headers, out.body
                )
        except ConnectFailed as err:
            if err.timed_out:
                raise UpstreamError(
                    f"worker {worker.name} did not accept a connection within "
                    f"{self._timeouts.connect}s",
                    worker=worker.name, kind="connect_timeout", retryable=True,
                ) from None  # fmt: skip
            raise UpstreamError(
                f"cannot connect to worker {worker.name}: {err}",
                worker=worker.name, kind="connect", retryable=True,
            ) from None  # fmt: skip
        except ClosedBeforeHead as err:
            raise UpstreamError(
                f"worker {worker.name} closed the connection before answering: {err}",
                worker=worker.name, kind="reset", retryable=True,
            ) from None  # fmt: skip
        except ProtocolError as err:
            raise UpstreamError(
                f"invalid response from worker {worker.name}: {err}",
                worker=worker.name, kind="protocol", retryable=True,
            ) from None  # fmt: skip
        except TimeoutError:
            raise UpstreamTimeout(
                f"worker {worker.name} sent no response within {budget:.1f}s",
                worker=worker.name, kind="timeout", retryable=False,
            ) from None  # fmt: skip

    def _response_headers(
        self, upstream: Response, decision: Decision, out: Outgoing
    ) -> CIMultiDict[str]:
        headers = strip_hop_by_hop(upstream.headers)
        headers[WORKER_HEADER] = decision.worker.name
        headers[ROUTE_HEADER] = decision.route.value
        if decision.rehomed is not None:
            headers[REHOMED_HEADER] = decision.rehomed.value
        headers["x-request-id"] = out.request_id
        return headers

    async def _relay(
        self,
        request: web.Request,
        upstream: Response,
        decision: Decision,
        out: Outgoing,
        started: float,
        deadline: float,
    ) -> web.StreamResponse:
        """Pass the answer on; `deadline` (loop time) bounds the whole request."""
        headers = self._response_headers(upstream, decision, out)
        length = upstream.content_length
        streaming = upstream.content_type == "text/event-stream"
        buffered = not streaming and length is not None and length <= BUFFER_LIMIT
        if out.observer is not None:
            out.observer.start(upstream.status, not buffered)
        try:
            if buffered:
                return await self._relay_buffered(
                    upstream, decision, headers, started, deadline, out
                )
            return await self._relay_stream(
                request, upstream, decision, headers, started, deadline, out
            )
        finally:
            upstream.release()

    async def _relay_buffered(
        self,
        upstream: Response,
        decision: Decision,
        headers: CIMultiDict[str],
        started: float,
        deadline: float,
        out: Outgoing | None = None,
    ) -> web.Response:
        worker = decision.worker
        try:
            if upstream.complete:  # the usual small answer came with its head
                body = await upstream.read()
            else:
                async with asyncio.timeout_at(deadline):
                    body = await upstream.read()
        except (BodyBroken, TimeoutError) as err:
            upstream.close()
            self._metrics.upstream_errors.labels(worker.name, "stream").inc()
            self._passive.on_failure(worker, "stream")
            raise UpstreamError(
                f"worker {worker.name} broke off its response: {err or type(err).__name__}",
                worker=worker.name, kind="stream", retryable=False,
            ) from None  # fmt: skip
        if b'"usage"' in body:
            self._count_usage(decision, usage_from_json(body))
        self._observe(decision, upstream.status, started, first_byte=True)
        if out is not None and out.observer is not None:
            out.observer.feed(body)
            await out.observer.finish()
        return web.Response(body=body, status=upstream.status, headers=headers)

    async def _relay_stream(
        self,
        request: web.Request,
        upstream: Response,
        decision: Decision,
        headers: CIMultiDict[str],
        started: float,
        deadline: float,
        out: Outgoing | None = None,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, headers=headers)
        observer = out.observer if out is not None else None
        finished = False
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        sniffer = UsageSniffer()
        sent_first = False
        try:
            await response.prepare(request)
            async with asyncio.timeout_at(deadline):
                async for chunk in upstream.chunks(self._timeouts.idle):
                    tail = chunk
                    if observer is not None and not finished:
                        observer.feed(chunk)
                        if chunk.endswith(SSE_DONE):
                            await response.write(chunk[: -len(SSE_DONE)])
                            await observer.finish()
                            finished, tail = True, SSE_DONE
                    await response.write(tail)
                    if not sent_first:
                        sent_first = True
                        self._first_byte_seconds(decision.route.value).observe(
                            time.perf_counter() - started
                        )
                    sniffer.feed(chunk)
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
            await self._end_broken_stream(response, decision, err)
            return response
        self._count_usage(decision, sniffer.usage)
        self._observe(decision, upstream.status, started, first_byte=not sent_first)
        if observer is not None and not finished:
            await observer.finish()
        await response.write_eof()
        return response

    async def _end_broken_stream(
        self, response: web.StreamResponse, decision: Decision, err: BaseException
    ) -> None:
        """The worker failed mid-stream: tell the client in-band, count it, and end."""
        worker = decision.worker
        kind = "timeout" if isinstance(err, TimeoutError) else "stream"
        self._metrics.upstream_errors.labels(worker.name, kind).inc()
        self._passive.on_failure(worker, kind)
        self._observe(decision, 502, 0.0, first_byte=False)
        if kind == "timeout":
            message = (
                f"stream from worker {worker.name} stopped: over timeouts.total for the request "
                "or silent for longer than timeouts.idle"
            )
            code = "upstream_timeout"
        else:
            message = f"worker {worker.name} broke off the stream: {err or type(err).__name__}"
            code = "upstream_stream_broken"
        log.warning(message)
        try:
            if response.content_type == "text/event-stream":
                await response.write(sse_error_event(message, code))
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
