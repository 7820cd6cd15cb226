"""Typed, validated settings loaded from `router.yaml`.

Every section is a frozen pydantic model that rejects unknown keys, so a typo in the file is an
error at start naming the key, never a silently ignored setting.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from router.errors import ConfigError

_STRICT = ConfigDict(extra="forbid", frozen=True)

PositiveSeconds = Annotated[float, Field(gt=0)]


def _check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT with a port from 1 to 65535, got {value!r}")
    return value


ListenAddress = Annotated[str, AfterValidator(_check_listen)]

EngineName = Literal["vllm", "sglang", "tgi", "llamacpp", "custom"]
LoadField = Literal["running", "waiting", "kv_usage"]
MetricName = Annotated[str, Field(pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")]


class WorkerSettings(BaseModel):
    """One upstream inference server."""

    model_config = _STRICT
    url: str
    name: str | None = None
    weight: float = Field(default=1.0, gt=0, le=100)
    engine: EngineName | None = Field(default=None, description="unset: the top-level engine")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s) URL such as http://10.0.0.5:8000, got {value!r}")
        return value.rstrip("/")

    @property
    def display_name(self) -> str:
        return self.name or urlsplit(self.url).netloc


class KeySource(BaseModel):
    """Where to look for the session id; exactly one of the fields is set."""

    model_config = _STRICT
    header: str | None = None
    cookie: str | None = None
    body: str | None = Field(default=None, description="dotted JSON path, e.g. metadata.session_id")
    query: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> KeySource:
        given = [k for k in ("header", "cookie", "body", "query") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("each source names exactly one of header, cookie, body, query")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("header", "cookie", "body", "query") if getattr(self, k))

    @property
    def name(self) -> str:
        return str(getattr(self, self.kind))


def _default_sources() -> tuple[KeySource, ...]:
    return (
        KeySource(header="x-session-id"),
        KeySource(cookie="kvrouter_session"),
        KeySource(body="metadata.session_id"),
        KeySource(query="session_id"),
    )


def _check_tenant(value: str) -> str:
    if any(c < " " or c == "\x7f" for c in value):
        raise ValueError(
            f"a tenant name cannot hold control characters (routing keys use them to separate "
            f"the tenant from the session id), got {value!r}"
        )
    return value


TenantName = Annotated[str, Field(min_length=1), AfterValidator(_check_tenant)]


class SessionSettings(BaseModel):
    model_config = _STRICT
    sources: tuple[KeySource, ...] = Field(default_factory=_default_sources)
    tenant_header: str | None = None
    default_tenant: TenantName = "default"


class PassiveHealthSettings(BaseModel):
    """Outlier ejection from live traffic."""

    model_config = _STRICT
    consecutive_failures: int = Field(default=3, ge=1)
    base_ejection: PositiveSeconds = 2.0
    max_ejection: PositiveSeconds = 60.0


class HealthSettings(BaseModel):
    model_config = _STRICT
    path: str = "/health"
    interval: PositiveSeconds = 1.0
    jitter: float = Field(default=0.1, ge=0, lt=1)
    timeout: PositiveSeconds = 0.5
    fall: int = Field(default=2, ge=1)
    rise: int = Field(default=2, ge=1)
    passive: PassiveHealthSettings = PassiveHealthSettings()

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"must start with '/', got {value!r}")
        return value


PolicyName = Literal[
    "cost_aware",
    "consistent_hash",
    "bounded_load",
    "least_loaded",
    "least_inflight",
    "round_robin",
    "random",
]


class PinSettings(BaseModel):
    """Sticky moves: a session served away from its ring home stays where its cache now is."""

    model_config = _STRICT
    enabled: bool = True
    ttl: PositiveSeconds = Field(default=900.0, description="idle expiry, refreshed on every turn")
    return_home: Literal["on_expiry", "when_healthy"] = "on_expiry"
    store_timeout: PositiveSeconds = Field(
        default=0.05, description="a pin read slower than this is skipped: the ring decides"
    )


class PrefixAffinitySettings(BaseModel):
    """Requests without a session id are keyed on tenant, system prompt and first user message."""

    model_config = _STRICT
    enabled: bool = True
    user_chars: int = Field(default=512, ge=0, le=1_000_000)


class SlowStartSettings(BaseModel):
    """A worker that rejoins takes a share of its keys and load growing over `window` seconds."""

    model_config = _STRICT
    window: float = Field(default=30.0, ge=0, le=3600, description="0 turns slow start off")
    min_share: float = Field(default=0.1, gt=0, le=1)


class DegradedSettings(BaseModel):
    """What to do when less than `min_healthy` of the total weight is healthy."""

    model_config = _STRICT
    min_healthy: float = Field(default=0.5, ge=0, le=1)
    action: Literal["spread", "refuse"] = "spread"


class SaturationSettings(BaseModel):
    """When a worker counts as saturated: requests wait in its queue, or its KV cache is nearly
    full, for at least `hold` seconds; once it leaves saturation it is not saturated again
    within `hold`. Without fresh worker metrics: above both bounded_load's cap and `floor`."""

    model_config = _STRICT
    kv_usage: float = Field(default=0.95, gt=0, le=1.0)
    hold: float = Field(default=0.5, ge=0, le=60)
    floor: int = Field(
        default=32, ge=0, le=100_000,
        description="never spill by in-flight count below this many requests per worker",
    )  # fmt: skip


