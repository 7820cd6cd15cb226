"""Every Prometheus collector the router exports, defined in this one place.

Collectors live on a registry owned by the app (never the process-global one), so two routers in
one process, as in the tests, never share counters. Names are stable, documented API.
"""

from __future__ import annotations

import os
import time
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

M = TypeVar("M", Counter, Gauge, Histogram)

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
STORE_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip


class Children(Generic[M]):
    """`metric.labels(*values)` for the hot path: each label set's child is made once, then
    found with one dict lookup (`labels()` validates and takes a lock on every call). Safe
    because the router never removes a child from its collectors."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: M) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Timed:
    """Observes the seconds a block took into a histogram child, when the block succeeds."""

    __slots__ = ("_child", "_started")

    def __init__(self, child: Histogram) -> None:
        self._child = child
        self._started = 0.0

    def __enter__(self) -> Timed:
        self._started = time.perf_counter()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._child.observe(time.perf_counter() - self._started)


class Metrics:
    """The router's collectors; `prefix` comes from `metrics.prefix` in router.yaml."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, prefix: str = "kvrouter", shared_dir: str | None = None) -> None:
        """`shared_dir`: the directory where every process of a `--processes N` router keeps
        its values (prometheus-client's multiprocess mode, which the process must have been
        started in: `PROMETHEUS_MULTIPROC_DIR` set before the library was imported); then
        `render` shows the sum over all of them, not this process's values."""
        self.registry = CollectorRegistry(auto_describe=True)
        self._exposed = self.registry
        self.shared = shared_dir is not None
        self._policies: set[str] = set()
        if shared_dir is not None:
            if os.environ.get(MULTIPROC_ENV) != shared_dir:
                raise RuntimeError(f"shared metrics need {MULTIPROC_ENV}={shared_dir} at start")
            self._exposed = CollectorRegistry()
            MultiProcessCollector(self._exposed, path=shared_dir)
        r, p = self.registry, prefix
        self.requests = Counter(
            f"{p}_requests_total", "Proxied requests by route, worker and status.",
            ["route", "worker", "status"], registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            f"{p}_request_duration_seconds", "Accept to last byte, by route.",
            ["route"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.first_byte_seconds = Histogram(
            f"{p}_time_to_first_byte_seconds",
            "Accept to first response byte (a stream's first event: time to first token), by "
            "route and worker.",
            ["route", "worker"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.upstream_errors = Counter(
            f"{p}_upstream_errors_total",
            "Failures talking to a worker, by kind (connect, reset, timeout, status, stream).",
            ["worker", "kind"], registry=r,
        )  # fmt: skip
        self.retries = Counter(
            f"{p}_retries_total", "Requests sent again to another worker after a failure.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.rejected = Counter(
            f"{p}_rejected_total", "Requests answered by the router itself with an error.",
            ["code"], registry=r,
        )  # fmt: skip
        self.client_connections = Gauge(
            f"{p}_client_connections", "Client connections open now (refused ones included).",
            registry=r, multiprocess_mode="livesum",
        )
        self.client_timeouts = Counter(
            f"{p}_client_timeouts_total",
            "Client connections cut for slowness, by phase (header, body).",
            ["phase"], registry=r,
        )  # fmt: skip
        self.client_disconnects = Counter(
            f"{p}_client_disconnects_total",
            "Requests whose client went away; the upstream request was cancelled.",
            registry=r,
        )
        self.worker_healthy = Gauge(
            f"{p}_worker_healthy", "1 when the worker takes traffic, else 0.",
            ["worker"], registry=r, multiprocess_mode="livemin",
        )  # fmt: skip
        self.worker_inflight = Gauge(
            f"{p}_worker_inflight", "Requests the router has open on each worker.",
            ["worker"], registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.health_transitions = Counter(
            f"{p}_worker_health_transitions_total",
            "Worker state changes, by new state and cause (probe, passive).",
            ["worker", "state", "cause"], registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            f"{p}_prompt_tokens_total", "Prompt tokens reported in responses' usage.",
            ["worker", "route"], registry=r,
        )  # fmt: skip
        self.cached_prompt_tokens = Counter(
            f"{p}_cached_prompt_tokens_total",
            "Prompt tokens the worker served from its prefix cache (usage.prompt_tokens_details).",
            ["worker", "route"], registry=r,
        )  # fmt: skip
        # Conversation state (the orchestrator mode and the session store).
        self.store_seconds = Histogram(
            f"{p}_store_operation_seconds",
            "Session store calls by operation (read, append, summary, forget, discard, pin) "
            "and store.",
            ["op", "store"], buckets=STORE_BUCKETS, registry=r,
        )  # fmt: skip
        self.history_decode_seconds = Histogram(
            f"{p}_history_decode_seconds",
            "State deserialization: decoding a stored history and rebuilding the prompt.",
            buckets=STORE_BUCKETS, registry=r,
        )  # fmt: skip
        self.history_tokens = Counter(
            f"{p}_history_tokens_total",
            "Tokens of whole conversations (stored history plus the new messages) before pruning.",
            registry=r,
        )
        self.history_sent_tokens = Counter(
            f"{p}_history_sent_tokens_total",
            "Tokens of the rebuilt prompts actually sent; sent / history = compression ratio.",
            registry=r,
        )
        self.pruned_turns = Counter(
            f"{p}_history_pruned_turns_total", "Turns left out of prompts to fit the budget.",
            registry=r,
        )  # fmt: skip
        self.summaries = Counter(
            f"{p}_history_summaries_total", "Background summaries of pruned turns, by outcome.",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.persist_retries = Counter(
            f"{p}_history_persist_retries_total", "History writes tried again after a failure.",
            ["op"], registry=r,
        )  # fmt: skip
        self.persist_failures = Counter(
            f"{p}_history_persist_failures_total",
            "History writes given up, by op: after retrying until the deadline, at once when "
            "the session has no room, or a failed turn's removal (logged as errors).",
            ["op"], registry=r,
        )  # fmt: skip
        self.store_evictions = Counter(
            f"{p}_store_evictions_total",
            "Live histories (kind=history), pins (kind=pin) and tenants' rate counts (kind=rate) "
            "the in-memory store dropped, least recently used first, to stay within "
            "store.max_sessions, store.max_pins and 100,000 tenants.",
            ["kind"], registry=r,
        )  # fmt: skip
        # Semantic recall of pruned turns (router.orchestrator.recall).
        self.recall_embeddings = Counter(
            f"{p}_recall_embeddings_total",
            "Texts sent to the embeddings endpoint, by kind (turn: a pruned turn, in the "
            "background; query: a new message, on the request path).",
            ["kind"], registry=r,
        )  # fmt: skip
        self.recall_embedding_failures = Counter(
            f"{p}_recall_embedding_failures_total",
            "Texts left without an embedding, by kind and reason (timeout, error, full: no "
            "room in the session, queue_full, store: could not be stored, shutdown).",
            ["kind", "reason"], registry=r,
        )  # fmt: skip
        self.recall_embedding_seconds = Histogram(
            f"{p}_recall_embedding_seconds",
            "Calls to the embeddings endpoint that succeeded, by kind (turn, query).",
            ["kind"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.recall_seconds = Histogram(
            f"{p}_recall_seconds",
            "Recall on one turn, the embedding call excluded: reading the session's vectors, "
            "scoring them and choosing the turns.",
            buckets=STORE_BUCKETS, registry=r,
        )  # fmt: skip
        self.recalled_turns = Histogram(
            f"{p}_recall_turns",
            "Turns brought back into the prompt, per request with recall on.",
            buckets=(0, 1, 2, 3, 4, 6, 8, 16, 32, 64), registry=r,
        )  # fmt: skip
        self.recalled_tokens = Histogram(
            f"{p}_recall_tokens",
            "Tokens of the recall message, per request with recall on (0: none).",
            buckets=(0, 64, 128, 256, 512, 1024, 2048, 4096, 8192), registry=r,
        )  # fmt: skip
        self.tokenizer_fallbacks = Counter(
            f"{p}_tokenizer_fallbacks_total",
            "Messages counted by the declared estimate because the tokenizer failed.",
            registry=r,
        )

        # Placement: policies, sticky moves and re-homing (router.placement.place).
        self.routing_policy = Gauge(
            f"{p}_routing_policy", "1 for the placement policy in use (routing.policy).",
            ["policy"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.placements = Counter(
            f"{p}_placements_total",
            "Placement decisions by policy and route (affinity, spill, fallback, unkeyed).",
            ["policy", "route"], registry=r,
        )  # fmt: skip
        self.rehomed = Counter(
            f"{p}_rehomed_total",
            "Requests placed away from the worker holding their cache, by reason (dead, "
            "ejected, draining, overloaded, saturated, retry, slow_start, return_home): each one "
            "recomputes its prompt.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.load_scrape_cpu_seconds = Counter(
            f"{p}_load_scrape_cpu_seconds_total",
            "CPU time spent parsing each worker's metrics for its load (router.fleet.load).",
            ["worker"], registry=r,
        )  # fmt: skip
        self.load_scrape_failures = Counter(
            f"{p}_load_scrape_failures_total",
            "Load scrapes that failed or could not be parsed; the worker's health is unchanged.",
            ["worker"], registry=r,
        )  # fmt: skip
        self.worker_load_fresh = Gauge(
            f"{p}_worker_load_fresh",
            "1 when placement uses the worker's own load figures, 0 when they are stale and "
            "the router's own in-flight count stands in.",
            ["worker"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.worker_load_age = Gauge(
            f"{p}_worker_load_age_seconds",
            "Seconds since the worker's load figures were last scraped successfully (absent "
            "until the first success).",
            ["worker"], registry=r, multiprocess_mode="livemin",
        )  # fmt: skip
        self.worker_running = Gauge(
            f"{p}_worker_running", "Requests running at the worker, as its last scrape said.",
            ["worker"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.worker_waiting = Gauge(
            f"{p}_worker_waiting", "Requests waiting at the worker, as its last scrape said.",
            ["worker"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.worker_kv_usage = Gauge(
            f"{p}_worker_kv_usage",
            "KV-cache usage (0 to 1) at the worker, as its last scrape said.",
            ["worker"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.pin_operations = Counter(
            f"{p}_pin_operations_total",
            "Session pin reads and writes in the store, by action and outcome (ok, error).",
            ["action", "outcome"], registry=r,
        )  # fmt: skip

        # Streams cut mid-answer and continued on another worker.
        self.resumes = Counter(
            f"{p}_stream_resumes_total",
            "Streams cut after their first byte, by outcome (resumed: continued on another "
            "worker; completed: only the end was missing; refused: not resumable; failed: no "
            "worker could continue it) and reason (the cut, or why it was not resumed).",
            ["outcome", "reason"], registry=r,
        )  # fmt: skip
        self.resume_pause_seconds = Histogram(
            f"{p}_stream_resume_pause_seconds",
            "The pause a resumed stream's client saw: from the last event before the cut to "
            "the first event after it.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.body_retries = Counter(
            f"{p}_body_retries_total",
            "Non-streamed answers whose body broke: retried whole (retried), or not, because "
            "part was already sent (past retries.buffer_bytes) or no attempt was left.",
            ["outcome"], registry=r,
        )  # fmt: skip
        # Per-tenant rate limits and admission control (router.limits).
        self.limit_rejections = Counter(
            f"{p}_limit_rejections_total",
            "Requests refused by a tenant's rate limit (rate_requests, rate_tokens: 429) or by "
            "admission control while every worker was saturated (queue_full, queue_timeout: "
            "503), by tenant class (limits.tenants: a named tenant's label, else named or "
            "other; never the raw tenant unless a label says so).",
            ["reason", "tenant_class"], registry=r,
        )  # fmt: skip
        self.rate_limit_check_seconds = Histogram(
            f"{p}_rate_limit_check_seconds",
            "The rate-limit check of one request: one atomic call to the session store.",
            buckets=STORE_BUCKETS, registry=r,
        )  # fmt: skip
        self.rate_limit_store_errors = Counter(
            f"{p}_rate_limit_store_errors_total",
            "Rate-limit calls the session store failed or answered too late, by op (check, "
            "debit); a failed check lets its request through.",
            ["op"], registry=r,
        )  # fmt: skip
        self.rate_limit_tokens = Counter(
            f"{p}_rate_limit_tokens_total",
            "Reply tokens debited from tenants' tokens per minute, by source (usage: the "
            "worker's count; estimate: a stream without usage) and tenant class.",
            ["source", "tenant_class"], registry=r,
        )  # fmt: skip
        self.admission_queue = Gauge(
            f"{p}_admission_queue_length",
            "Requests waiting in this router for a worker with room, by tenant class.",
            ["tenant_class"], registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.admission_wait_seconds = Histogram(
            f"{p}_admission_wait_seconds",
            "How long requests waited in the admission queue, by tenant class and outcome "
            "(admitted, queue_full, queue_timeout, gone: the client left).",
            ["tenant_class", "outcome"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        # Membership: discovery, drains, reloads.
        self.discovery_up = Gauge(
            f"{p}_discovery_up",
            "1 when the discovery source's last lookup succeeded; 0 while it fails and the "
            "last good worker list stays in use.",
            ["source"], registry=r, multiprocess_mode="livemin",
        )  # fmt: skip
        self.discovery_failures = Counter(
            f"{p}_discovery_failures_total", "Discovery lookups that failed, by source.",
            ["source"], registry=r,
        )  # fmt: skip
        self.discovery_last_success = Gauge(
            f"{p}_discovery_last_success_timestamp_seconds",
            "When the discovery source last returned a worker list (Unix time).",
            ["source"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.membership_changes = Counter(
            f"{p}_membership_changes_total",
            "Workers added, removed, drained, undrained or updated (weight, engine, URL).",
            ["change"], registry=r,
        )  # fmt: skip
        self.drains = Counter(
            f"{p}_drains_total",
            "Drains begun, by reason (removed, terminating, admin).",
            ["reason"], registry=r,
        )  # fmt: skip
        self.drains_ended = Counter(
            f"{p}_drains_ended_total",
            "Drains whose sessions moved on, by how (idle, timeout, unhealthy).",
            ["how"], registry=r,
        )  # fmt: skip
        self.reloads = Counter(
            f"{p}_config_reloads_total",
            "Configuration reloads (SIGHUP), by outcome (applied, invalid, unchanged).",
            ["outcome"], registry=r,
        )  # fmt: skip

    def forget_worker(self, name: str) -> None:
        """Drop a removed worker's gauges, so dashboards do not show it forever (its counters
        stay: they are history)."""
        for gauge in (
            self.worker_healthy, self.worker_inflight, self.worker_load_fresh,
            self.worker_load_age, self.worker_running, self.worker_waiting, self.worker_kv_usage,
        ):  # fmt: skip
            if self.shared:  # value files cannot drop a series: it reads 0 instead
                gauge.labels(name).set(0)
                continue
            try:
                gauge.remove(name)
            except KeyError:
                pass

    def set_policy(self, name: str) -> None:
        """`routing_policy` says 1 for `name` only."""
        if self.shared:  # value files cannot drop a series: the others read 0
            for old in self._policies - {name}:
                self.routing_policy.labels(old).set(0)
        else:
            self.routing_policy.clear()
        self._policies.add(name)
        self.routing_policy.labels(name).set(1)

    def store_call(self, op: str, store: str) -> Timed:
        """`with metrics.store_call("read", store.name):` times one successful store call."""
        return Timed(self.store_seconds.labels(op, store))

    def render(self) -> bytes:
        return generate_latest(self._exposed)
