"""Routing keys under arbitrary requests: whatever headers, cookies, query strings and bodies a
client sends, extraction gives a key the ring and the store can use, or a 400.

Header values are generated the way aiohttp hands them to the router: the bytes its parser
lets through (tab, printable ASCII, and any byte from 0x80 up), stripped of surrounding
blanks and decoded as UTF-8 with `surrogateescape`, so bytes that are not UTF-8 arrive as lone
surrogates. Query strings are raw, with percent-escapes of any bytes, read through the
handlers' own `query_values`. Bodies are JSON documents of any shape, huge strings, or bytes
that are not JSON at all.
"""

from __future__ import annotations

import string
from typing import Any
from urllib.parse import unquote

import orjson
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from router.config import KeySource, PrefixAffinitySettings, SessionSettings, parse_settings
from router.errors import BadRequest, ConfigError
from router.placement.session import (
    MAX_SESSION_ID_LENGTH,
    KeyExtractor,
    RequestView,
    RoutingKey,
    query_values,
)
from router.store.keys import session_base, session_keys

SESSION_HEADER = "x-session-id"
TENANT_HEADER = "x-tenant"
COOKIE = "kvrouter_session"
QUERY = "session_id"

# -- what a client can send ------------------------------------------------------------------

# Bytes aiohttp's parser accepts in a header value (others are a 400 before any handler runs).
HEADER_BYTES = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])


def _as_aiohttp_gives(raw: bytes) -> str:
    return raw.strip(b" \t").decode("utf-8", "surrogateescape")


header_values = st.one_of(
    st.binary(max_size=40).map(lambda b: bytes(HEADER_BYTES[x % len(HEADER_BYTES)] for x in b)),
    st.text(st.characters(min_codepoint=0x20, exclude_categories=("Cc", "Cs")), max_size=40).map(
        str.encode
    ),
    st.sampled_from([b"abc", b"caf\xc3\xa9", b"\xff\xfe", b"\xed\xa0\x80", b"a" * 300]),
).map(_as_aiohttp_gives)

# A raw query string as the handlers read it (decoded by `query_values`): parameters whose
# values are text, percent-escapes of any bytes (UTF-8 or not), and stray separators.
query_pieces = st.one_of(
    st.text(max_size=10),
    st.binary(min_size=1, max_size=6).map(lambda b: "".join(f"%{x:02X}" for x in b)),
    st.sampled_from(["&", "=", "+", ";", "%", "%e", "%C3%A9", "%ff", "s" * 300]),
)
query_parameters = st.tuples(
    st.sampled_from([QUERY, "other", ""]), st.lists(query_pieces, max_size=4).map("".join)
).map("=".join)
raw_queries = st.one_of(
    st.lists(query_parameters, max_size=3).map("&".join),
    st.lists(query_pieces, max_size=6).map("".join),
)

# Text as JSON carries it: anything but lone surrogates.
texts = st.one_of(
    st.text(max_size=30),
    st.integers(0, 600).map(lambda n: "s" * n),  # around MAX_SESSION_ID_LENGTH
    st.sampled_from(["", "a:b", "{x}", "%3A", "\x1f", "\x1e", "\u00e9", "\U0001f600"]),
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=20,
)

roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "", None, 7])
contents = st.one_of(
    texts,
    st.lists(
        st.one_of(
            st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
            st.fixed_dictionaries({"type": st.just("image_url"), "image_url": json_values}),
            json_values,
        ),
        max_size=3,
    ),
    json_values,
)
messages = st.fixed_dictionaries({"role": roles, "content": contents})