class CostSettings(BaseModel):
    """What a move costs: the session's prompt, estimated from the request body's size, is
    recomputed elsewhere at the target's prefill rate. Unset: the engine's default."""

    model_config = _STRICT
    bytes_per_token: float | None = Field(default=None, gt=0, le=1000)
    prefill_tokens_per_second: float | None = Field(default=None, gt=0)


class RoutingSettings(BaseModel):
    model_config = _STRICT
    policy: PolicyName = "cost_aware"
    vnodes: int = Field(default=160, ge=1, le=10_000)
    load_factor: float = Field(
        default=1.25, ge=1.0, le=10.0, description="bounded_load: cap = ceil(c x mean in-flight)"
    )
    saturation: SaturationSettings = SaturationSettings()
    cost: CostSettings = CostSettings()
    pins: PinSettings = PinSettings()
    prefix: PrefixAffinitySettings = PrefixAffinitySettings()
    slow_start: SlowStartSettings = SlowStartSettings()
    degraded: DegradedSettings = DegradedSettings()


class RetrySettings(BaseModel):
    """Retries before any response byte reached the client (`attempts`, `on_status`; a
    buffered body that breaks counts as one), and resumes of streams cut after it did
    (`mid_stream`: the answer continues on another worker, see docs/resume.md)."""

    model_config = _STRICT
    attempts: int = Field(default=2, ge=0, le=10)
    on_status: tuple[int, ...] = (502, 503)
    mid_stream: bool = Field(default=True, description="resume cut streams on another worker")
    mid_stream_max: int = Field(default=2, ge=1, le=10, description="resumes per request")
    mid_stream_bytes: int = Field(
        default=1024 * 1024, ge=4096, le=64 * 1024 * 1024,
        description="a stream is resumable while it has relayed at most this many bytes",
    )  # fmt: skip
    buffer_bytes: int = Field(
        default=1024 * 1024, ge=0, le=64 * 1024 * 1024,
        description="a non-streamed answer up to this size is read whole before it is sent, "
        "so a body that breaks is retried on another worker",
    )  # fmt: skip

    @field_validator("on_status")
    @classmethod
    def _server_errors(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        bad = [i for i, s in enumerate(value) if not 500 <= s <= 599]
        if bad:
            got = ", ".join(f"item {i}: {value[i]}" for i in bad)
            raise ValueError(f"only 5xx statuses can be retried, got {got}")
        return value


class TimeoutSettings(BaseModel):
    model_config = _STRICT
    connect: PositiveSeconds = 1.0
    first_byte: PositiveSeconds = 120.0
    idle: PositiveSeconds = 60.0
    total: PositiveSeconds = 900.0
    probe: PositiveSeconds = 2.0


class LoadSettings(BaseModel):
    """The load monitor: each worker's own queue and KV-cache figures, scraped from its
    metrics endpoint. A failing scrape never marks a worker unhealthy."""

    model_config = _STRICT
    enabled: bool = True
    path: str = "/metrics"
    interval: PositiveSeconds = 1.0
    jitter: float = Field(default=0.1, ge=0, lt=1)
    timeout: PositiveSeconds = 0.5
    stale_after: PositiveSeconds = Field(
        default=3.0, description="older figures are ignored: the router's own count decides"
    )

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with /")
        return value


DiscoverySource = Literal["static", "dns", "kubernetes"]


def parse_nameserver(text: str) -> tuple[str, int]:
    """`HOST` or `HOST:PORT` as (address, port); HOST is an IPv4 or IPv6 address, an IPv6 one
    in brackets when a port follows. Raises ValueError naming the entry."""
    host, port = text.strip(), "53"
    if host.startswith("["):
        host, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            host = ""
        port = rest[1:] if rest else port
    elif host.count(":") == 1:
        host, _, port = host.partition(":")
    try:
        address, number = ipaddress.ip_address(host), int(port)
        if not 0 < number < 65536:
            raise ValueError(port)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an IP address with an optional port "
            "(10.0.0.10, 10.0.0.10:5353, [::1]:5353)"
        ) from None
    return str(address), number


