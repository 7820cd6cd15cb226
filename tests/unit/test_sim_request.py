import pytest

from router.sim.request import (
    InvalidRequest,
    decode_json,
    parse_chat,
    parse_completion,
    parse_tokenize,
)
from router.sim.template import close_assistant_turn, render_chat

USER = {"role": "user", "content": "hello"}


def test_chat_renders_messages_through_the_template():
    req = parse_chat({"messages": [{"role": "system", "content": "be brief"}, USER]}, 32)
    assert req.prompt == "<|system|>\nbe brief\n<|user|>\nhello\n<|assistant|>\n"
    assert req.chat


def test_text_content_parts_are_joined():
    parts = [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]
    req = parse_chat({"messages": [{"role": "user", "content": parts}]}, 32)
    assert req.prompt == render_chat([("user", "hello")])


def test_max_tokens_default_and_overrides():
    assert parse_chat({"messages": [USER]}, 7).max_tokens == 7
    assert not parse_chat({"messages": [USER]}, 7).explicit_max_tokens
    assert parse_chat({"messages": [USER], "max_tokens": 3}, 7).max_tokens == 3
    body = {"messages": [USER], "max_tokens": 3, "max_completion_tokens": 5}
    assert parse_chat(body, 7).max_tokens == 5


def test_include_usage_only_applies_to_streams():
    options = {"stream_options": {"include_usage": True}}
    assert parse_completion({"prompt": "x", "stream": True, **options}, 4).include_usage
    assert not parse_completion({"prompt": "x", **options}, 4).include_usage


def test_completion_prompt_may_be_a_one_element_list():
    assert parse_completion({"prompt": ["abc"]}, 4).prompt == "abc"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"messages": []},
        {"messages": "hi"},
        {"messages": [{"content": "no role"}]},
        {"messages": [{"role": "user", "content": 5}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        {"messages": [USER], "max_tokens": 0},
        {"messages": [USER], "max_tokens": "3"},
        {"messages": [USER], "max_tokens": True},
        {"messages": [USER], "stream": "yes"},
        {"messages": [USER], "stream_options": []},
    ],
)
def test_bad_chat_bodies_are_invalid_requests(body):
    with pytest.raises(InvalidRequest):
        parse_chat(body, 32)


@pytest.mark.parametrize("body", [{}, {"prompt": 3}, {"prompt": ["a", "b"]}, {"prompt": None}])
def test_bad_completion_bodies_are_invalid_requests(body):
    with pytest.raises(InvalidRequest):
        parse_completion(body, 32)


@pytest.mark.parametrize("raw", [b"", b"{bad", b"[1, 2]", b'"text"', b"\xff"])
def test_body_must_be_a_json_object(raw):
    with pytest.raises(InvalidRequest):
        decode_json(raw)


def test_tokenize_accepts_prompt_or_messages():
    assert parse_tokenize({"prompt": "abc"}) == "abc"
    assert parse_tokenize({"messages": [USER]}) == render_chat([("user", "hello")])
    no_cue = parse_tokenize({"messages": [USER], "add_generation_prompt": False})
    assert no_cue == render_chat([("user", "hello")], add_generation_prompt=False)


def test_closing_the_assistant_turn_matches_rendering_the_longer_conversation():
    history = [("system", "s"), ("user", "u")]
    prompt = render_chat(history)
    expected = render_chat([*history, ("assistant", "the reply")], add_generation_prompt=False)
    assert close_assistant_turn(prompt, "the reply") == expected
