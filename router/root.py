"""The composition root: every component of a running router, built from `Settings` in one place.

`Router` owns each piece and every background task. `start` brings them up in one order (HTTP
clients, health probes) and `stop` takes them down in reverse, after the HTTP server has
drained. `reconfigure` hands new settings to the running components (the reload seam): none of
them keeps a private copy of its settings that it cannot be told about. The aiohttp app (see
`router.http.app`) only reads from this object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aiohttp

from router.config import Settings
from router.fleet.discovery import build_source
from router.fleet.discovery.static import static_members
from router.fleet.drain import Drains
from router.fleet.engines import MetricNames, metric_names
from router.fleet.health import HealthChecker
from router.fleet.load import LoadMonitor, Loads
from router.fleet.membership import Membership
from router.fleet.passive import FailureCounts, PassiveHealth
from router.fleet.workers import Worker, WorkerPool
from router.http.access_log import AccessLog
from router.http.auth import Authenticator
from router.http.connections import ClientGuard
from router.limits.admission import Admission
from router.limits.limiter import TenantLimiter
from router.metrics import Metrics
from router.orchestrator.access import open_warning
from router.orchestrator.embeddings import EmbeddingClient
from router.orchestrator.index_turns import TurnIndexer
from router.orchestrator.persist import Persister
from router.orchestrator.recall import Recall
from router.orchestrator.summary import Summarizer
from router.orchestrator.tokenizer import ConfiguredTokenizer
from router.orchestrator.turn import Orchestrator
from router.placement.calls import WorkerCalls
from router.placement.cost import BYTES_PER_TOKEN
from router.placement.place import Balancer, Placement
from router.placement.session import KeyExtractor
from router.processes import follow
from router.processes.channel import Message, Siblings
from router.processes.role import ProcessRole
from router.proxy.forward import Forwarder
from router.proxy.headers import TrustedProxies
from router.proxy.outcomes import Outcomes
from router.proxy.relay import Relay
from router.proxy.upstream import UpstreamClient
from router.store import SessionStore, make_store

log = logging.getLogger("kvrouter")

SHUTDOWN_WRITE_GRACE = 5.0
GAUGE_REFRESH_SECONDS = 1.0


def client_session(settings: Settings) -> aiohttp.ClientSession:
    """The router's one general HTTP client (health probes, model listing, summaries and
    `/tokenize`; proxied traffic goes through `router.proxy.upstream`): keep-alive, no
    cookie jar."""
    connector = aiohttp.TCPConnector(
        limit=0,
        limit_per_host=settings.limits.max_connections_per_worker,
        keepalive_timeout=30,
        ttl_dns_cache=10,
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.timeouts.connect),
    )


class Router:
    """Every component of one router, and their lifecycle. Built inside a running event loop
    (its HTTP clients bind to it). `role` is set in each child of a `--processes N` router
    (`router.processes`): only the leader probes and scrapes workers, and what it sees and what
    the operator changes reaches the others through `siblings`."""

    def __init__(self, settings: Settings, role: ProcessRole | None = None) -> None:
        self.settings = settings
        self.stopping = False
        self.role = role
        self.siblings = Siblings(role)
        self.metrics = metrics = Metrics(
            settings.metrics.prefix, role.metrics_dir if role is not None else None
        )
        self._gauges: asyncio.Task[None] | None = None
        self.supervisor_gone: asyncio.Event = asyncio.Event()
        self.pool = pool = WorkerPool()
        self.failures = FailureCounts()
        self.passive = PassiveHealth(
            pool, settings.health.passive, metrics, failures=self.failures
        )
        self.store: SessionStore = make_store(
            settings.store, on_evict=lambda kind: metrics.store_evictions.labels(kind).inc()
        )
        self.drains = Drains(pool, settings.drain, metrics)
        self.membership = Membership(pool, self.drains, metrics, settings.engine)
        # the static list is in the pool from the start, through the one membership path
        self.membership.apply(static_members(settings.workers, settings.engine))
        self.loads = Loads(settings.load, settings.routing.saturation)
        self.balancer = Balancer(pool, settings.routing, loads=self.loads)
        self.placement = Placement(
            self.balancer, self.store, settings.routing.pins, metrics,
            drains=self.drains, drain=settings.drain,
        )  # fmt: skip
        self.calls = WorkerCalls(self.placement, pool)
        self.extractor = key_extractor(settings)
        self.authenticator = Authenticator(settings.auth)
        self.trusted_proxies = TrustedProxies(settings.proxy.trusted_proxies)
        self.clients = ClientGuard(settings.limits, metrics)
        self.access_log = AccessLog(settings.logging) if settings.logging.access.enabled else None
        self.upstream = UpstreamClient(
            connect_timeout=settings.timeouts.connect,
            max_per_worker=settings.limits.max_connections_per_worker,
        )
        self.membership.on_removed(lambda worker: self.upstream.forget(worker.url))
        limits = settings.limits
        self.limiter = TenantLimiter(limits.tenants, self.store, metrics, bytes_per_token(settings))
        self.admission = Admission(
            limits.admission, limits.tenants, self.balancer.fleet_full, self.balancer.crowded,
            metrics,
        )  # fmt: skip
        outcomes = Outcomes(self.passive, metrics)
        relay = Relay(outcomes, metrics, settings.timeouts, pool, settings.retries)
        self.forwarder = Forwarder(
            self.upstream, self.placement, pool, outcomes, relay, metrics, settings.retries,
            settings.timeouts, admission=self.admission,
        )  # fmt: skip
        self.persister = Persister(self.store, metrics, settings.store.write_retry_deadline)
        self.client = client_session(settings)
        history = settings.history
        self.tokenizer = ConfiguredTokenizer(history.tokenizer, metrics, self.client, self.calls)
        self.summarizer = Summarizer(
            history.summary, self.store, self.client, self.calls, self.tokenizer, metrics
        )
        # recall's embeddings client and indexer exist even while recall is off (idle, no
        # connection), so a reload can turn it on
        self.embeddings = EmbeddingClient(history.recall)
        self.indexer = TurnIndexer(history.recall, self.embeddings, self.store, metrics)
        recall = Recall(history.recall, self.store, self.embeddings, self.indexer, metrics)
        self.orchestrator = Orchestrator(
            history, self.store, self.forwarder, self.tokenizer, self.persister, self.summarizer,
            metrics, store_wait=2 * settings.store.timeout, recall=recall,
            max_body_bytes=settings.limits.max_body_bytes,
        )  # fmt: skip
        self.checker = HealthChecker(
            pool, settings.health, self.client, metrics, failures=self.failures
        )
        self.monitor = LoadMonitor(
            pool, self.loads, settings.load, self._metric_names, self.client, metrics
        )
        if self.siblings.publishing:
            siblings = self.siblings
            self.checker.on_result = lambda w, ok, refused: siblings.publish(
                follow.health(w, ok, refused)
            )
            self.monitor.on_reading = lambda w, r: siblings.publish(follow.load(w, r))

    @property
    def observes(self) -> bool:
        """Whether this process probes and scrapes workers itself (one process, or the
        leader of several)."""
        return self.role is None or self.role.leader

    def drain(self, worker: Worker) -> None:
        """The operator's drain (`router.fleet.drain`), in every process."""
        self.drains.begin(worker, remove=False, reason="admin")
        self.siblings.publish(follow.operator("drain", worker))

    def undrain(self, worker: Worker) -> None:
        self.drains.cancel(worker)
        self.siblings.publish(follow.operator("undrain", worker))

    def set_weight(self, worker: Worker, weight: float) -> None:
        self.pool.set_weight(worker, weight)
        self.siblings.publish(follow.operator("weight", worker, weight=weight))

    def refresh_gauges(self, now: float | None = None) -> None:
        """Set the per-worker gauges read at scrape time (health, in-flight, load freshness)."""
        metrics = self.metrics
        now = time.monotonic() if now is None else now
        for worker in self.pool:
            metrics.worker_healthy.labels(worker.name).set(1 if worker.available else 0)
            metrics.worker_inflight.labels(worker.name).set(worker.inflight)
            metrics.worker_load_fresh.labels(worker.name).set(self.loads.fresh(worker, now))
            age = self.loads.age(worker, now)
            if age is not None:
                metrics.worker_load_age.labels(worker.name).set(age)

    async def _refresh_gauges_forever(self) -> None:
        """With several processes a scrape is answered by one of them from every process's
        last values, so each keeps its own fresh."""
        while True:
            self.refresh_gauges()
            await asyncio.sleep(GAUGE_REFRESH_SECONDS)

    def _follow(self, message: Message) -> None:
        follow.apply(self, message)

    def _metric_names(self, worker: Worker) -> MetricNames:
        return metric_names(worker.engine, self.settings.custom_metrics)

    async def start(self) -> None:
        """Bring the background pieces up, in order: the static list is in the pool from the
        start; other sources fill it as soon as they have a list."""
        self._warn_if_history_is_open()
        self.membership.run(build_source(self.settings))
        self.drains.start()
        if self.observes:
            self.checker.start()
            self.monitor.start()
        if self.role is not None:
            await self.siblings.open(self._follow, self.supervisor_gone.set)
            self._gauges = asyncio.get_running_loop().create_task(
                self._refresh_gauges_forever(), name="gauges"
            )
        self.indexer.start()
        self.admission.start()

    async def stop(self) -> None:
        """Take everything down in reverse order; pending history writes get a short grace."""
        self.stopping = True
        await self.admission.stop()
        if self._gauges is not None:
            self._gauges.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gauges
        await self.siblings.close()
        await self.membership.stop()
        await self.drains.stop()
        await self.monitor.stop()
        await self.checker.stop()
        await self.summarizer.close()
        await self.indexer.close()
        await self.embeddings.close()
        await self.persister.close(min(SHUTDOWN_WRITE_GRACE, self.settings.shutdown_grace))
        await self.placement.close()
        await self.limiter.close()
        await self.upstream.close()
        await self.client.close()
        await self.store.close()

    def reconfigure(self, settings: Settings) -> None:
        """Hand new settings to every running component (the reload seam). Settings fixed
        when the app and its sockets were built (listen, store, metrics prefix, body limit,
        connection caps) take effect at the next start (`router.reload` says which). A new
        worker list or discovery source is handed to the membership, which applies the
        difference."""
        old = self.settings
        fleet = (settings.discovery, settings.workers, settings.engine)
        source = build_source(settings) if fleet != (
            old.discovery, old.workers, old.engine
        ) else None  # fmt: skip
        self.settings = settings
        if source is not None:  # built first: a source that cannot be built changes nothing
            self.membership.reconfigure(settings.engine)
            self.membership.run(source)
        self.drains.reconfigure(settings.drain)
        self.upstream.reconfigure(settings.timeouts.connect)
        self.passive.reconfigure(settings.health.passive)
        self.checker.reconfigure(settings.health)
        self.monitor.reconfigure(settings.load)
        self.loads.reconfigure(settings.load, settings.routing.saturation)
        self.balancer.reconfigure(settings.routing)
        self.placement.reconfigure(settings.routing.pins, settings.drain)
        self.extractor = key_extractor(settings)
        self.authenticator = Authenticator(settings.auth)
        self.trusted_proxies = TrustedProxies(settings.proxy.trusted_proxies)
        self.clients.reconfigure(settings.limits)
        self.limiter.reconfigure(settings.limits.tenants, bytes_per_token(settings))
        self.admission.reconfigure(settings.limits.admission, settings.limits.tenants)
        self.forwarder.reconfigure(settings.retries, settings.timeouts)
        self.tokenizer.reconfigure(settings.history.tokenizer)
        self.summarizer.reconfigure(settings.history.summary)
        self.embeddings.reconfigure(settings.history.recall)
        self.indexer.reconfigure(settings.history.recall)
        self.orchestrator.reconfigure(settings.history)
        if _history_exposure(settings) != _history_exposure(old):
            self._warn_if_history_is_open()

    def _warn_if_history_is_open(self) -> None:
        """`history.access: open` without API keys hands every stored conversation to whoever
        asks: say so (with keys configured every request carries one, and its tenant)."""
        enabled, access, keys, tenant_header = _history_exposure(self.settings)
        if enabled and access == "open" and not keys:
            log.warning(open_warning(tenant_header))


def key_extractor(settings: Settings) -> KeyExtractor:
    """The routing-key extractor. With `auth.keys` configured the tenant is the API key's only:
    the extractor is not even told the tenant header, so no path can fall back to it."""
    session = settings.session
    if settings.auth.enabled and session.tenant_header is not None:
        session = session.model_copy(update={"tenant_header": None})
    return KeyExtractor(session, settings.routing.prefix)


def bytes_per_token(settings: Settings) -> float:
    """Request body bytes per prompt token: how a reply without usage is estimated for its
    tenant's tokens per minute (the figure placement's cost model uses)."""
    configured = settings.routing.cost.bytes_per_token
    return configured or BYTES_PER_TOKEN.get(settings.engine, 4.2)


def _history_exposure(settings: Settings) -> tuple[bool, str, bool, str | None]:
    history = settings.history
    return history.enabled, history.access, settings.auth.enabled, settings.session.tenant_header