class DnsDiscoverySettings(BaseModel):
    """Workers from DNS: the A and AAAA records of a name (a Kubernetes headless Service), each
    address at `port`; or its SRV records, each target at the record's own port."""

    model_config = _STRICT
    name: str = Field(min_length=1, description="e.g. vllm.default.svc.cluster.local")
    record: Literal["A", "SRV"] = Field(default="A", description="A: A and AAAA; SRV: SRV")
    port: int | None = Field(default=None, ge=1, le=65535, description="required with A")
    scheme: Literal["http", "https"] = "http"
    engine: EngineName | None = Field(default=None, description="unset: the top-level engine")
    interval: PositiveSeconds = 5.0
    timeout: PositiveSeconds = 2.0
    nameservers: tuple[str, ...] = Field(
        default=(), description="HOST or HOST:PORT; empty: the system's resolv.conf"
    )

    @field_validator("nameservers")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            parse_nameserver(entry)
        return value

    @model_validator(mode="after")
    def _port_for_a(self) -> DnsDiscoverySettings:
        if self.record == "A" and self.port is None:
            raise ValueError("record A needs a port (SRV records carry their own)")
        return self


class KubernetesDiscoverySettings(BaseModel):
    """Workers from the EndpointSlices that match a label selector in one namespace."""

    model_config = _STRICT
    namespace: str = "default"
    selector: str = Field(
        min_length=1, description="label selector, e.g. kubernetes.io/service-name=vllm"
    )
    port: int | None = Field(default=None, ge=1, le=65535, description="unset: the slice's port")
    port_name: str | None = Field(default=None, description="pick the slice port by name")
    scheme: Literal["http", "https"] = "http"
    engine: EngineName | None = Field(default=None, description="unset: the top-level engine")
    weight_annotation: str | None = Field(
        default=None, description="pod annotation holding a weight; reading it needs pods get"
    )
    kubeconfig: str | None = Field(
        default=None, description="unset: in-cluster credentials, else ~/.kube/config"
    )
    timeout: PositiveSeconds = Field(default=10.0, description="each list call")
    watch_seconds: int = Field(
        default=300, ge=1, le=3600, description="server-side timeout of each watch"
    )


