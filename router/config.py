"""Typed, validated settings loaded from `router.yaml`.

Every section is a frozen pydantic model that rejects unknown keys, so a typo in the file is an
error at start naming the key, never a silently ignored setting.
"""

from __future__ import annotations

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


class WorkerSettings(BaseModel):
    """One upstream inference server."""

    model_config = _STRICT
    url: str
    name: str | None = None
    weight: float = Field(default=1.0, gt=0, le=100)

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


class SessionSettings(BaseModel):
    model_config = _STRICT
    sources: tuple[KeySource, ...] = Field(default_factory=_default_sources)
    tenant_header: str | None = None
    default_tenant: str = Field(default="default", min_length=1)


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


PolicyName = Literal["consistent_hash", "bounded_load", "least_inflight", "round_robin", "random"]


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


class RoutingSettings(BaseModel):
    model_config = _STRICT
    policy: PolicyName = "bounded_load"
    vnodes: int = Field(default=160, ge=1, le=10_000)
    load_factor: float = Field(
        default=1.25, ge=1.0, le=10.0, description="bounded_load: cap = ceil(c x mean in-flight)"
    )
    pins: PinSettings = PinSettings()
    prefix: PrefixAffinitySettings = PrefixAffinitySettings()
    slow_start: SlowStartSettings = SlowStartSettings()
    degraded: DegradedSettings = DegradedSettings()


class RetrySettings(BaseModel):
    """Retries happen only before any response byte reached the client."""

    model_config = _STRICT
    attempts: int = Field(default=2, ge=0, le=10)
    on_status: tuple[int, ...] = (502, 503)

    @field_validator("on_status")
    @classmethod
    def _server_errors(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        bad = [s for s in value if not 500 <= s <= 599]
        if bad:
            raise ValueError(f"only 5xx statuses can be retried, got {bad}")
        return value


class TimeoutSettings(BaseModel):
    model_config = _STRICT
    connect: PositiveSeconds = 1.0
    first_byte: PositiveSeconds = 120.0
    idle: PositiveSeconds = 60.0
    total: PositiveSeconds = 900.0
    probe: PositiveSeconds = 2.0


class LimitSettings(BaseModel):
    model_config = _STRICT
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_connections_per_worker: int = Field(default=0, ge=0, description="0 = unlimited")


class ProxySettings(BaseModel):
    model_config = _STRICT
    prefixes: tuple[str, ...] = ("/v1/",)


class MetricsSettings(BaseModel):
    model_config = _STRICT
    prefix: str = Field(default="kvrouter", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class Settings(BaseModel):
    """The whole `router.yaml`."""

    model_config = _STRICT
    listen: ListenAddress = "127.0.0.1:8080"
    workers: tuple[WorkerSettings, ...] = Field(min_length=1)
    session: SessionSettings = SessionSettings()
    health: HealthSettings = HealthSettings()
    routing: RoutingSettings = RoutingSettings()
    retries: RetrySettings = RetrySettings()
    timeouts: TimeoutSettings = TimeoutSettings()
    limits: LimitSettings = LimitSettings()
    proxy: ProxySettings = ProxySettings()
    metrics: MetricsSettings = MetricsSettings()
    shutdown_grace: PositiveSeconds = 30.0

    @model_validator(mode="after")
    def _unique_worker_names(self) -> Settings:
        names = [w.display_name for w in self.workers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"workers: duplicate worker names {dupes}; give each a unique name")
        return self

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


ENV_OVERRIDES = {
    "KVROUTER_LISTEN": "listen",
    "KVROUTER_WORKERS": "workers",
}


def _apply_env(raw: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """`KVROUTER_LISTEN=host:port` and `KVROUTER_WORKERS=url,url` override the file."""
    merged = dict(raw)
    if listen := env.get("KVROUTER_LISTEN"):
        merged["listen"] = listen
    if workers := env.get("KVROUTER_WORKERS"):
        merged["workers"] = [{"url": u.strip()} for u in workers.split(",") if u.strip()]
    return merged


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
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
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid YAML in {path}: {err}") from None
    return parse_settings(raw, str(path), dict(os.environ) if env is None else env)


def dump_settings(settings: Settings) -> str:
    """The effective configuration as YAML, defaults filled in."""
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)
