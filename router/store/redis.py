"""Session state in Redis, shared by router replicas.

Appends run as one Lua script (check the operation id, push, trim to the cap, refresh the TTL),
so concurrent writers from several routers are serialised by Redis and a retried append is a
no-op. Every call has a socket timeout; after a connection failure the store fails fast for a
short, growing back-off and then tries again, so a dead Redis costs requests nothing but the
error, and the store reconnects by itself when Redis returns.

A turn's user-message write and its discard carry a deadline: three quarters of `store.timeout`
after they are sent, on Redis's clock. Their script compares it with `TIME` and does nothing
when late, so a call that timed out while Redis stalled is not applied when Redis resumes: the
caller's error stands, and nothing it did not acknowledge appears (or goes) later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from router.config import StoreSettings
from router.limits.buckets import Levels, Rule
from router.store.base import SessionTooLarge, StoredHistory, StoreUnavailable
from router.store.coalesce import CoalescedReads
from router.store.keys import session_keys, tenant_key, trim_slack
from router.store.vectors import HEADER_BYTES, StoredVectors, VectorBatch

log = logging.getLogger("kvrouter.store")

T = TypeVar("T")

# Refuses (KVR_LATE <Redis time>) when Redis's clock is past the deadline (ms, 0: none).
_LATE = """
local function late(deadline)
  if deadline == 0 then return nil end
  local now = redis.call('TIME')
  local ms = now[1] * 1000 + math.floor(now[2] / 1000)
  if ms > deadline then return redis.error_reply('KVR_LATE ' .. ms) end
