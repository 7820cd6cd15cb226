"""Forward one request: place it, send it, retry what may be retried, relay the answer.

Each attempt takes a placement decision (avoiding the workers already tried) and a lease on
the chosen worker, which counts it in flight until the answer has been relayed or the attempt
failed. A failure before anything reached the client (refused, reset, connect timeout,
garbled head, or a status in `retries.on_status`) is tried again on the next choice, at most
`retries.attempts` times and within the request's deadline. Once the first byte has reached
the client nothing is retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

from router.config import RetrySettings, TimeoutSettings
from router.fleet.workers import WorkerLease, WorkerPool
from router.metrics import Metrics
from router.placement.place import Decision, Placement
from router.placement.session import RoutingKey
from router.proxy.outcomes import Failure, Outcomes, bad_status, before_head
from router.proxy.relay import Answer, Relay, ResponseObserver
from router.proxy.upstream import (
    ClosedBeforeHead,
    ConnectFailed,
    ProtocolError,
    Response,
    UpstreamClient,
)

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
    ) -> None:
        self._client = client
        self._placement = placement
        self._pool = pool
        self._outcomes = outcomes
        self._relay = relay
        self._retried = metrics.retries
        self.reconfigure(retries, timeouts)

    def reconfigure(self, retries: RetrySettings, timeouts: TimeoutSettings) -> None:
        self._retries = retries
        self._timeouts = timeouts
        self._relay.reconfigure(timeouts)

    async def forward(self, request: web.Request, out: Outgoing) -> web.StreamResponse:
        """Choose, send, retry before the first byte, then relay the answer."""
        started = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self._timeouts.total
        opened = await self.open(out, deadline)
        answer = Answer(opened.response, opened.decision, out.observer, started, deadline)
        with opened.lease:
            return await self._relay.relay(request, answer, out.request_id)

    async def open(self, out: Outgoing, deadline: float) -> Opened:
        """The first usable response head, trying workers in placement order; raises the
        last failure's error when no attempt is left (or NoHealthyWorker)."""
        loop = asyncio.get_running_loop()
        tried: list[str] = []
        while True:
            decision = await self._placement.place(out.key, tried, len(out.body))
            worker = decision.worker
            lease = self._pool.lease(worker)
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
        try:
            async with asyncio.timeout(budget):
                response = await self._client.request(
                    worker.url, out.method, out.path_qs, out.headers, out.body
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
