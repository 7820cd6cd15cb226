import pytest

from router.sim.request import (
    InvalidRequest,
    decode_json,
    parse_chat,
    parse_completion,
    parse_tokenize,
)
from router.sim.template import close_assistant_turn, render_chat, render_open_turn

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


HISTORY = [{"role": "system", "content": "be brief"}, USER]
CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}
BOTH_FLAGS = "Cannot set both `continue_final_message` and `add_generation_prompt` to True."


def with_reply(text: str) -> list[dict]:
    return [*HISTORY, {"role": "assistant", "content": text}]


def test_continuation_leaves_the_final_assistant_turn_open():
    req = parse_chat({"messages": with_reply("alpha beta"), **CONTINUE, "max_tokens": 3}, 32)
    assert req.prompt == "<|system|>\nbe brief\n<|user|>\nhello\n<|assistant|>\nalpha beta"
    assert req.prompt == render_open_turn([("system", "be brief"), ("user", "hello")], "alpha beta")
    assert (req.max_tokens, req.explicit_max_tokens, req.echo) == (3, True, "")


def test_open_turn_is_the_closed_rendering_cut_after_the_partial_reply():
    history = [("system", "s"), ("user", "u")]
    closed = render_chat([*history, ("assistant", "part of it")], add_generation_prompt=False)
    assert closed == render_open_turn(history, "part of it") + "\n"


def test_a_continued_reply_counts_toward_the_default_length():
    assert parse_chat({"messages": with_reply("alpha beta gamma"), **CONTINUE}, 7).max_tokens == 4
    assert parse_chat({"messages": with_reply(""), **CONTINUE}, 7).max_tokens == 7
    assert parse_chat({"messages": with_reply("a b c d e f g h"), **CONTINUE}, 7).max_tokens == 0
    req = parse_chat({"messages": with_reply("a b c d e f g h"), **CONTINUE, "max_tokens": 5}, 7)
    assert req.max_tokens == 5


def test_no_generation_prompt_renders_without_the_cue():
    req = parse_chat({"messages": HISTORY, "add_generation_prompt": False}, 32)
    assert req.prompt == render_chat([("system", "be brief"), ("user", "hello")], False)


def test_without_continuation_a_final_assistant_message_is_a_closed_turn():
    req = parse_chat({"messages": with_reply("alpha")}, 32)
    assert req.prompt.endswith("<|assistant|>\nalpha\n<|assistant|>\n")
    assert (req.max_tokens, req.echo) == (32, "")


@pytest.mark.parametrize("flags", [{"add_generation_prompt": True}, {}])
def test_continuing_and_a_generation_prompt_are_exclusive(flags):
    body = {"messages": with_reply("alpha"), "continue_final_message": True, **flags}
    with pytest.raises(InvalidRequest, match=r"^Cannot set both") as caught:
        parse_chat(body, 32)
    assert str(caught.value) == BOTH_FLAGS
    assert caught.value.param == "continue_final_message"


def test_continuing_needs_a_final_assistant_message():
    with pytest.raises(InvalidRequest, match="the last message is from 'user'"):
        parse_chat({"messages": HISTORY, **CONTINUE}, 32)


@pytest.mark.parametrize("key", ["continue_final_message", "add_generation_prompt"])
def test_prompt_flags_must_be_booleans(key):
    with pytest.raises(InvalidRequest):
        parse_chat({"messages": with_reply("alpha"), key: "yes"}, 32)


def test_echo_prefill_continues_a_final_assistant_message_and_echoes_it():
    plain = parse_chat({"messages": with_reply("alpha beta"), **CONTINUE}, 7)
    echoed = parse_chat({"messages": with_reply("alpha beta")}, 7, echo_prefill=True)
    assert echoed.prompt == plain.prompt
    assert (echoed.echo, echoed.max_tokens) == ("alpha beta", 5)
    other = parse_chat({"messages": HISTORY}, 7, echo_prefill=True)
    assert (other.prompt, other.echo) == (parse_chat({"messages": HISTORY}, 7).prompt, "")


def test_echo_prefill_ignores_continue_final_message_and_applies_the_cue_flag_to_the_history():
    body = {"messages": with_reply("alpha"), "continue_final_message": True}
    assert parse_chat(body, 7, echo_prefill=True).prompt.endswith("<|assistant|>\nalpha")
    bare = parse_chat({**body, "add_generation_prompt": False}, 7, echo_prefill=True)
    assert bare.prompt == render_chat([("system", "be brief"), ("user", "hello")], False) + "alpha"


def test_echo_prefill_refuses_two_assistant_messages_at_the_end():
    messages = [*with_reply("alpha"), {"role": "assistant", "content": "beta"}]
    with pytest.raises(InvalidRequest, match="2 or more assistant messages"):
        parse_chat({"messages": messages}, 7, echo_prefill=True)


def test_tokenize_renders_continuations_like_completions():
    body = {"messages": with_reply("alpha"), **CONTINUE}
    assert parse_tokenize(body) == parse_chat(body, 7).prompt
    with pytest.raises(InvalidRequest, match=r"^Cannot set both"):
        parse_tokenize({"messages": with_reply("alpha"), "continue_final_message": True})
    echoed = parse_tokenize({"messages": with_reply("alpha")}, echo_prefill=True)
    assert echoed == parse_chat(body, 7).prompt