end
"""

# KEYS: history blob, applied op ids, meta hash, entries (each "<bytes> <op id>"), turn
# embeddings (only their TTL is refreshed, so they expire with the history). ARGV: op id,
# ttl ms, cap, slack, byte limit, deadline, entries. The history is one string of
# newline-terminated entries, so a read is one GET. The meta hash keeps `bytes`, what counts
# against the byte limit (entries with their newline, and the summary); a session stored before
# it existed is measured once. An append that would not fit is refused whole:
# KVR_FULL <held> <adding> <freed by the trim>. One already applied is a no-op, even when late.
_APPEND_BODY = _LATE + """
local n = redis.call('LLEN', KEYS[4])
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then
  local refused = late(tonumber(ARGV[6]))
  if refused then return refused end
  local adding = 0
  for i = 7, #ARGV do adding = adding + #ARGV[i] + 1 end
  local held = tonumber(redis.call('HGET', KEYS[3], 'bytes'))
  if not held then
    held = redis.call('STRLEN', KEYS[1]) + redis.call('HSTRLEN', KEYS[3], 'summary')
  end
  local cap, total = tonumber(ARGV[3]), n + #ARGV - 6
  local drop, freed = 0, 0
  if total > cap + tonumber(ARGV[4]) then
    drop = total - cap
    local old = math.min(drop, n)
    if old > 0 then
      for _, item in ipairs(redis.call('LRANGE', KEYS[4], 0, old - 1)) do
        freed = freed + tonumber(string.match(item, '^%d+'))
      end
    end
    for i = 7, 6 + drop - old do freed = freed + #ARGV[i] + 1 end
  end
  if held + adding - freed > tonumber(ARGV[5]) then
    return redis.error_reply('KVR_FULL ' .. held .. ' ' .. adding .. ' ' .. freed)
  end
  redis.call('SADD', KEYS[2], ARGV[1])
  for i = 7, #ARGV do
    redis.call('APPEND', KEYS[1], ARGV[i] .. '\\n')
    redis.call('RPUSH', KEYS[4], (#ARGV[i] + 1) .. ' ' .. ARGV[1])
  end
  if drop > 0 then
    redis.call('LTRIM', KEYS[4], drop, -1)
    redis.call('SET', KEYS[1], redis.call('GETRANGE', KEYS[1], freed, -1))
    redis.call('HINCRBY', KEYS[3], 'trimmed', drop)
  end
  redis.call('HSET', KEYS[3], 'bytes', held + adding - freed)
  n = total - drop
end
redis.call('HSETNX', KEYS[3], 'trimmed', 0)
local ttl = tonumber(ARGV[2])
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl) end
"""
_APPEND = _APPEND_BODY + "return n + tonumber(redis.call('HGET', KEYS[3], 'trimmed'))"
_READ_AND_APPEND = (
    "local before = redis.call('GET', KEYS[1])\n"
    "local meta = redis.call('HMGET', KEYS[3], 'trimmed', 'summary', 'through')\n"
    + _APPEND_BODY
    + "return {before, meta[1], meta[2], meta[3]}"
)

_READ = """
local meta = redis.call('HMGET', KEYS[2], 'trimmed', 'summary', 'through')
return {redis.call('GET', KEYS[1]), meta[1], meta[2], meta[3]}
"""

# KEYS: as for an append. ARGV: op id, ttl ms, deadline. The op's entries are contiguous (one
# script appended them); the summary keeps covering the same messages. Returns how many went.
_DISCARD = _LATE + """
local refused = late(tonumber(ARGV[3]))
if refused then return refused end
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return 0 end
local first, count, offset, size = 0, 0, 0, 0
for i, item in ipairs(redis.call('LRANGE', KEYS[4], 0, -1)) do
  local len, op = string.match(item, '^(%d+) ?(.*)$')
  if op == ARGV[1] then
    if count == 0 then first = i end
    count, size = count + 1, size + tonumber(len)
    redis.call('LSET', KEYS[4], i - 1, '')
  elseif count == 0 then
    offset = offset + tonumber(len)
  end
end
if count == 0 then return 0 end
redis.call('LREM', KEYS[4], count, '')
local blob = redis.call('GET', KEYS[1]) or ''
redis.call('SET', KEYS[1], string.sub(blob, 1, offset) .. string.sub(blob, offset + size + 1))
if redis.call('HEXISTS', KEYS[3], 'bytes') == 1 then
  redis.call('HINCRBY', KEYS[3], 'bytes', -size)
end
local meta = redis.call('HMGET', KEYS[3], 'trimmed', 'through')
local at, through = tonumber(meta[1] or '0') + first - 1, tonumber(meta[2] or '-1')
if through >= at then
  redis.call('HSET', KEYS[3], 'through', through - math.min(count, through - at + 1))
end
local ttl = tonumber(ARGV[2])
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl) end
return count
"""

# KEYS: meta hash, history blob. ARGV: summary, through, byte limit.
_SET_SUMMARY = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local through = tonumber(redis.call('HGET', KEYS[1], 'through') or '-1')
if tonumber(ARGV[2]) <= through then return 0 end
local old = redis.call('HSTRLEN', KEYS[1], 'summary')
local held = tonumber(redis.call('HGET', KEYS[1], 'bytes'))
if not held then held = redis.call('STRLEN', KEYS[2]) + old end
if held + #ARGV[1] - old > tonumber(ARGV[3]) then
  return redis.error_reply('KVR_FULL ' .. held .. ' ' .. #ARGV[1] .. ' ' .. old)
end
redis.call('HSET', KEYS[1], 'summary', ARGV[1], 'through', ARGV[2], 'bytes', held + #ARGV[1] - old)
return 1
"""

