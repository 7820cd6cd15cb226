"""Per-tenant rate limits (`limits.tenants`): each request is checked before it is forwarded,
and the tokens of its reply debited after it.

A check is one atomic call to the session store (one Lua script round trip with Redis, so
every replica sharing it counts together; this process's memory without one), bounded by
`limits.tenants.store_timeout`. A store that fails or is slow lets the request through (fail
open), counted in `kvrouter_rate_limit_store_errors_total`. A request over a limit is a 429 in
OpenAI's shape with Retry-After and the x-ratelimit-* headers; an allowed one gets the same
x-ratelimit-* headers on its answer.

Tokens are the reply's `usage` (prompt + completion) when the worker reports it: always for a
whole answer, and for a stream when the client asked for it (`stream_options.include_usage`).
A stream without usage is estimated: the prompt from the request body's size (at
`routing.cost.bytes_per_token`, the figure placement uses), the completion from the relayed
text at 4 characters a token. They are debited once the answer has ended (or the client has
gone), in the background; a tenant can therefore overshoot its tokens per minute by the
replies it had in flight when it ran out.
"""

from __future__ import annotations

import asyncio
import logging
import time

from router.config import TenantLimitSettings
from router.errors import RateLimited
from router.limits.buckets import Levels, Rule, headers, retry_after
from router.metrics import Metrics
from router.proxy.usage import ReplyMeter
from router.store import SessionStore
from router.store.writes import BackgroundWrites

log = logging.getLogger("kvrouter.limits")

FAILURE_LOG_INTERVAL = 60.0
_WHAT = {"requests": ("requests", "RPM"), "tokens": ("tokens", "TPM")}


class Account:
    """One allowed request's standing with its tenant's limits: the headers its answer
    carries, and the meter its reply's tokens are read from (None: tokens are not limited)."""

    __slots__ = ("headers", "meter", "rule", "tenant")

    def __init__(self, tenant: str, rule: Rule, headers: dict[str, str]) -> None:
        self.tenant = tenant
        self.rule = rule
        self.headers = headers
        self.meter = ReplyMeter() if rule.tokens else None


class TenantLimiter:
    """Checks requests against their tenant's limits and debits their replies' tokens."""

    def __init__(
        self,
        settings: TenantLimitSettings,
        store: SessionStore,
        metrics: Metrics,
        bytes_per_token: float,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._debits = BackgroundWrites(store.in_process, self._debit_outcome, "token debit")
        self._failures_logged = -FAILURE_LOG_INTERVAL
        self.reconfigure(settings, bytes_per_token)

    def reconfigure(self, settings: TenantLimitSettings, bytes_per_token: float) -> None:
        self._settings = settings
        self._bytes_per_token = bytes_per_token
        self.enabled = settings.enabled

    async def check(self, tenant: str) -> Account | None:
        """Take one request from the tenant's allowance: its `Account`, or None when the
        tenant has no limit; raises `RateLimited` (429) when a limit refuses it."""
        limit = self._settings.of(tenant)
        if not limit.limited:
            return None
        rule = Rule(limit.requests_per_minute, limit.tokens_per_minute)
        levels = await self._take(tenant, rule, 1, 0)
        if levels is None:  # the store failed: let it through, without figures
            return Account(tenant, rule, {})
        found = headers(levels, rule)
        if levels.refused is not None:
            raise self._refusal(tenant, rule, levels, found)
        return Account(tenant, rule, found)

    async def settle(self, account: Account) -> None:
        """The request is over: debit its reply's tokens (in the background with a shared
        store)."""
        meter = account.meter
        if meter is None:
            return
        tokens, reported = meter.tokens(self._bytes_per_token)
        label = self._settings.label_of(account.tenant)
        source = "usage" if reported else "estimate"
        self._metrics.rate_limit_tokens.labels(source, label).inc(tokens)
        if tokens > 0:
            take = self._store.take_rate(account.tenant, account.rule, 0, tokens)
            await self._debits.write("debit", take)

    async def close(self) -> None:
        await self._debits.close()

    async def _take(self, tenant: str, rule: Rule, requests: int, tokens: int) -> Levels | None:
        started = time.perf_counter()
        try:
            if self._store.in_process:
                levels = await self._store.take_rate(tenant, rule, requests, tokens)
            else:
                async with asyncio.timeout(self._settings.store_timeout):
                    levels = await self._store.take_rate(tenant, rule, requests, tokens)
        except Exception as err:  # any store failure: fail open, counted
            self._failed("check", err)
            return None
        self._metrics.rate_limit_check_seconds.observe(time.perf_counter() - started)
        return levels

    def _refusal(
        self, tenant: str, rule: Rule, levels: Levels, found: dict[str, str]
    ) -> RateLimited:
        refused = levels.refused or "requests"
        self._metrics.limit_rejections.labels(
            f"rate_{refused}", self._settings.label_of(tenant)
        ).inc()
        noun, short = _WHAT[refused]
        limit = rule.requests if refused == "requests" else rule.tokens
        wait = retry_after(levels, rule)
        message = (
            f"Rate limit reached for {noun} per minute ({short}) of tenant {tenant!r}: limit "
            f"{limit} (limits.tenants). Please try again in {wait:.3g}s."
        )
        return RateLimited(message, refused, found)

    def _debit_outcome(self, action: str, outcome: str) -> None:
        if outcome == "error":
            self._failed(action, None)

    def _failed(self, op: str, err: BaseException | None) -> None:
        self._metrics.rate_limit_store_errors.labels(op).inc()
        now = time.monotonic()
        if now - self._failures_logged >= FAILURE_LOG_INTERVAL:
            self._failures_logged = now
            log.warning(
                "rate limits: the session store (%s) failed a %s%s; requests are let through "
                "while it fails (counted in kvrouter_rate_limit_store_errors_total)",
                self._store.name, op, f": {err!r}" if err is not None else "",
            )  # fmt: skip