def _body_document() -> st.SearchStrategy[Any]:
    """Request bodies shaped like chat and completion requests, with the session id fields
    (`metadata.session_id`, `user`, `a.b.c`) of any type, or of any shape at all."""
    fields = {
        "model": texts,
        "messages": st.one_of(st.lists(messages, max_size=5), json_values),
        "prompt": st.one_of(texts, json_values),
        "metadata": st.one_of(
            st.fixed_dictionaries({}, optional={"session_id": json_values}), json_values
        ),
        "user": json_values,
        "a": st.one_of(
            st.fixed_dictionaries(
                {}, optional={"b": st.fixed_dictionaries({}, optional={"c": json_values})}
            ),
            json_values,
        ),
    }
    return st.one_of(st.fixed_dictionaries({}, optional=fields), json_values)


def _encode(document: Any) -> bytes:
    return orjson.dumps(document)


HUGE_CHAT = orjson.dumps({"messages": [{"role": "user", "content": "long " * 200_000}]})
HUGE_SESSION_ID = orjson.dumps({"metadata": {"session_id": "x" * 1_000_000}, "user": "u"})

bodies = st.one_of(
    _body_document().map(_encode),
    st.binary(max_size=60),  # not JSON, or not UTF-8
    _body_document()
    .map(_encode)
    .flatmap(  # cut short
        lambda b: st.integers(0, max(len(b) - 1, 0)).map(lambda n: b[:n])
    ),
    st.integers(0, 4096).map(lambda n: b'{"metadata": {"session_id": "' + b"x" * n + b'"}}'),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),  # nested deeper than orjson takes
    st.sampled_from([HUGE_CHAT, HUGE_SESSION_ID]),
    st.just(b""),
)


def _cookie_header() -> st.SearchStrategy[str]:
    pair = st.tuples(
        st.sampled_from([COOKIE, "other", "$Version", "expires", "a b", "a>b", "a(b)"]),
        header_values,
        st.booleans(),
    ).map(lambda p: f'{p[0]}="{p[1]}"' if p[2] else f"{p[0]}={p[1]}")
    joined = st.lists(pair, max_size=3).flatmap(
        lambda pairs: st.sampled_from(["; ", ";", ", ", " "]).map(lambda sep: sep.join(pairs))
    )
    return st.one_of(joined, header_values)


@st.composite
def requests(draw: st.DrawFn) -> RequestView:
    headers: CIMultiDict[str] = CIMultiDict()
    for name in draw(st.lists(
        st.sampled_from([SESSION_HEADER, SESSION_HEADER.upper(), TENANT_HEADER, "X-Other"]),
        max_size=4,
    )):  # fmt: skip
        headers.add(name, draw(header_values))
    if draw(st.booleans()):
        headers.add("Cookie", draw(_cookie_header()))
    body = draw(bodies)
    return RequestView(CIMultiDictProxy(headers), query_values(draw(raw_queries)), body)


source_lists = st.lists(
    st.sampled_from([
        KeySource(header=SESSION_HEADER),
        KeySource(cookie=COOKIE),
        KeySource(body="metadata.session_id"),
        KeySource(body="user"),
        KeySource(body="a.b.c"),
        KeySource(query=QUERY),
    ]),
    max_size=4,
    unique=True,
)  # fmt: skip
session_settings = st.builds(
    SessionSettings,
    sources=source_lists.map(tuple),
    tenant_header=st.sampled_from([None, TENANT_HEADER]),
    default_tenant=st.sampled_from(["default", "acme"]),
)
prefix_settings = st.one_of(
    st.none(),
    st.builds(PrefixAffinitySettings, enabled=st.booleans(), user_chars=st.integers(0, 64)),
)


def _valid_tenant_name(name: str) -> bool:
    """Whether router.yaml accepts `name` as a tenant (the default tenant, or an API key's)."""
    try:
        parse_settings({
            "workers": [{"url": "http://127.0.0.1:9000"}],
            "session": {"default_tenant": name},
            "auth": {"keys": [{"tenant": name, "sha256": "0" * 64}]},
        })  # fmt: skip
    except ConfigError:
        return False
    return True