# KEYS: embeddings blob, meta hash, history blob. ARGV: cap, slack, byte limit, tag, dim (6
# digits), through, then (entry index, record) pairs (none: only the watermark moves). The
# rule of `router.store.vectors.merge`; a session that is gone gets nothing (-1): an embedding
# that lands after a DELETE never brings the session back. The blob takes the meta hash's
# remaining TTL.
_ADD_VECTORS = """
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
local dim, tag = ARGV[5], ARGV[4]
local head = redis.call('GETRANGE', KEYS[1], 0, 63)
if #ARGV == 6 and #head == 64 then dim, tag = string.sub(head, 7, 12), string.sub(head, 14, 21) end
local size = 16 + 4 * tonumber(dim)
local blob = redis.call('STRLEN', KEYS[1])
local fresh = #head < 64 or string.sub(head, 7, 12) ~= dim or string.sub(head, 14, 21) ~= tag
local generation, through, count, freed = 0, -1, 0, 0
if fresh then
  local now = redis.call('TIME')
  generation = (tonumber(now[1]) % 10000) * 1000000 + tonumber(now[2])
  freed = blob
else
  generation = tonumber(string.sub(head, 23, 32))
  through = tonumber(string.sub(head, 34, 53))
  count = (blob - 64) / size
end
local take = {}
for i = 7, #ARGV, 2 do
  if tonumber(ARGV[i]) > through then take[#take + 1] = ARGV[i + 1] end
end
local cap, drop = tonumber(ARGV[1]), 0
if count + #take > cap + tonumber(ARGV[2]) then drop = count + #take - cap end
local old = math.min(drop, count)
local skip = drop - old
local adding = (#take - skip) * size
if fresh then adding = adding + 64 end
freed = freed + old * size
local held = tonumber(redis.call('HGET', KEYS[2], 'bytes'))
if not held then
  held = redis.call('STRLEN', KEYS[3]) + redis.call('HSTRLEN', KEYS[2], 'summary') + blob
end
if held + adding - freed > tonumber(ARGV[3]) then
  return redis.error_reply('KVR_FULL ' .. held .. ' ' .. adding .. ' ' .. freed)
end
if drop > 0 then generation = (generation + 1) % 10000000000 end
through = math.max(through, tonumber(ARGV[6]))
local header = string.format('kvrv1 %s %s %010d %020d', dim, tag, generation, through)
header = header .. string.rep(' ', 63 - #header) .. '\\n'
if fresh then
  redis.call('SET', KEYS[1], header)
elseif old > 0 then
  redis.call('SET', KEYS[1], header .. redis.call('GETRANGE', KEYS[1], 64 + old * size, -1))
else
  redis.call('SETRANGE', KEYS[1], 0, header)
end
for j = skip + 1, #take do redis.call('APPEND', KEYS[1], take[j]) end
redis.call('HSET', KEYS[2], 'bytes', held + adding - freed)
local ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return #take - skip
"""

# KEYS: embeddings blob. ARGV: generation (10 digits), bytes held. Its header, and the blob
# from byte ARGV[2] on when the caller's copy is still its prefix (same generation, not
# longer); else false for the tail.
_READ_VECTOR_TAIL = """
local head = redis.call('GETRANGE', KEYS[1], 0, 63)
if #head < 64 or string.sub(head, 23, 32) ~= ARGV[1] then return {head, false} end
local held = tonumber(ARGV[2])
if redis.call('STRLEN', KEYS[1]) < held then return {head, false} end
return {head, redis.call('GETRANGE', KEYS[1], held, -1)}
"""

# KEYS: the tenant's rate hash (fields r, t: the bucket levels; at: when written, ms). ARGV:
# requests and tokens per minute (0: no limit), requests to take, tokens to debit. The steps of
# `router.limits.buckets.take`, on Redis's clock; the hash lives until both buckets are full
# again. Returns {refused or '', r, t}, levels as strings (a number loses its fraction).
_RATE = """
local clock = redis.call('TIME')
local now = clock[1] * 1000 + clock[2] / 1000
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local want, debit = tonumber(ARGV[3]), tonumber(ARGV[4])
local stored = redis.call('HMGET', KEYS[1], 'r', 't', 'at')
local at = tonumber(stored[3]) or now
local function level(value, limit)
  if limit <= 0 then return 0 end
  if not value then return limit end
  return math.min(limit, tonumber(value) + math.max(0, now - at) * limit / 60000)
end
local r, t = level(stored[1], rpm), level(stored[2], tpm)
local refused = ''
if want > 0 then
  if rpm > 0 and r < want then refused = 'requests'
  elseif tpm > 0 and t <= 0 then refused = 'tokens'
  else r = r - want end
end
if tpm > 0 then t = t - debit end
local full = 0
local fields = {'at', tostring(now)}
if rpm > 0 then
  full = math.max(full, (rpm - r) * 60000 / rpm)
  fields[#fields + 1] = 'r'
  fields[#fields + 1] = tostring(r)
end
if tpm > 0 then
  full = math.max(full, (tpm - t) * 60000 / tpm)
  fields[#fields + 1] = 't'
  fields[#fields + 1] = tostring(t)
end
redis.call('DEL', KEYS[1])
if full > 0 then
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('PEXPIRE', KEYS[1], math.ceil(full))
end
return {refused, tostring(r), tostring(t)}
"""


