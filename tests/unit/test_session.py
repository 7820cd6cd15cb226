import pytest

from router.config import KeySource, SessionSettings
from router.errors import BadRequest
from router.placement.session import KeyExtractor, RequestView, RoutingKey, query_values


def extractor(*sources: KeySource, tenant_header: str | None = None) -> KeyExtractor:
    return KeyExtractor(SessionSettings(sources=sources, tenant_header=tenant_header))


def view(headers=None, query=None, body=b"") -> RequestView:
    return RequestView(headers or {}, query or {}, body)


def test_header_source_gives_tenant_scoped_key():
    key = extractor(KeySource(header="x-session-id")).extract(view({"x-session-id": "abc"}))
    assert key == RoutingKey("default", "abc", "header:x-session-id")
    assert key.hash_key == "default\x1fabc"


def test_sources_are_tried_in_order():
    ex = extractor(KeySource(query="sid"), KeySource(header="x-session-id"))
    key = ex.extract(view({"x-session-id": "from-header"}, {"sid": "from-query"}))
    assert key.session == "from-query"


def test_cookie_source():
    ex = extractor(KeySource(cookie="sess"))
    assert ex.extract(view({"cookie": "a=1; sess=xyz"})).session == "xyz"


def test_nested_body_field_source():
    ex = extractor(KeySource(body="metadata.session_id"))
    assert ex.needs_body
    body = b'{"model": "m", "metadata": {"session_id": "s-9"}}'
    assert ex.extract(view(body=body)).session == "s-9"


def test_user_field_and_integer_ids():
    ex = extractor(KeySource(body="user"))
    assert ex.extract(view(body=b'{"user": 42}')).session == "42"


def test_body_is_not_parsed_when_a_header_answers_first():
    ex = extractor(KeySource(header="x-session-id"), KeySource(body="user"))
    key = ex.extract(view({"x-session-id": "h"}, body=b"not json"))
    assert key.session == "h"


def test_invalid_json_body_is_a_bad_request_when_body_is_a_source():
    with pytest.raises(BadRequest, match="not valid JSON"):
        extractor(KeySource(body="user")).extract(view(body=b"{oops"))


def test_non_string_session_id_is_a_bad_request():
    with pytest.raises(BadRequest, match="must be a string"):
        extractor(KeySource(body="user")).extract(view(body=b'{"user": {"a": 1}}'))


def test_overlong_session_id_is_a_bad_request():
    with pytest.raises(BadRequest, match="longer than"):
        extractor(KeySource(header="s")).extract(view({"s": "x" * 300}))


def test_no_source_gives_an_unkeyed_request():
    key = extractor(KeySource(header="x-session-id")).extract(view())
    assert key.session is None and key.hash_key is None


def test_same_session_id_of_two_tenants_gives_two_keys():
    ex = extractor(KeySource(header="s"), tenant_header="x-tenant")
    a = ex.extract(view({"s": "1", "x-tenant": "acme"}))
    b = ex.extract(view({"s": "1", "x-tenant": "globex"}))
    assert a.hash_key != b.hash_key


def test_session_ids_and_tenants_must_be_utf8_text():
    ex = extractor(KeySource(header="x-session-id"), tenant_header="x-tenant")
    with pytest.raises(BadRequest, match="session id in header 'x-session-id' is not valid UTF-8"):
        ex.extract(view({"x-session-id": b"a\xffb".decode("utf-8", "surrogateescape")}))
    with pytest.raises(BadRequest, match="tenant header 'x-tenant' is not valid UTF-8"):
        ex.extract(view({"x-session-id": "s", "x-tenant": "\udcc3"}))
    assert ex.extract(view({"x-session-id": "café", "x-tenant": "ünï"})).hash_key == "ünï\x1fcafé"


def test_query_values_keep_bytes_that_are_not_utf8_for_the_check():
    query = query_values("session_id=a%ffb&session_id=second&x=caf%C3%A9+au+lait&empty=")
    assert query["session_id"] == "a\udcffb" and query["x"] == "café au lait"
    assert query["empty"] == "" and query_values("") == {}
    with pytest.raises(BadRequest, match="query 'session_id' is not valid UTF-8"):
        extractor(KeySource(query="session_id")).extract(view(query=query))
