"""The forwarding loop with plain fakes: which failures are tried again, how often, where, and
within which deadline; every attempt's lease given back."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

import pytest
from multidict import CIMultiDict

from router.config import (
    AdmissionSettings,
    PassiveHealthSettings,
    RetrySettings,
    TenantLimitSettings,
    TimeoutSettings,
)
from router.errors import NoHealthyWorker, UpstreamError, UpstreamTimeout
from router.fleet.passive import PassiveHealth
from router.fleet.workers import Worker, WorkerPool
from router.limits.admission import Admission
from router.metrics import Metrics
from router.placement.policies import Decision, Route
from router.placement.session import RoutingKey
from router.proxy.forward import Forwarder, Outgoing
from router.proxy.outcomes import Outcomes
from router.proxy.relay import Relay
from router.proxy.upstream import ClosedBeforeHead, ConnectFailed, ProtocolError

NAMES = ("w0", "w1", "w2", "w3")


class FakePlacement:
    """Places in a fixed order, skipping the workers to avoid; records each call's `avoid`."""

    def __init__(self, pool: WorkerPool) -> None:
        self._pool = pool
        self.calls: list[tuple[str, ...]] = []

    async def place(
        self, key: RoutingKey, avoid: Collection[str] = (), size: int = 0
    ) -> Decision:
        self.calls.append(tuple(avoid))
        for worker in self._pool:
            if worker.name not in avoid:
                return Decision(worker, Route.UNKEYED)
        raise NoHealthyWorker()


class FakeResponse:
    def __init__(self, status: int) -> None:
        self.status = status
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def release(self) -> None:
        pass


class FakeClient:
    """Answers each worker by its script: an exception class, "hang", or a status code."""

    def __init__(self, script: dict[str, object]) -> None:
        self._script = script
        self.sent: list[str] = []
        self.inflight_seen: list[int] = []
        self.pool: WorkerPool | None = None

    async def request(self, url, method, target, headers, body, *, timeout=None):
        name = url.rsplit("/", 1)[-1]
        self.sent.append(name)
        if self.pool is not None:
            self.inflight_seen.append(sum(w.inflight for w in self.pool))
        outcome = self._script.get(name, 200)
        if outcome == "hang":  # bounded by `timeout`, as the real client bounds its wait
            async with asyncio.timeout(timeout):
                await asyncio.sleep(60)
        if outcome is ConnectFailed:
            raise ConnectFailed("refused", refused=True)
        if outcome == "connect_timeout":
            raise ConnectFailed("slow", refused=False, timed_out=True)
        if isinstance(outcome, type):
            raise outcome("scripted")
        assert isinstance(outcome, int)
        return FakeResponse(outcome)


def make(script: dict[str, object], attempts: int = 2, first_byte: float = 5.0, **retry):
    pool = WorkerPool(Worker(n, f"http://fake/{n}") for n in NAMES)
    metrics = Metrics()
    passive = PassiveHealth(pool, PassiveHealthSettings(consecutive_failures=100), metrics)
    outcomes = Outcomes(passive, metrics)
    timeouts = TimeoutSettings(first_byte=first_byte)
    placement = FakePlacement(pool)
    client = FakeClient(script)
    client.pool = pool
    forwarder = Forwarder(
        client, placement, pool, outcomes, Relay(outcomes, metrics, timeouts, pool),  # type: ignore[arg-type]
        metrics, RetrySettings(attempts=attempts, **retry), timeouts,
        admission=Admission(AdmissionSettings(enabled=False), TenantLimitSettings(),
                            lambda ahead: False, lambda ahead: (), metrics),
    )  # fmt: skip
    return forwarder, client, placement, pool, metrics


def outgoing() -> Outgoing:
    return Outgoing("POST", "/v1/x", CIMultiDict(), b"{}", "req-1", RoutingKey("t"))


def deadline(seconds: float = 30.0) -> float:
    return asyncio.get_running_loop().time() + seconds


def errors(metrics: Metrics, worker: str, kind: str) -> float:
    sample = metrics.registry.get_sample_value(
        "kvrouter_upstream_errors_total", {"worker": worker, "kind": kind}
    )
    return sample or 0.0