class DiscoverySettings(BaseModel):
    """Where the worker list comes from: `static` is `workers:`; `dns` and `kubernetes` follow
    the fleet as it changes. A source that fails keeps the last good list."""

    model_config = _STRICT
    source: DiscoverySource = "static"
    dns: DnsDiscoverySettings | None = None
    kubernetes: KubernetesDiscoverySettings | None = None

    @model_validator(mode="after")
    def _source_configured(self) -> DiscoverySettings:
        if self.source != "static" and getattr(self, self.source) is None:
            raise ValueError(f"source {self.source} needs a `{self.source}:` section")
        return self


class DrainSettings(BaseModel):
    """A worker leaving (removed by discovery or reload, or drained by the admin API) takes no
    new sessions; sessions it served within `idle` seconds keep going to it until they have
    been idle that long or `timeout` has passed since the drain began. Then they move."""

    model_config = _STRICT
    timeout: PositiveSeconds = Field(default=300.0, le=86_400)
    idle: PositiveSeconds = Field(default=120.0, le=86_400)
    check_interval: PositiveSeconds = Field(default=1.0, le=60)


class TenantLimit(BaseModel):
    """One tenant's rate limits (0: none) and its share of the admission queue."""

    model_config = _STRICT
    requests_per_minute: int = Field(default=0, ge=0, le=10_000_000, description="0 = no limit")
    tokens_per_minute: int = Field(
        default=0, ge=0, le=10_000_000_000,
        description="prompt + completion tokens, debited after each reply; 0 = no limit",
    )  # fmt: skip
    share: float = Field(
        default=1.0, gt=0, le=1000, description="weight in the admission queue's round robin"
    )
    label: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$",
        description="the tenant_class metrics label of this tenant (default: named)",
    )  # fmt: skip

    @property
    def limited(self) -> bool:
        return bool(self.requests_per_minute or self.tokens_per_minute)


OTHER_TENANTS = "other"
"""The tenant_class label of every tenant not named under `limits.tenants.named`."""
NAMED_TENANTS = "named"
"""The tenant_class label of a named tenant without a `label` of its own."""


class TenantLimitSettings(BaseModel):
    """Per-tenant rate limits: `named` tenants, and `default` for every other tenant. Off
    while no limit is set. Counted in the session store (shared by replicas with Redis)."""

    model_config = _STRICT
    default: TenantLimit = TenantLimit()
    named: dict[TenantName, TenantLimit] = Field(default_factory=dict)
    store_timeout: PositiveSeconds = Field(
        default=0.05, le=10,
        description="a limit check the store has not answered within this lets the request "
        "through (fail open), counted",
    )  # fmt: skip

    @property
    def enabled(self) -> bool:
        """Whether any tenant has a rate limit (else no request asks the store)."""
        return self.default.limited or any(t.limited for t in self.named.values())

    def of(self, tenant: str) -> TenantLimit:
        return self.named.get(tenant, self.default)

    def label_of(self, tenant: str) -> str:
        """The tenant's class in metric labels: never the raw tenant unless configured."""
        found = self.named.get(tenant)
        if found is None:
            return OTHER_TENANTS
        return found.label or NAMED_TENANTS


class AdmissionSettings(BaseModel):
    """When every worker a request could go to is saturated, the request waits in the router,
    tenants served in turn (weighted by their `share`), instead of queueing at a worker."""

    model_config = _STRICT
    enabled: bool = True
    max_queue: int = Field(default=1024, ge=1, le=1_000_000, description="requests waiting")
    timeout: PositiveSeconds = Field(
        default=60.0, le=3600, description="seconds a request may wait; then a 503"
    )
    headroom: int = Field(
        default=0, ge=0, le=10_000,
        description="places per worker a tenant with a backlog in the queue leaves free, for "
        "tenants with nothing else waiting to start at once",
    )  # fmt: skip


