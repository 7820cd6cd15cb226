"""Admission control: when every worker a request could go to is saturated, the request waits
in the router, tenants served in turn, instead of joining a worker's queue in arrival order.

A request takes a `Ticket` (`async with admission.admit(tenant, deadline) as ticket:`). While
some worker has room and nothing waits, it passes at once. Otherwise it waits in a bounded
queue (`limits.admission.max_queue`) for at most `limits.admission.timeout` (and never past
the request's deadline), in weighted round robin across tenants (`router.limits.fair`, shares
from `limits.tenants`). A worker has room by the placement's own saturation test
(`Balancer.fleet_full`), taken now rather than held: a request sent to a worker whose batch is
full waits there in arrival order, out of the router's fair order.

Waiting requests leave one at a time: the next leaves once the one before it has been placed
(`Ticket.placed`, called once its worker is leased and counted in flight), so the router's
view of each worker's load includes it. A request leaves because some worker has room, which
need not be the one placement would pick: `Ticket.avoid` names the workers it would still wait
at, for the forwarder to steer a request without a session around them (one with a session
goes where placement sends it, which weighs its warm cache against the wait). The queue is
re-checked whenever a request finishes (`wake`), when a ticket is given back, and every
`RECHECK` seconds while anything waits.

Headroom (`limits.admission.headroom`, places per worker): a tenant with other requests
waiting behind this one is let go only while a worker keeps that many places free after it;
a tenant with nothing else waiting may take any free place. Tenants that are not using their
share of the fleet then start at once, instead of waiting for a backlogged tenant's request
to finish somewhere; the price is those places left idle while only backlogged tenants send.

Past the bound the tenant holding the most of the queue for its share gives up its newest
request (or the newcomer is refused, if that is its own tenant): a 503 `queue_full`. A wait
that runs out is a 503 `queue_timeout`. Both carry Retry-After: the time the queue ahead took
to drain lately. A ticket is given back on every path (admitted, refused, timed out, or its
client gone while it waited).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType

from router.config import AdmissionSettings, TenantLimitSettings
from router.errors import Overloaded
from router.limits.fair import FairQueue
from router.metrics import Metrics

log = logging.getLogger("kvrouter.limits")

RECHECK = 0.02
"""Seconds between checks of a non-empty queue when nothing else wakes it (load scrapes,
other routers' traffic)."""
RATE_WINDOW = 64
"""Releases remembered to estimate how fast the queue drains (for Retry-After)."""


class _State(enum.Enum):
    NEW = "new"
    WAITING = "waiting"
    ADMITTED = "admitted"
    PLACED = "placed"
    REFUSED = "refused"


class Ticket:
    """One request's way through admission: waits on entry (raising `Overloaded` if it cannot
    get through), then holds the queue's one place "in transit" until `placed` or the end of
    the block, whichever comes first."""

    __slots__ = ("_admission", "_deadline", "_future", "_queued_at", "_state", "avoid", "tenant")

    def __init__(self, admission: Admission, tenant: str, deadline: float) -> None:
        self._admission = admission
        self.tenant = tenant
        self.avoid: tuple[str, ...] = ()
        """For a request that waited: the workers it would still wait at when it left."""
        self._deadline = deadline
        self._state = _State.NEW
        self._future: asyncio.Future[None] | None = None
        self._queued_at = 0.0

    async def __aenter__(self) -> Ticket:
        await self._admission._enter(self)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        err: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.placed()

    def placed(self) -> None:
        """The request has its worker: the next waiting one may be considered. Idempotent."""
        if self._state is _State.ADMITTED:
            self._state = _State.PLACED
            self._admission._landed()


class Admission:
    """The admission queue of one router process (see the module docstring)."""

    def __init__(
        self,
        settings: AdmissionSettings,
        tenants: TenantLimitSettings,
        full: Callable[[int], bool],
        crowded: Callable[[int], tuple[str, ...]],
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._full = full
        self._crowded = crowded
        self._metrics = metrics
        self._clock = clock
        self._queue: FairQueue[Ticket] = FairQueue()
        self._in_transit = 0
        self._released: deque[float] = deque(maxlen=RATE_WINDOW)
        self._classes: dict[str, int] = {}
        self._nonempty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.reconfigure(settings, tenants)

    def reconfigure(self, settings: AdmissionSettings, tenants: TenantLimitSettings) -> None:
        self._settings = settings
        self._tenants = tenants
        if not settings.enabled:
            self._release_all()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def admit(self, tenant: str, deadline: float) -> Ticket:
        """The request's ticket; `deadline` (loop time) bounds its wait with the timeout."""
        return Ticket(self, tenant, deadline)

    def wake(self) -> None:
        """A request finished: a worker may have room."""
        if len(self._queue):
            self._dispatch()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._recheck_forever())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._release_all()

    async def _recheck_forever(self) -> None:
        while True:
            await self._nonempty.wait()
            await asyncio.sleep(RECHECK)
            self._dispatch()

    async def _enter(self, ticket: Ticket) -> None:
        if not self._settings.enabled or (not len(self._queue) and not self._full(1)):
            self._in_transit += 1
            ticket._state = _State.ADMITTED
            return
        self._enqueue(ticket)
        self._dispatch()
        if ticket._state is _State.WAITING:
            await self._wait(ticket)

    def _enqueue(self, ticket: Ticket) -> None:
        tenant, queue = ticket.tenant, self._queue
        share = self._tenants.of(tenant).share
        if len(queue) >= self._settings.max_queue:
            self._make_room(tenant, share)
        ticket._future = asyncio.get_running_loop().create_future()
        ticket._state = _State.WAITING
        ticket._queued_at = self._clock()
        queue.push(tenant, ticket, share)
        self._count_class(tenant, +1)
        self._nonempty.set()

    def _make_room(self, tenant: str, share: float) -> None:
        """The queue is full: the tenant holding the most of it for its share gives up its
        newest request, unless that would be the newcomer's own tenant (refused instead)."""
        queue = self._queue
        heaviest = queue.heaviest()
        if heaviest is None:
            raise self._refusal(tenant, "queue_full", waited=0.0)
        heaviest_share = self._tenants.of(heaviest).share
        if (queue.waiting(tenant) + 1) / share >= queue.waiting(heaviest) / heaviest_share:
            raise self._refusal(tenant, "queue_full", waited=0.0)
        pushed_out = queue.pop_newest(heaviest)
        self._left(pushed_out)
        pushed_out._state = _State.REFUSED
        assert pushed_out._future is not None
        waited = self._clock() - pushed_out._queued_at
        pushed_out._future.set_exception(self._refusal(heaviest, "queue_full", waited))

    async def _wait(self, ticket: Ticket) -> None:
        future = ticket._future
        assert future is not None
        loop = asyncio.get_running_loop()
        wait = min(self._settings.timeout, max(0.0, ticket._deadline - loop.time()))
        try:
            async with asyncio.timeout(wait):
                await asyncio.shield(future)
        except TimeoutError:
            if ticket._state is _State.ADMITTED:  # admitted as the wait ran out
                return
            self._queue.remove(ticket.tenant, ticket)
            self._left(ticket)
            ticket._state = _State.REFUSED
            raise self._refusal(
                ticket.tenant, "queue_timeout", self._clock() - ticket._queued_at
            ) from None
        except asyncio.CancelledError:  # the client went away while waiting
            if ticket._state is _State.ADMITTED:
                ticket.placed()
            elif ticket._state is _State.WAITING:
                self._queue.remove(ticket.tenant, ticket)
                self._left(ticket)
                ticket._state = _State.REFUSED
                self._observe_wait(ticket, "gone")
            elif future.done():  # pushed out as it went: nobody will read why
                future.exception()
            raise

    def _dispatch(self) -> None:
        """Let the next waiting request go if a worker has room and none is in transit: the
        first in turn whose tenant may take the room there is (see `_may_go`)."""
        queue = self._queue
        if not len(queue) or self._in_transit or self._full(1):
            return
        headroom = self._settings.headroom
        roomy: list[bool] = []  # whether a worker has 1 + headroom places free, once asked

        def may_go(tenant: str, waiting: int) -> bool:
            """A tenant with others waiting behind this request leaves `headroom` places
            free at every worker; one with nothing else waiting takes any free place."""
            if waiting <= 1 or not headroom:
                return True
            if not roomy:
                roomy.append(not self._full(1 + headroom))
            return roomy[0]

        ticket = queue.pop_first(may_go)
        if ticket is None:
            return
        self._left(ticket)
        ticket._state = _State.ADMITTED
        backlogged = queue.waiting(ticket.tenant) > 0
        ticket.avoid = self._crowded(1 + headroom if backlogged else 1)
        self._in_transit += 1
        self._released.append(self._clock())
        self._observe_wait(ticket, "admitted")
        assert ticket._future is not None
        ticket._future.set_result(None)

    def _landed(self) -> None:
        self._in_transit -= 1
        self._dispatch()

    def _left(self, ticket: Ticket) -> None:
        """`ticket` is out of the queue (its place is given back)."""
        self._count_class(ticket.tenant, -1)
        if not len(self._queue):
            self._nonempty.clear()

    def _count_class(self, tenant: str, step: int) -> None:
        label = self._tenants.label_of(tenant)
        count = self._classes.get(label, 0) + step
        self._classes[label] = count
        self._metrics.admission_queue.labels(label).set(count)

    def _observe_wait(self, ticket: Ticket, outcome: str) -> None:
        waited = self._clock() - ticket._queued_at
        label = self._tenants.label_of(ticket.tenant)
        self._metrics.admission_wait_seconds.labels(label, outcome).observe(waited)

    def _refusal(self, tenant: str, reason: str, waited: float) -> Overloaded:
        label = self._tenants.label_of(tenant)
        self._metrics.limit_rejections.labels(reason, label).inc()
        if waited:
            self._metrics.admission_wait_seconds.labels(label, reason).observe(waited)
        settings = self._settings
        retry = self.retry_after()
        if reason == "queue_full":
            what = (
                f"every worker is saturated and the admission queue is full "
                f"({settings.max_queue} requests waiting, limits.admission.max_queue)"
            )
        else:
            what = (
                f"every worker stayed saturated for the {waited:.1f}s this request waited "
                f"(limits.admission.timeout: {settings.timeout:g}s)"
            )
        return Overloaded(f"{what}; retry in {retry}s", reason, retry)

    def retry_after(self) -> int:
        """Whole seconds for the queue as it is now to drain at the pace it drained lately
        (at least 1, at most the wait timeout)."""
        released, cap = self._released, max(1, math.ceil(self._settings.timeout))
        if len(released) < 2 or released[-1] <= released[0]:
            return 1
        rate = (len(released) - 1) / (released[-1] - released[0])
        return min(cap, max(1, math.ceil(len(self._queue) / rate)))

    def _release_all(self) -> None:
        """Admission turned off (or stopping): every waiting request goes on."""
        while len(self._queue):
            ticket = self._queue.pop()
            self._left(ticket)
            ticket._state = _State.ADMITTED
            self._in_transit += 1
            if ticket._future is not None and not ticket._future.done():
                ticket._future.set_result(None)
