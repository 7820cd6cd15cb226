"""Prefix affinity: sessionless requests keyed on tenant, system prompt and first user message."""

from __future__ import annotations

import orjson
import pytest

from router.config import PrefixAffinitySettings, SessionSettings
from router.placement.prefix import prefix_key
from router.placement.session import KeyExtractor, RequestView

SYSTEM = {"role": "system", "content": "You are a terse assistant for the billing team."}


def chat(*messages: dict) -> dict:
    return {"model": "m", "messages": list(messages)}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def test_requests_sharing_system_prompt_and_first_user_message_share_a_key():
    one = chat(SYSTEM, user("Summarise invoice 42"))
    later_turn = chat(
        SYSTEM, user("Summarise invoice 42"), {"role": "assistant", "content": "Sure"}, user("More")
    )
    assert prefix_key(one, 512) == prefix_key(later_turn, 512) is not None


def test_a_different_system_prompt_or_first_message_gives_another_key():
    base = prefix_key(chat(SYSTEM, user("Summarise invoice 42")), 512)
    other_system = {"role": "system", "content": "You are a poet."}
    assert prefix_key(chat(other_system, user("Summarise invoice 42")), 512) != base
    assert prefix_key(chat(SYSTEM, user("Summarise invoice 43")), 512) != base


def test_only_the_configured_length_of_the_first_user_message_counts():
    shared = "A long shared document. " * 10
    a = chat(SYSTEM, user(shared + "question one"))
    b = chat(SYSTEM, user(shared + "question two"))
    assert prefix_key(a, len(shared)) == prefix_key(b, len(shared))
    assert prefix_key(a, len(shared) + 20) != prefix_key(b, len(shared) + 20)


def test_content_parts_and_completion_prompts_are_keyed_too():
    parts = chat(SYSTEM, {"role": "user", "content": [{"type": "text", "text": "hi"}]})
    assert prefix_key(parts, 512) == prefix_key(chat(SYSTEM, user("hi")), 512)
    assert prefix_key({"prompt": "Once upon a time"}, 4) == prefix_key({"prompt": "Once more"}, 4)


@pytest.mark.parametrize(
    "document",
    [None, [], {}, {"messages": "x"}, chat(SYSTEM), {"prompt": ""}, {"messages": [1, user("x")]}],
)
def test_bodies_without_a_prompt_to_key_on_give_no_key(document):
    assert prefix_key(document, 512) is None


def extractor(enabled: bool = True, **session: object) -> KeyExtractor:
    prefix = PrefixAffinitySettings(enabled=enabled, user_chars=64)
    return KeyExtractor(SessionSettings.model_validate(session), prefix)


def view(body: object, **headers: str) -> RequestView:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return RequestView(headers, {}, raw)


def test_sessionless_requests_get_a_tenant_scoped_prefix_key():
    ex = extractor(tenant_header="x-tenant")
    body = chat(SYSTEM, user("hello"))
    acme = ex.extract(view(body, **{"x-tenant": "acme"}))
    globex = ex.extract(view(body, **{"x-tenant": "globex"}))
    assert acme.session is None and acme.source == "prefix" and acme.prefix
    assert acme.hash_key and globex.hash_key and acme.hash_key != globex.hash_key
    assert acme.prefix == globex.prefix


def test_a_session_id_wins_over_the_prefix():
    key = extractor().extract(view(chat(SYSTEM, user("hello")), **{"x-session-id": "s1"}))
    assert key.session == "s1" and key.prefix is None
    assert key.hash_key == "default\x1fs1"


def test_prefix_and_session_keys_never_collide():
    ex = extractor()
    by_prefix = ex.extract(view(chat(SYSTEM, user("hello"))))
    forged = ex.extract(view({}, **{"x-session-id": by_prefix.prefix or ""}))
    assert by_prefix.hash_key != forged.hash_key


def test_disabled_prefix_affinity_leaves_sessionless_requests_unkeyed():
    key = extractor(enabled=False).extract(view(chat(SYSTEM, user("hello"))))
    assert key.hash_key is None


def test_a_body_that_is_not_json_is_routed_without_a_key():
    ex = extractor(sources=[{"header": "x-session-id"}])
    assert ex.needs_body
    assert ex.extract(view(b"not json")).hash_key is None