class LimitSettings(BaseModel):
    model_config = _STRICT
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_connections_per_worker: int = Field(default=0, ge=0, description="0 = unlimited")
    header_timeout: PositiveSeconds = Field(
        default=10.0, le=3600, description="a request head must be whole within this"
    )
    body_timeout: PositiveSeconds = Field(
        default=60.0, le=3600, description="a request body must be whole within this"
    )
    keepalive_timeout: PositiveSeconds = Field(
        default=75.0, le=86_400, description="an idle keep-alive connection is closed after this"
    )
    max_client_connections: int = Field(
        default=8192, ge=0, description="open client connections; past it a 503; 0 = unlimited"
    )
    tenants: TenantLimitSettings = TenantLimitSettings()
    admission: AdmissionSettings = AdmissionSettings()

    def keeps_state(self) -> bool:
        """Whether these limits keep per-tenant counts (the rate limits): counts that must be
        shared by every process serving the same clients, so in a shared store. The admission
        queue keeps none: it holds only the requests waiting in its own process."""
        return self.tenants.enabled


class ProxySettings(BaseModel):
    model_config = _STRICT
    prefixes: tuple[str, ...] = ("/v1/",)
    trusted_proxies: tuple[str, ...] = Field(
        default=(),
        description="CIDRs of proxies in front of the router whose X-Forwarded-*, Forwarded "
        "and X-Real-IP headers are kept; from any other peer they are replaced",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            try:
                ipaddress.ip_network(entry.strip())
            except ValueError as err:
                raise ValueError(
                    f"{entry!r} is not an address or network (10.0.0.0/8, 192.0.2.7, fd00::/8): "
                    f"{err}"
                ) from None
        return tuple(entry.strip() for entry in value)


class MetricsSettings(BaseModel):
    model_config = _STRICT
    prefix: str = Field(default="kvrouter", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class AccessLogSettings(BaseModel):
    """One record per request at its end (logger `kvrouter.access`). Off by default: it costs
    CPU on every request. The session id is never logged, only a keyed hash of it."""

    model_config = _STRICT
    enabled: bool = False
    hash_key: str | None = Field(
        default=None, min_length=16,
        description="secret key of the session hash (or KVROUTER_ACCESS_LOG_HASH_KEY); unset: "
        "an unkeyed hash, which anyone can recompute from a guessed session id",
    )  # fmt: skip


class LoggingSettings(BaseModel):
    """How log records are written (to stderr): `text` lines for people, or `json`, one JSON
    object per line for every record, for a log pipeline."""

    model_config = _STRICT
    format: Literal["text", "json"] = "text"
    access: AccessLogSettings = AccessLogSettings()


class AdminSettings(BaseModel):
    """The operator API under /admin/ is off unless a token is set. It is served on a listener
    of its own, `listen` (loopback by default), never on the public one."""

    model_config = _STRICT
    token: str | None = Field(default=None, min_length=16)
    listen: ListenAddress = Field(
        default="127.0.0.1:8081",
        description="HOST:PORT of the admin API, opened at start only when a token is set",
    )

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class StoreSettings(BaseModel):
    """Where session state lives: in this process (no `url`) or in Redis shared by replicas."""

    model_config = _STRICT
    url: str | None = Field(default=None, description="redis://host:port/db; unset = in memory")
    key_prefix: str = Field(default="kvr", pattern=r"^[A-Za-z0-9_.-]+$")
    history_ttl: PositiveSeconds = 24 * 3600.0
    max_messages: int = Field(default=4096, ge=2, description="per session; oldest dropped")
    timeout: PositiveSeconds = 0.5
    pool_size: int = Field(default=64, ge=1)
    write_retry_deadline: PositiveSeconds = 30.0
    max_session_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1, description="per session: history entries and summary"
    )
    max_sessions: int = Field(
        default=100_000, ge=1, description="in-memory store: histories kept, LRU evicted"
    )
    max_pins: int = Field(
        default=1_000_000, ge=1, description="in-memory store: pins kept, LRU evicted"
    )

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got {value!r}")
        return value


class TokenizerSettings(BaseModel):
    """How history is counted: a real tokenizer; an estimate only as a declared fallback."""

    model_config = _STRICT
    kind: Literal["bpe", "huggingface", "worker"] = "bpe"
    encoding: Literal["cl100k_base", "o200k_base"] = "cl100k_base"
    path: str | None = Field(default=None, description="tokenizer.json for kind: huggingface")
    timeout: PositiveSeconds = 2.0
    per_message_tokens: int = Field(default=4, ge=0, description="chat template overhead")
    fallback: Literal["none", "estimate"] = "none"
    media_part_tokens: int = Field(
        default=576, ge=0, description="fixed cost of each non-text content part (an image)"
    )
    media_bytes_per_token: int = Field(
        default=4, ge=1, description="a non-text part also costs its JSON (a data URL) at this "
        "many bytes a token",
    )  # fmt: skip

    @model_validator(mode="after")
    def _path_for_huggingface(self) -> TokenizerSettings:
        if self.kind == "huggingface" and not self.path:
            raise ValueError("kind: huggingface needs path: the tokenizer.json to load")
        return self


class SummarySettings(BaseModel):
    """Fold pruned turns into a running summary, in the background, with this model."""

    model_config = _STRICT
    enabled: bool = False
    model: str | None = Field(default=None, description="unset: the model of the request")
    max_tokens: int = Field(default=256, ge=1)
    timeout: PositiveSeconds = 60.0
    instruction: str = (
        "Summarise the conversation so far in a few sentences, keeping names, facts, decisions "
        "and open questions. Reply with the summary only."
    )


RecallPosition = Literal["before_last", "after_system"]


class RecallSettings(BaseModel):
    """Semantic recall: pruned turns are embedded in the background, and each turn brings
    back the few most similar ones (see docs/recall.md)."""

    model_config = _STRICT
    enabled: bool = False
    url: str | None = Field(
        default=None, description="the OpenAI-compatible embeddings endpoint, e.g. "
        "http://embed:8000/v1/embeddings (vLLM, TEI)",
    )  # fmt: skip
    model: str | None = Field(default=None, description="the embedding model to ask for")
    max_connections: int = Field(default=8, ge=1, description="to the embeddings endpoint")
    timeout: PositiveSeconds = Field(default=10.0, description="one background batch call")
    query_timeout: PositiveSeconds = Field(
        default=0.15, description="embedding the new message on the request path; past it, "
        "no recall for that turn",
    )  # fmt: skip
    batch_size: int = Field(default=32, ge=1, le=2048, description="turns per embedding call")
    batch_wait: float = Field(
        default=0.02, ge=0, le=5, description="seconds a batch waits for more turns"
    )
    attempts: int = Field(default=3, ge=1, le=10, description="tries of one batch call")
    queue_size: int = Field(
        default=10_000, ge=1, description="turns waiting to be embedded; past it, counted lost"
    )
    max_input_chars: int = Field(
        default=4000, ge=16, description="a turn's text is cut to this many characters"
    )
    top_k: int = Field(default=3, ge=1, le=64)
    min_similarity: float = Field(
        default=0.5, ge=-1.0, le=1.0, description="cosine similarity a turn needs to be "
        "recalled; depends on the embedding model",
    )  # fmt: skip
    max_tokens: int = Field(
        default=512, ge=1, description="recall token budget, taken from the prompt budget"
    )
    position: RecallPosition = "before_last"
    max_vectors: int = Field(default=1000, ge=1, description="per session; oldest dropped")
    cache_bytes: int = Field(
        default=256 * 1024 * 1024, ge=0, description="vectors kept in this process between "
        "turns of a session (0: read them whole every turn)",
    )  # fmt: skip

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s) URL of the embeddings endpoint, got {value!r}")
        return value

    @model_validator(mode="after")
    def _endpoint_when_enabled(self) -> RecallSettings:
        if self.enabled and (not self.url or not self.model):
            missing = " and ".join(k for k in ("url", "model") if not getattr(self, k))
            raise ValueError(f"enabled: recall needs {missing} of the embeddings endpoint")
        return self


