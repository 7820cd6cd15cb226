"""The one place that turns an upstream outcome into a failure: its stage, its kind (the metric
label), whether another worker may be tried, the passive-health report and the client's error.

Stages, by what the client has seen:
- `BEFORE_HEAD`: no response byte came from the worker (refused, reset, garbled, timed out);
- `AFTER_HEAD`: the head arrived (a 5xx, or a buffered body that broke), nothing relayed yet;
- `BODY_BROKEN`: part of the body was already relayed to the client.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from router.errors import UpstreamError, UpstreamTimeout
from router.fleet.passive import PassiveHealth
from router.fleet.workers import Worker
from router.metrics import Metrics
from router.proxy.upstream import BodyBroken, ClosedBeforeHead, ConnectFailed, ProtocolError


class Stage(enum.StrEnum):
    BEFORE_HEAD = "before_head"
    AFTER_HEAD = "after_head"
    BODY_BROKEN = "body_broken"


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed exchange with one worker."""

    stage: Stage
    kind: str
    message: str
    retryable: bool = False
    eject_now: bool = False
    timed_out: bool = False

    def error(self, worker: Worker) -> UpstreamError:
        """What the client is answered when this failure is the last word."""
        kind = UpstreamTimeout if self.timed_out and self.stage is Stage.BEFORE_HEAD else (
            UpstreamError
        )  # fmt: skip
        return kind(self.message, worker=worker.name, kind=self.kind, retryable=self.retryable)


def before_head(err: BaseException, worker: Worker, connect: float, budget: float) -> Failure:
    """A failure while connecting or waiting for the response head."""
    name = worker.name
    if isinstance(err, ConnectFailed):
        if err.timed_out:  # perhaps only a full backlog: counts toward the run, no ejection
            return Failure(
                Stage.BEFORE_HEAD, "connect_timeout",
                f"worker {name} did not accept a connection within {connect}s", retryable=True,
            )  # fmt: skip
        return Failure(  # nothing listening: eject at once
            Stage.BEFORE_HEAD, "connect", f"cannot connect to worker {name}: {err}",
            retryable=True, eject_now=True,
        )  # fmt: skip
    if isinstance(err, ClosedBeforeHead):
        return Failure(
            Stage.BEFORE_HEAD, "reset",
            f"worker {name} closed the connection before answering: {err}", retryable=True,
        )  # fmt: skip
    if isinstance(err, ProtocolError):
        return Failure(
            Stage.BEFORE_HEAD, "protocol", f"invalid response from worker {name}: {err}",
            retryable=True,
        )  # fmt: skip
    assert isinstance(err, TimeoutError), err
    return Failure(
        Stage.BEFORE_HEAD, "timeout", f"worker {name} sent no response within {budget:.1f}s",
        timed_out=True,
    )  # fmt: skip


def bad_status(worker: Worker, status: int, retryable: bool) -> Failure:
    return Failure(
        Stage.AFTER_HEAD, "status", f"worker {worker.name} answered {status}", retryable=retryable
    )


def body_failure(err: BaseException, worker: Worker, *, relayed: bool) -> Failure:
    """The body stopped short (`BodyBroken`) or went silent (`TimeoutError`)."""
    stage = Stage.BODY_BROKEN if relayed else Stage.AFTER_HEAD
    if isinstance(err, TimeoutError) and relayed:
        return Failure(
            stage, "timeout",
            f"stream from worker {worker.name} stopped: over timeouts.total for the request "
            "or silent for longer than timeouts.idle", timed_out=True,
        )  # fmt: skip
    assert isinstance(err, BodyBroken | TimeoutError), err
    what = "the stream" if relayed else "its response"
    return Failure(
        stage, "stream", f"worker {worker.name} broke off {what}: {err or type(err).__name__}"
    )


class Outcomes:
    """Reports each exchange's outcome: failures to the metrics and to passive health,
    successes to passive health. An exchange succeeds when its whole body has come (not when
    its head did), so a worker that breaks every body is ejected like one that refuses."""

    __slots__ = ("_errors", "_passive")

    def __init__(self, passive: PassiveHealth, metrics: Metrics) -> None:
        self._passive = passive
        self._errors = metrics.upstream_errors

    def failed(self, worker: Worker, failure: Failure) -> None:
        self._errors.labels(worker.name, failure.kind).inc()
        self._passive.on_failure(worker, failure.kind, immediate=failure.eject_now)

    def succeeded(self, worker: Worker) -> None:
        self._passive.on_success(worker)