class _Backoff:
    """Fail fast for a growing while after a failure; the first call after it tries again."""

    def __init__(self, base: float = 0.1, cap: float = 2.0) -> None:
        self._base, self._cap = base, cap
        self._delay = base
        self.open_until = 0.0

    def is_open(self) -> bool:
        return time.monotonic() < self.open_until

    def failed(self) -> None:
        self.open_until = time.monotonic() + self._delay
        self._delay = min(self._cap, self._delay * 2)

    def succeeded(self) -> None:
        self._delay, self.open_until = self._base, 0.0


class _Late(Exception):
    """A script refused its write: Redis ran it after its deadline (`redis_ms`, Redis's clock)."""

    def __init__(self, redis_ms: int) -> None:
        super().__init__("it answered too late for store.timeout; the write was not applied")
        self.redis_ms = redis_ms


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _describe(url: str) -> str:
    parts = urlsplit(url)
    return f"redis at {parts.hostname or parts.path}{f':{parts.port}' if parts.port else ''}"


def _stored(reply: list[bytes | None]) -> StoredHistory:
    blob, trimmed, summary, through = reply
    return StoredHistory(
        tuple(blob.split(b"\n")[:-1]) if blob else (),
        int(trimmed or 0),
        summary,
        int(through) if through is not None else -1,
    )