HistoryAccess = Literal["off", "open", "keys"]


class HistorySettings(BaseModel):
    """The orchestrator mode: the router keeps the conversation and rebuilds the prompt."""

    model_config = _STRICT
    enabled: bool = Field(
        default=True, description="false: no orchestrator mode and no sessions API"
    )
    access: HistoryAccess = Field(
        default="keys",
        description="who may use stored history (the sessions API, orchestrator requests): "
        "off = nobody; open = anyone, tenant from the tenant header (trusted networks only); "
        "keys = requests with an API key from auth.keys, tenant from the key",
    )
    header: str = "x-kvrouter-history"
    server_routes: tuple[str, ...] = Field(
        default=(), description="paths where history is kept by the router unless the header "
        "says client, e.g. /v1/chat/completions",
    )  # fmt: skip
    max_prompt_tokens: int = Field(default=8192, ge=16)
    default_max_tokens: int = Field(default=512, ge=1, description="reserved when unset")
    tokenizer: TokenizerSettings = TokenizerSettings()
    summary: SummarySettings = SummarySettings()
    recall: RecallSettings = RecallSettings()


class ApiKeySettings(BaseModel):
    """One API key, kept as the SHA-256 hex digest of the key, and the tenant it belongs to."""

    model_config = _STRICT
    tenant: TenantName
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class AuthSettings(BaseModel):
    """With keys set, every /v1 request needs `Authorization: Bearer <key>`; the key names
    the tenant, and the tenant header is ignored."""

    model_config = _STRICT
    keys: tuple[ApiKeySettings, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.keys)