async def test_retries_stop_after_the_configured_attempts_of_four_failing_workers():
    forwarder, client, _, pool, _ = make(dict.fromkeys(NAMES, ConnectFailed), attempts=2)
    with pytest.raises(UpstreamError) as caught:
        await forwarder.open(outgoing(), deadline())
    assert client.sent == ["w0", "w1", "w2"], "one try and two retries, never the fourth worker"
    assert caught.value.kind == "connect" and caught.value.worker == "w2"
    assert all(w.inflight == 0 for w in pool)


async def test_each_retry_avoids_every_worker_already_tried():
    forwarder, client, placement, _, _ = make(dict.fromkeys(NAMES, ClosedBeforeHead), attempts=3)
    with pytest.raises(UpstreamError):
        await forwarder.open(outgoing(), deadline())
    assert client.sent == ["w0", "w1", "w2", "w3"]
    assert placement.calls == [(), ("w0",), ("w0", "w1"), ("w0", "w1", "w2")]


async def test_no_retry_once_the_deadline_has_passed():
    forwarder, client, _, _, _ = make({"w0": ConnectFailed}, attempts=3)
    with pytest.raises(UpstreamError):
        await forwarder.open(outgoing(), deadline(-1.0))
    assert client.sent == ["w0"]


async def test_waiting_for_the_head_is_bounded_by_the_deadline_and_not_retried():
    forwarder, client, _, pool, metrics = make({"w0": "hang"}, attempts=3, first_byte=60.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamTimeout):
        await forwarder.open(outgoing(), deadline(0.2))
    assert loop.time() - started < 2.0
    assert client.sent == ["w0"], "a worker that took the request may still be working on it"
    assert errors(metrics, "w0", "timeout") == 1
    assert pool.get("w0").inflight == 0


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        (ConnectFailed, "connect"),
        ("connect_timeout", "connect_timeout"),
        (ClosedBeforeHead, "reset"),
        (ProtocolError, "protocol"),
        (503, "status"),
    ],
)
async def test_failures_before_anything_was_relayed_go_to_the_next_worker(failure, kind):
    forwarder, client, _, _, metrics = make({"w0": failure})
    opened = await forwarder.open(outgoing(), deadline())
    assert client.sent == ["w0", "w1"] and opened.decision.worker.name == "w1"
    assert errors(metrics, "w0", kind) == 1
    opened.lease.release()


async def test_a_status_not_listed_for_retry_is_answered_as_the_worker_gave_it():
    forwarder, client, _, _, metrics = make({"w0": 500}, on_status=(503,))
    opened = await forwarder.open(outgoing(), deadline())
    assert client.sent == ["w0"] and opened.response.status == 500
    assert errors(metrics, "w0", "status") == 1, "still counted against the worker"
    opened.lease.release()


async def test_a_retried_status_closes_the_first_response():
    forwarder, _, _, _, _ = make({"w0": 503})
    responses: list[FakeResponse] = []
    original = FakeClient.request

    async def recording(self, *args, **kwargs):
        response = await original(self, *args, **kwargs)
        responses.append(response)
        return response

    FakeClient.request = recording  # type: ignore[method-assign]
    try:
        opened = await forwarder.open(outgoing(), deadline())
    finally:
        FakeClient.request = original  # type: ignore[method-assign]
    assert responses[0].closed and not responses[1].closed
    opened.lease.release()


async def test_each_attempt_counts_one_request_in_flight_until_its_lease_ends():
    forwarder, client, _, pool, _ = make({"w0": ClosedBeforeHead})
    opened = await forwarder.open(outgoing(), deadline())
    assert client.inflight_seen == [1, 1], "the failed attempt's lease ended before the next"
    assert pool.get("w1").inflight == 1
    opened.lease.release()
    opened.lease.release()
    assert all(w.inflight == 0 for w in pool), "a second release changes nothing"


async def test_a_cancelled_attempt_gives_its_lease_back():
    forwarder, client, _, pool, _ = make({"w0": "hang"})
    task = asyncio.create_task(forwarder.open(outgoing(), deadline()))
    for _ in range(5):
        await asyncio.sleep(0)
    assert client.sent == ["w0"]
    assert pool.get("w0").inflight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.get("w0").inflight == 0
