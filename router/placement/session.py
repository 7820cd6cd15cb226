"""Turn a request into a routing key: the tenant and, when the client gave one, its session id.

Sources are tried in the configured order; the JSON body is parsed only when a body field is a
source and no earlier source answered, so most requests are routed without touching the body.

Session ids and tenants must be UTF-8 text. aiohttp decodes header bytes as UTF-8 with
`surrogateescape`, so a byte that is not UTF-8 (obs-text such as 0xff) arrives as a lone
surrogate that cannot be hashed or stored; such a value is a 400 naming where it came from.
The query string is decoded the same way here (`query_values`), not by yarl, which would turn
every invalid byte into U+FFFD and so make distinct ids equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

import orjson
from multidict import MultiDict

from router.config import PrefixAffinitySettings, SessionSettings
from router.errors import BadRequest
from router.placement.prefix import prefix_key

MAX_SESSION_ID_LENGTH = 256


@dataclass(frozen=True, slots=True)
class RoutingKey:
    """`session` is None for requests that named no session; then `prefix` may hold a digest
    of the start of the prompt (prefix affinity). The tenant is always set."""

    tenant: str
    session: str | None = None
    source: str | None = None
    prefix: str | None = None

    @property
    def hash_key(self) -> str | None:
        """The ring key: tenant-scoped so equal ids of two tenants never share state."""
        if self.session is not None:
            return f"{self.tenant}\x1f{self.session}"
        if self.prefix is not None:
            return f"{self.tenant}\x1e{self.prefix}"
        return None


class RequestView(NamedTuple):
    """The parts of an HTTP request key extraction reads; plain values, no aiohttp objects."""

    headers: Mapping[str, str]
    query: Mapping[str, str]
    body: bytes = b""


def query_values(raw_query: str) -> MultiDict[str]:
    """The query string's parameters, percent-decoded as UTF-8 with `surrogateescape` (as
    headers are), so a value that is not UTF-8 is caught by the session id check."""
    if not raw_query:
        return MultiDict()
    return MultiDict(parse_qsl(raw_query, keep_blank_values=True, errors="surrogateescape"))


def _utf8(text: str, what: str) -> str:
    """`text`, when it is valid UTF-8 (no lone surrogate); else a 400 naming `what`."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(f"{what} is not valid UTF-8") from None
    return text


def parse_json_body(body: bytes) -> Any:
    """Parse a request body as JSON, or raise a 400 that says what is wrong."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise BadRequest(f"request body is not valid JSON: {err}") from None


def _body_field(document: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(document, dict):
            return None
        document = document.get(part)
    return document


def _cookie(headers: Mapping[str, str], name: str) -> str | None:
    raw = headers.get("cookie")
    if not raw:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel else None


class KeyExtractor:
    """Reads the session id from the first configured source that has one."""

    def __init__(
        self, settings: SessionSettings, prefix: PrefixAffinitySettings | None = None
    ) -> None:
        self._sources = tuple((s.kind, s.name) for s in settings.sources)
        self._paths = {s.name: tuple(s.name.split(".")) for s in settings.sources if s.body}
        self._tenant_header = settings.tenant_header
        self._default_tenant = settings.default_tenant
        self._prefix_chars = prefix.user_chars if prefix is not None and prefix.enabled else None
        self.needs_body = bool(self._paths) or self._prefix_chars is not None

    def tenant(self, headers: Mapping[str, str]) -> str:
        if self._tenant_header:
            value = headers.get(self._tenant_header)
            if value:
                return _utf8(value, f"tenant header {self._tenant_header!r}")
        return self._default_tenant

    def extract(
        self, request: RequestView, document: Any = None, tenant: str | None = None
    ) -> RoutingKey:
        """`document` is the parsed body when the caller already has it; `tenant` is the
        authenticated one, which wins over the tenant header."""
        tenant = tenant or self.tenant(request.headers)
        parsed = document is not None
        for kind, name in self._sources:
            if kind == "header":
                value: Any = request.headers.get(name)
            elif kind == "query":
                value = request.query.get(name)
            elif kind == "cookie":
                value = _cookie(request.headers, name)
            else:
                if not parsed and request.body:
                    document = parse_json_body(request.body)
                    parsed = True
                value = _body_field(document, self._paths[name])
            if value is not None and value != "":
                return RoutingKey(tenant, _session_id(value, kind, name), f"{kind}:{name}")
        if self._prefix_chars is not None:
            return self._prefix_key(tenant, request.body, document, parsed)
        return RoutingKey(tenant)

    def _prefix_key(self, tenant: str, body: bytes, document: Any, parsed: bool) -> RoutingKey:
        """Sessionless requests keyed on their prompt's start; a body that is not JSON is
        left for the worker to reject and routed without a key."""
        if not parsed and body:
            try:
                document = orjson.loads(body)
            except orjson.JSONDecodeError:
                return RoutingKey(tenant)
        digest = prefix_key(document, self._prefix_chars or 0)
        if digest is None:
            return RoutingKey(tenant)
        return RoutingKey(tenant, source="prefix", prefix=digest)


def _session_id(value: Any, kind: str, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRequest(f"session id in {kind} {name!r} must be a string")
    text = _utf8(str(value), f"session id in {kind} {name!r}")
    if len(text) > MAX_SESSION_ID_LENGTH:
        raise BadRequest(
            f"session id in {kind} {name!r} is longer than {MAX_SESSION_ID_LENGTH} characters"
        )
    return text