# Tenants as the router can hold them: from the tenant header, or named in router.yaml (an
# API key's tenant when auth is on, else the default tenant). The small alphabets make
# look-alike pairs (`a` + `b\x1fc` against `a\x1fb` + `c`) likely.
near_misses = st.text(alphabet="a:\x1e\x1f", min_size=1, max_size=4)
config_tenants = st.one_of(st.text(min_size=1, max_size=12), near_misses).filter(_valid_tenant_name)


def _header_tenant(value: str) -> bool:
    """Whether extraction takes `value` from the tenant header as the tenant."""
    extractor = KeyExtractor(SessionSettings(tenant_header=TENANT_HEADER))
    try:
        return extractor.tenant({TENANT_HEADER: value}) == value
    except BadRequest:
        return False


def _accepted_tenant(name: str) -> bool:
    """Whether the router can hold `name` as a tenant: named in router.yaml, or sent in the
    tenant header (bytes aiohttp lets through, no blanks around) and taken by extraction."""
    raw = name.encode("utf-8", "surrogateescape")
    deliverable = all(b in HEADER_BYTES for b in raw) and raw == raw.strip(b" \t")
    return _valid_tenant_name(name) or (deliverable and _header_tenant(name))


tenants = st.one_of(header_values.filter(_header_tenant), config_tenants)


def _usable(key: RoutingKey) -> None:
    """What the rest of the router does with a key must work: the ring hashes `hash_key` as
    UTF-8 and the store escapes tenant and session into its key names."""
    if key.hash_key is not None:
        key.hash_key.encode("utf-8")
    if key.session is not None:
        session_keys("kvr", key.tenant, key.session)


def _extract(extractor: KeyExtractor, request: RequestView, parsed: bool) -> RoutingKey:
    """As the proxy calls it (the body parsed on demand), or as the orchestrator does (the
    document already parsed, passed in)."""
    if parsed:
        try:
            document = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            document = None
        return extractor.extract(request, document)
    return extractor.extract(request)


# -- the properties --------------------------------------------------------------------------


@given(session_settings, prefix_settings, requests(), st.booleans(), st.none() | config_tenants)
def test_extraction_gives_a_usable_bounded_key_or_a_bad_request(
    settings: SessionSettings,
    prefix: PrefixAffinitySettings | None,
    request: RequestView,
    parsed: bool,
    authenticated: str | None,
) -> None:
    extractor = KeyExtractor(settings, prefix)
    try:
        key = _extract(extractor, request, parsed) if authenticated is None else (
            extractor.extract(request, tenant=authenticated)
        )  # fmt: skip
    except BadRequest as err:
        assert err.status == 400 and err.message
        return
    assert isinstance(key.tenant, str) and key.tenant
    if authenticated is not None:
        assert key.tenant == authenticated
    if key.session is not None:
        assert isinstance(key.session, str)
        assert 0 < len(key.session) <= MAX_SESSION_ID_LENGTH
        assert key.source in {f"{s.kind}:{s.name}" for s in settings.sources}
        assert key.prefix is None
    elif key.prefix is not None:
        assert key.source == "prefix"
        assert len(key.prefix) == 16 and all(c in string.hexdigits for c in key.prefix)
    else:
        assert key.hash_key is None
    _usable(key)


@given(_cookie_header(), st.sampled_from([COOKIE, "other"]))
def test_any_cookie_header_gives_a_key_or_a_bad_request(cookie: str, name: str) -> None:
    """The cookie parser alone, with names it calls illegal and values in and out of quotes."""
    extractor = KeyExtractor(SessionSettings(sources=(KeySource(cookie=name),)))
    try:
        key = extractor.extract(RequestView(CIMultiDictProxy(CIMultiDict(Cookie=cookie)), {}))
    except BadRequest:
        return
    assert key.session is None or 0 < len(key.session) <= MAX_SESSION_ID_LENGTH
    _usable(key)