class Settings(BaseModel):
    """The whole `router.yaml`."""

    model_config = _STRICT
    listen: ListenAddress = "127.0.0.1:8080"
    workers: tuple[WorkerSettings, ...] = ()
    discovery: DiscoverySettings = DiscoverySettings()
    drain: DrainSettings = DrainSettings()
    session: SessionSettings = SessionSettings()
    health: HealthSettings = HealthSettings()
    routing: RoutingSettings = RoutingSettings()
    retries: RetrySettings = RetrySettings()
    timeouts: TimeoutSettings = TimeoutSettings()
    limits: LimitSettings = LimitSettings()
    proxy: ProxySettings = ProxySettings()
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()
    admin: AdminSettings = AdminSettings()
    shutdown_grace: PositiveSeconds = 30.0
    load: LoadSettings = LoadSettings()
    store: StoreSettings = StoreSettings()
    history: HistorySettings = HistorySettings()
    auth: AuthSettings = AuthSettings()
    engine: EngineName = Field(
        default="vllm", description="what the workers run, for reading their load from /metrics"
    )
    custom_metrics: dict[LoadField, MetricName] = Field(
        default_factory=dict, description="engine custom: the gauge family for each load field"
    )

    @model_validator(mode="after")
    def _workers_for_static(self) -> Settings:
        source = self.discovery.source
        if source == "static" and not self.workers:
            raise ValueError(
                "workers: list at least one worker (or set discovery.source to dns or "
                "kubernetes)"
            )
        if source != "static" and self.workers:
            raise ValueError(
                f"workers: is the static list; with discovery.source {source} the workers "
                "come from discovery, so leave it out"
            )
        return self

    @model_validator(mode="after")
    def _unique_worker_names(self) -> Settings:
        names = [w.display_name for w in self.workers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"workers: duplicate worker names {dupes}; give each a unique name")
        return self

    @model_validator(mode="after")
    def _custom_engine_has_metrics(self) -> Settings:
        if self.custom_metrics.get("running") or self.custom_metrics.get("waiting"):
            return self
        users = [
            f"workers.{i} ({w.display_name})"
            for i, w in enumerate(self.workers)
            if w.engine == "custom"
        ]
        if self.engine == "custom" and any(w.engine is None for w in self.workers):
            users.insert(0, "engine")
        source = self.discovery.source
        found = getattr(self.discovery, source) if source != "static" else None
        if found is not None and (found.engine or self.engine) == "custom":
            users.append(f"discovery.{source}.engine")
        if users:
            raise ValueError(
                f"{', '.join(users)}: engine custom needs custom_metrics naming the family "
                "for running or waiting (or both)"
            )
        return self

    @model_validator(mode="after")
    def _admin_listens_apart(self) -> Settings:
        if self.admin.token and self.admin.listen == self.listen:
            raise ValueError(
                f"admin.listen: {self.admin.listen} is also `listen`; the admin API needs an "
                "address of its own (it is never served on the public listener)"
            )
        return self

    def engine_of(self, worker: WorkerSettings) -> EngineName:
        """The engine `worker` runs: its own `engine`, else the top-level one."""
        return worker.engine or self.engine

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


