"""Forward one request: place it, send it, retry what may be retried, relay the answer, and
continue a stream that a worker cut off.

First the request passes admission control (`router.limits.admission`: while every worker is
saturated it waits in the router, tenants served in turn, until one has room; it holds its
place there until its first worker is leased; one without a session that waited avoids the
workers it would still wait at). Each attempt takes a placement decision
(avoiding the workers already tried) and a lease on the chosen worker, which counts it in
flight until the answer has been relayed or the attempt failed. A failure before anything
reached the client (refused, reset, connect timeout, garbled head, a status in
`retries.on_status`, or a body read whole that broke) is tried again on the next choice, at
most `retries.attempts` times and within the request's deadline.

Once the first byte has reached the client the request is not sent again; a stream cut after
it is *resumed* instead (`StreamResumer`, on unless `retries.mid_stream` is off): continued on
the next worker placement gives (as for a fallback, never one that already failed it), as a
continuation of what the client has (`router.proxy.resume`), at most `retries.mid_stream_max`
times, within the request's deadline; resumes do not use up `retries.attempts`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from router.config import RetrySettings, TimeoutSettings
from router.errors import NoHealthyWorker, RouterError
from router.fleet.workers import Worker, WorkerLease, WorkerPool
from router.limits.admission import Admission
from router.metrics import Metrics
from router.placement.place import Decision, Placement
from router.placement.session import RoutingKey
from router.proxy.outcomes import Failure, Outcomes, bad_status, before_head
from router.proxy.relay import Answer, Continuation, Relay, ResponseObserver, RetryWhole
from router.proxy.resume import (
    ECHO_ENGINES,
    RESUMING_ENGINES,
    Refused,
    Relayed,
    Stitcher,
    check,
    continuation_body,
    finish_tail,
    limit_reached,
    path_kind,
    read_relayed,
)
from router.proxy.transcript import Transcript
from router.proxy.upstream import (
    ClosedBeforeHead,
    ConnectFailed,
    ProtocolError,
    Response,
    UpstreamClient,
)
from router.proxy.usage import METER

log = logging.getLogger("kvrouter.proxy")

_BEFORE_HEAD = (ConnectFailed, ClosedBeforeHead, ProtocolError, TimeoutError)


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
    body_for: Callable[[Worker], bytes] | None = None  # a body per worker (continuations)


@dataclass(slots=True)
class Opened:
    """A worker's response head, the decision that chose the worker, and the lease that
    counts the request on it (released by whoever relays the answer)."""

    decision: Decision
    response: Response
    lease: WorkerLease


class Forwarder:
    """Sends requests to workers chosen by placement, with retries and passive health."""

    def __init__(
        self,
        client: UpstreamClient,
        placement: Placement,
        pool: WorkerPool,
        outcomes: Outcomes,
        relay: Relay,
        metrics: Metrics,
        retries: RetrySettings,
        timeouts: TimeoutSettings,
        *,
        admission: Admission,
    ) -> None:
        self._client = client
        self._admission = admission
        self._placement = placement
        self._pool = pool
        self._outcomes = outcomes
        self._relay = relay
        self._metrics = metrics
        self._retried = metrics.retries
        self.reconfigure(retries, timeouts)

    def reconfigure(self, retries: RetrySettings, timeouts: TimeoutSettings) -> None:
        self._retries = retries
        self._timeouts = timeouts
        self._relay.reconfigure(timeouts, retries)

    async def forward(self, request: web.Request, out: Outgoing) -> web.StreamResponse:
        """Wait for admission, choose, send, retry before the first byte, then relay the
        answer (resuming it elsewhere if it is cut). A `ReplyMeter` on the request (its
        tenant's tokens are limited) is given the body's size and the answer's usage."""
        started = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self._timeouts.total
        resumer = StreamResumer(self, out, deadline) if self._retries.mid_stream else None
        meter = request.get(METER)
        sniffer = None
        if meter is not None:
            meter.sent_bytes = len(out.body)
            sniffer = meter.sniffer
        tried: list[str] = []
        async with self._admission.admit(out.key.tenant, deadline) as ticket:
            avoid = ticket.avoid if out.key.session is None else ()
            opened = await self.open(out, deadline, tried, avoid, ticket.placed)
        try:
            while True:
                answer = Answer(
                    opened.response, opened.decision, out.observer, started, deadline, sniffer
                )
                with opened.lease:
                    try:
                        return await self._relay.relay(request, answer, out.request_id, resumer)
                    except RetryWhole as retry:
                        self._retry_whole(retry, opened.decision.worker, tried, deadline)
                        log.info(
                            "retrying %s: its body broke on %s", out.request_id,
                            opened.decision.worker.name,
                        )  # fmt: skip
                opened = await self.open(out, deadline, tried)
        finally:
            self._admission.wake()

    def _retry_whole(
        self, retry: RetryWhole, worker: Worker, tried: list[str], deadline: float
    ) -> None:
        """A body read whole broke: count the retry, or raise its error if none is left."""
        tried.append(worker.name)
        left = deadline - asyncio.get_running_loop().time()
        if len(tried) > self._retries.attempts or left <= 0:
            self._metrics.body_retries.labels("no_attempt_left").inc()
            raise retry.failure.error(worker) from None
        self._metrics.body_retries.labels("retried").inc()
        self._retried.labels(retry.failure.kind).inc()

    async def open(
        self,
        out: Outgoing,
        deadline: float,
        tried: list[str] | None = None,
        avoid: Sequence[str] = (),
        placed: Callable[[], None] | None = None,
    ) -> Opened:
        """The first usable response head, trying workers in placement order; raises the
        last failure's error when no attempt is left (or NoHealthyWorker). `tried` names
        workers already tried for this request (each counts as an attempt) and gets the ones
        tried here; `avoid` names workers not to use that count as no attempt; `placed` is
        called once a worker is leased (counted in flight), before anything is sent."""
        loop = asyncio.get_running_loop()
        tried = [] if tried is None else tried
        while True:
            excluded = [*avoid, *tried] if avoid else tried
            decision = await self._placement.place(out.key, excluded, len(out.body))
            worker = decision.worker
            lease = self._pool.lease(worker)
            if placed is not None:
                placed()
            remaining = deadline - loop.time()
            may_retry = len(tried) < self._retries.attempts and remaining > 0
            try:
                response, failure = await self._send(decision, out, remaining, may_retry)
            except BaseException:
                lease.release()
                raise
            if failure is None:
                return Opened(decision, response, lease)
            lease.release()
            self._outcomes.failed(worker, failure)
            tried.append(worker.name)
            if not (failure.retryable and may_retry):
                raise failure.error(worker)
            self._retried.labels(failure.kind).inc()
            log.info("retrying %s after %s on %s", out.request_id, failure.kind, worker.name)

    async def _send(
        self, decision: Decision, out: Outgoing, remaining: float, may_retry: bool
    ) -> tuple[Response, None] | tuple[None, Failure]:
        """One exchange up to the response head: the head, or the failure it ended in."""
        worker = decision.worker
        budget = min(self._timeouts.first_byte, max(remaining, 0.001))
        body = out.body if out.body_for is None else out.body_for(worker)
        try:
            response = await self._client.request(
                worker.url, out.method, out.path_qs, out.headers, body, timeout=budget
            )
        except _BEFORE_HEAD as err:
            return None, before_head(err, worker, self._timeouts.connect, budget)
        status = response.status
        if status < 500:  # a success once the body has come whole (see relay)
            return response, None
        retry = status in self._retries.on_status and may_retry
        if not retry:  # the worker's own error answer goes to the client as it is
            self._outcomes.failed(worker, bad_status(worker, status, retryable=False))
            return response, None
        response.close()
        return None, bad_status(worker, status, retryable=True)


class StreamResumer:
    """Continues one request's stream on another worker when a worker cuts it off (see the
    module docstring and `router.proxy.resume`). Every outcome is counted."""

    def __init__(self, forwarder: Forwarder, out: Outgoing, deadline: float) -> None:
        self._forwarder = forwarder
        self._out = out
        self._deadline = deadline
        self._failed: list[str] = []
        self._document: Any = None

    async def resume(
        self, failed: Worker, failure: Failure, transcript: Transcript
    ) -> Continuation | bytes | None:
        forwarder, out = self._forwarder, self._out
        settings = forwarder._retries
        self._failed.append(failed.name)
        counted = forwarder._metrics.resumes
        try:
            relayed = self._relayed(transcript)
            if relayed.done:
                counted.labels("completed", failure.kind).inc()
                return b""
            if relayed.finished:  # all but the end came: end it
                counted.labels("completed", failure.kind).inc()
                return b"data: [DONE]\n\n"
            check(self._document, relayed)
            if limit_reached(self._document, relayed):  # cut after its last token
                counted.labels("completed", failure.kind).inc()
                return finish_tail(relayed)
            if len(self._failed) > settings.mid_stream_max:
                raise Refused("too_many")
            if asyncio.get_running_loop().time() >= self._deadline:
                raise Refused("deadline")
            opened = await self._open(relayed)
        except Refused as refused:
            counted.labels("refused", refused.reason).inc()
            log.warning("stream %s cut and not resumed (%s)", out.request_id, refused.reason)
            return None
        except (NoHealthyWorker, RouterError) as err:
            counted.labels("failed", "no_worker").inc()
            log.warning("stream %s cut; no worker could continue it: %s", out.request_id, err)
            return None
        counted.labels("resumed", failure.kind).inc()
        worker = opened.decision.worker
        log.warning(
            "stream %s cut by %s (%s); continued on %s", out.request_id, failed.name,
            failure.kind, worker.name,
        )  # fmt: skip
        echo = worker.engine in ECHO_ENGINES
        return Continuation(
            opened.decision, opened.response, opened.lease, Stitcher(relayed, echo=echo)
        )

    def _relayed(self, transcript: Transcript) -> Relayed:
        if transcript.unresumable is not None:
            raise Refused(transcript.unresumable)
        chat = path_kind(self._out.path_qs)
        if chat is None:
            raise Refused("path")
        relayed = read_relayed(transcript.relayed, chat)
        if self._document is None:
            try:
                self._document = orjson.loads(self._out.body)
            except orjson.JSONDecodeError:
                raise Refused("request") from None
        return relayed

    async def _open(self, relayed: Relayed) -> Opened:
        """The continuation's head from the next worker that can continue it."""
        forwarder, document = self._forwarder, self._document
        unable = [w.name for w in forwarder._pool if w.engine not in RESUMING_ENGINES]
        out = replace(
            self._out, body_for=lambda worker: continuation_body(document, relayed, worker.engine)
        )
        return await forwarder.open(out, self._deadline, avoid=[*self._failed, *unable])