@given(session_settings, prefix_settings, requests(), st.booleans())
def test_equal_requests_give_equal_keys(
    settings: SessionSettings,
    prefix: PrefixAffinitySettings | None,
    request: RequestView,
    parsed: bool,
) -> None:
    def outcome(extractor: KeyExtractor, view: RequestView) -> RoutingKey | str:
        try:
            return _extract(extractor, view, parsed)
        except BadRequest as err:
            return err.message

    copy = RequestView(
        CIMultiDictProxy(CIMultiDict(request.headers)),
        MultiDictProxy(MultiDict(request.query)),
        bytes(request.body),
    )
    first = KeyExtractor(settings, prefix)
    again = KeyExtractor(settings.model_copy(deep=True), prefix)
    results = [outcome(first, request), outcome(first, copy), outcome(again, copy)]
    assert results[0] == results[1] == results[2]
    if isinstance(results[0], RoutingKey):
        assert len({r.hash_key for r in results if isinstance(r, RoutingKey)}) == 1


def _producible(separator: str, rest: str) -> bool:
    """Whether some key of one tenant ends in `separator` + `rest`: a session id extraction
    accepts after \\x1f, a prefix digest after \\x1e."""
    if separator == "\x1e":
        return len(rest) == 16 and all(c in "0123456789abcdef" for c in rest)
    extractor = KeyExtractor(SessionSettings(sources=(KeySource(body="sid"),)))
    try:
        return extractor.extract(RequestView({}, {}), {"sid": rest}).session == rest
    except BadRequest:
        return False


# Ring key ids: a session id extraction accepts, or a prompt-prefix digest.
ring_ids = st.one_of(
    st.one_of(texts, header_values, near_misses)
    .filter(lambda v: _producible("\x1f", v))
    .map(lambda v: (v, False)),
    st.binary(min_size=8, max_size=8).map(lambda b: (b.hex(), True)),
)


@given(tenants, ring_ids)
def test_no_other_tenant_can_have_a_tenants_ring_key(tenant: str, id_: tuple[str, bool]) -> None:
    """Read a ring key back at every separator: no other tenant the router accepts, with any
    session id or prompt prefix, gives the same key."""
    value, prefixed = id_
    key = RoutingKey(tenant, source="prefix", prefix=value) if prefixed else (
        RoutingKey(tenant, value, "header:x-session-id")
    )  # fmt: skip
    ring_key = key.hash_key
    assert ring_key is not None
    for at, char in enumerate(ring_key):
        other = ring_key[:at]
        if char in "\x1e\x1f" and other != tenant and other:
            forged = _accepted_tenant(other) and _producible(char, ring_key[at + 1 :])
            assert not forged, f"tenant {other!r} has the ring key of {tenant!r}: {ring_key!r}"


store_parts = st.one_of(
    st.text(max_size=20),
    st.sampled_from([":", "{", "}", "%", "%3A", "{a}:{b}", "a:b", "}:{", "\x00", "é"]),
)


def _hash_tag(key: str) -> str:
    """What Redis Cluster hashes: the text between the first `{` and the next `}`."""
    start = key.index("{")
    return key[start + 1 : key.index("}", start + 1)]


@given(st.tuples(store_parts, store_parts), st.tuples(store_parts, store_parts))
def test_store_keys_are_injective_and_escape_every_separator(
    first: tuple[str, str], second: tuple[str, str]
) -> None:
    bases = {}
    for tenant, session in (first, second):
        base = session_base("kvr", tenant, session)
        assert base.startswith("kvr:{") and base.endswith("}")
        inner = base[len("kvr:{") : -1]
        assert not set(inner) & {"{", "}"}
        escaped_tenant, colon, escaped_session = inner.partition(":")
        assert colon and ":" not in escaped_session
        assert (unquote(escaped_tenant), unquote(escaped_session)) == (tenant, session)
        for part, name in session_keys("kvr", tenant, session).items():
            assert name == f"{base}:{part}"
            assert _hash_tag(name) == inner  # one Cluster slot per session
        bases[(tenant, session)] = base
    assert (bases[first] == bases[second]) == (first == second)