class RedisStore:
    """Session state in Redis (`store.url`), keys `<prefix>:{<tenant>:<session>}:<part>`."""

    name = "redis"
    in_process = False

    def __init__(self, settings: StoreSettings) -> None:
        assert settings.url is not None
        self._settings = settings
        self.where = _describe(settings.url)
        # The retry and the protocol are the pool's, not the client's: a client given a pool
        # ignores its own `retry`. One retry on a fresh connection covers a pooled connection
        # that died with the server. RESP2 keeps the pool's check, on every checkout, that the
        # server has not closed the connection (redis-py skips it under RESP3's maintenance
        # notifications), so a restart does not hand every waiting call a dead connection.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.url,
            max_connections=settings.pool_size,
            timeout=settings.timeout,
            socket_timeout=settings.timeout,
            socket_connect_timeout=settings.timeout,
            health_check_interval=10,
            retry=Retry(NoBackoff(), 1),
            protocol=2,
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        self._append = self._redis.register_script(_APPEND)
        self._set_summary = self._redis.register_script(_SET_SUMMARY)
        self._read = self._redis.register_script(_READ)
        self._read_and_append = self._redis.register_script(_READ_AND_APPEND)
        self._discard = self._redis.register_script(_DISCARD)
        self._add_vectors = self._redis.register_script(_ADD_VECTORS)
        self._read_vector_tail = self._redis.register_script(_READ_VECTOR_TAIL)
        self._rate = self._redis.register_script(_RATE)
        # pins and served records: one MGET per turn of the loop (router.store.coalesce)
        self._markers = CoalescedReads(lambda keys: self._call(lambda: self._redis.mget(keys)))
        self._ttl_ms = int(settings.history_ttl * 1000)
        self._budget_ms = int(settings.timeout * 750)
        self._clock_offset_ms = 0  # Redis's clock minus ours, once a refusal has shown it
        self._backoff = _Backoff()

    def _keys(self, tenant: str, session: str) -> dict[str, str]:
        return session_keys(self._settings.key_prefix, tenant, session)

    async def _call(self, call: Callable[[], Awaitable[T]], session: str = "") -> T:
        if self._backoff.is_open():
            raise StoreUnavailable(f"session store ({self.where}) is unavailable; retrying soon")
        try:
            result = await call()
        except ResponseError as err:
            self._refused(err, session)
            raise self._failed(err) from None
        except (RedisError, OSError, TimeoutError) as err:
            raise self._failed(err) from None
        self._backoff.succeeded()
        return result

    async def _before_deadline(
        self, call: Callable[[int], Awaitable[T]], session: str, *, first: bool = True
    ) -> T:
        """Run a write that takes effect before its caller gives up or never: `call` is given
        the deadline its script checks (Redis's clock). A refusal that came back before the
        deadline could have passed shows Redis's clock runs ahead of ours: allow for it and
        try once more."""
        sent = _wall_ms()
        deadline = sent + self._clock_offset_ms + self._budget_ms
        try:
            return await self._call(lambda: call(deadline), session)
        except _Late as late:
            now = _wall_ms()
            if not first or now - sent >= self._budget_ms:
                raise self._failed(late) from None
            self._allow_for_clock(late.redis_ms - now)
        return await self._before_deadline(call, session, first=False)

    def _allow_for_clock(self, offset_ms: int) -> None:
        changed = abs(offset_ms - self._clock_offset_ms) > self._budget_ms // 2
        self._clock_offset_ms = offset_ms
        if changed:
            log.warning(
                "session store (%s): Redis's clock runs %.3fs ahead of this router's; write "
                "deadlines now allow for it (keep the clocks in sync with NTP)",
                self.where, offset_ms / 1000,
            )  # fmt: skip

    def _refused(self, err: ResponseError, session: str) -> None:
        """Raise what a script's refusal means; return if `err` is no refusal."""
        words = str(err).split()
        if words[:1] == ["KVR_LATE"]:
            raise _Late(int(words[1])) from None
        if words[:1] == ["KVR_FULL"]:
            self._backoff.succeeded()
            held, adding, freed = (int(w) for w in words[1:4])
            limit = self._settings.max_session_bytes
            raise SessionTooLarge(session, held, adding, limit, freed) from None

    def _failed(self, err: BaseException) -> StoreUnavailable:
        """Open the back-off; the error to raise, naming the store."""
        if not self._backoff.is_open():
            log.warning("session store (%s) failed: %s", self.where, err or type(err).__name__)
        self._backoff.failed()
        return StoreUnavailable(
            f"session store ({self.where}) is unavailable: {err or type(err).__name__}"
        )

    async def get_pin(self, tenant: str, session: str) -> str | None:
        return await self._get_marker(self._keys(tenant, session)["pin"])

    async def set_pin(self, tenant: str, session: str, worker: str, ttl: float) -> None:
        await self._set_marker(self._keys(tenant, session)["pin"], worker, ttl)

    async def get_served(self, tenant: str, session: str) -> str | None:
        return await self._get_marker(self._keys(tenant, session)["srv"])

    async def set_served(self, tenant: str, session: str, worker: str, ttl: float) -> None:
        await self._set_marker(self._keys(tenant, session)["srv"], worker, ttl)

    async def _get_marker(self, key: str) -> str | None:
        try:
            value = await self._markers.get(key)
        except StoreUnavailable:
            return None
        return value.decode() if value is not None else None

    async def _set_marker(self, key: str, worker: str, ttl: float) -> None:
        try:
            await self._call(lambda: self._redis.set(key, worker, px=max(1, int(ttl * 1000))))
        except StoreUnavailable:
            return

    async def delete_pin(self, tenant: str, session: str) -> None:
        key = self._keys(tenant, session)["pin"]
        try:
            await self._call(lambda: self._redis.delete(key))
        except StoreUnavailable:
            return

    async def read_history(self, tenant: str, session: str) -> StoredHistory:
        keys = self._keys(tenant, session)
        names = [keys["h"], keys["meta"]]
        return _stored(await self._call(lambda: self._read(keys=names, args=[])))

    async def append_history(
        self, tenant: str, session: str, op_id: str, entries: Sequence[bytes]
    ) -> int:
        """No deadline: a reply write that lands late is still right (its retries are no-ops)."""
        names = self._names(tenant, session)
        args = self._append_args(op_id, 0, entries)
        return int(await self._call(lambda: self._append(keys=names, args=args), session))

    async def read_and_append_history(
        self, tenant: str, session: str, op_id: str, entries: Sequence[bytes]
    ) -> StoredHistory:
        names = self._names(tenant, session)

        def call(deadline: int) -> Awaitable[list[bytes | None]]:
            args = self._append_args(op_id, deadline, entries)
            return self._read_and_append(keys=names, args=args)

        return _stored(await self._before_deadline(call, session))

    async def discard_turn(self, tenant: str, session: str, op_id: str) -> bool:
        names = self._names(tenant, session)

        def call(deadline: int) -> Awaitable[int]:
            return self._discard(keys=names, args=[op_id, self._ttl_ms, deadline])

        return bool(await self._before_deadline(call, session))

    def _names(self, tenant: str, session: str) -> list[str]:
        keys = self._keys(tenant, session)
        return [keys["h"], keys["ids"], keys["meta"], keys["lens"], keys["vec"]]

    def _append_args(
        self, op_id: str, deadline: int, entries: Sequence[bytes]
    ) -> list[str | int | bytes]:
        cap, limit = self._settings.max_messages, self._settings.max_session_bytes
        return [op_id, self._ttl_ms, cap, trim_slack(cap), limit, deadline, *entries]

    async def set_summary(self, tenant: str, session: str, summary: bytes, through: int) -> bool:
        keys = self._keys(tenant, session)
        names = [keys["meta"], keys["h"]]
        args = [summary, through, self._settings.max_session_bytes]
        return bool(await self._call(lambda: self._set_summary(keys=names, args=args), session))

    async def read_vectors(
        self, tenant: str, session: str, held: tuple[int, int] | None = None
    ) -> StoredVectors:
        """A plain GET of the whole blob (no script: a script's reply would copy it twice in
        Redis); with `held`, a script that returns only the tail, and the GET only when the
        caller's copy is stale."""
        key = self._keys(tenant, session)["vec"]
        if held is not None:
            args = [b"%010d" % held[0], held[1]]
            head, tail = await self._call(lambda: self._read_vector_tail(keys=[key], args=args))
            if tail is not None:
                return StoredVectors(head, tail, held[1])
            if not head:
                return StoredVectors()
        blob = await self._call(lambda: self._redis.get(key))
        return StoredVectors(blob[:HEADER_BYTES], blob, 0) if blob else StoredVectors()

    async def add_vectors(
        self, tenant: str, session: str, batch: VectorBatch, max_vectors: int
    ) -> int | None:
        keys = self._keys(tenant, session)
        names = [keys["vec"], keys["meta"], keys["h"]]
        args: list[str | int | bytes] = [
            max_vectors, trim_slack(max_vectors), self._settings.max_session_bytes,
            batch.tag, b"%06d" % batch.dim, batch.through,
        ]  # fmt: skip
        for index, record in batch.records:
            args += [index, record]
        added = int(await self._call(lambda: self._add_vectors(keys=names, args=args), session))
        return None if added < 0 else added

    async def take_rate(self, tenant: str, rule: Rule, requests: int, tokens: int) -> Levels:
        key = [tenant_key(self._settings.key_prefix, tenant, "rate")]
        args = [rule.requests, rule.tokens, requests, tokens]
        refused, left, tokens_left = await self._call(lambda: self._rate(keys=key, args=args))
        return Levels(float(left), float(tokens_left), refused.decode() or None)

    async def forget(self, tenant: str, session: str) -> bool:
        keys = list(self._keys(tenant, session).values())
        return bool(await self._call(lambda: self._redis.delete(*keys)))

    async def close(self) -> None:
        await self._markers.close()
        await self._redis.aclose()