def _with(section: Any, key: str, values: dict[str, Any]) -> Any:
    """`section` (a mapping from the file) with `values` merged into its `key` mapping; a
    section or key that is not a mapping is left as it is, for validation to name."""
    if section is None:
        section = {}
    if not isinstance(section, dict):
        return section
    inner = section.get(key)
    if inner is not None and not isinstance(inner, dict):
        return section
    return {**section, key: {**(inner or {}), **values}}


def _apply_env(raw: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """`KVROUTER_LISTEN=host:port`, `KVROUTER_WORKERS=url,url`, `KVROUTER_ADMIN_TOKEN` and
    `KVROUTER_ACCESS_LOG_HASH_KEY` override the file."""
    merged = dict(raw)
    if listen := env.get("KVROUTER_LISTEN"):
        merged["listen"] = listen
    if workers := env.get("KVROUTER_WORKERS"):
        merged["workers"] = [{"url": u.strip()} for u in workers.split(",") if u.strip()]
    if hash_key := env.get("KVROUTER_ACCESS_LOG_HASH_KEY"):
        merged["logging"] = _with(merged.get("logging"), "access", {"hash_key": hash_key})
    admin = merged.get("admin")
    if (token := env.get("KVROUTER_ADMIN_TOKEN")) and (admin is None or isinstance(admin, dict)):
        merged["admin"] = {**(admin or {}), "token": token}  # else validation names `admin`
    return merged


def _key(part: str | int) -> str:
    """One step of a key path as the message shows it: quoted when it could be misread (empty,
    holding a dot, a colon or a line break, or blank at either end)."""
    text = str(part)
    if isinstance(part, str) and (
        not text or not text.isprintable() or "." in text or ":" in text or text != text.strip()
    ):
        return repr(text)
    return text


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in err.errors():
        where = ".".join(_key(p) for p in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def parse_settings(
    raw: Any, source: str = "<config>", env: dict[str, str] | None = None
) -> Settings:
    """Validate an already-parsed YAML document; raise ConfigError naming every bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid configuration in {source}: the top level must be a mapping")
    try:
        return Settings.model_validate(_apply_env(raw, env if env is not None else {}))
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_settings(path: str | Path, env: dict[str, str] | None = None) -> Settings:
    """Read and validate `router.yaml`, applying KVROUTER_* environment overrides."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read configuration {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"configuration {path} is not UTF-8 text: {err}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid YAML in {path}: {err}") from None
    except RecursionError:  # the parser recurses once per level of nesting
        raise ConfigError(f"invalid YAML in {path}: nested too deeply to parse") from None
    return parse_settings(raw, str(path), dict(os.environ) if env is None else env)


def dump_settings(settings: Settings) -> str:
    """The effective configuration as YAML, defaults filled in."""
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)


def per_process_state(settings: Settings) -> list[str]:
    """The enabled features whose state stays in one process without a shared store (no
    `store.url`): several router processes would each keep their own and disagree."""
    if settings.store.url is not None:
        return []
    features = []
    if settings.routing.pins.enabled:
        features.append("routing.pins.enabled")
    if settings.history.enabled:
        features.append("history.enabled")
    if settings.limits.keeps_state():
        features.append("limits.tenants")
    return features
