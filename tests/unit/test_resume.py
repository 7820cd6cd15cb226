"""Resuming a cut stream, the pure parts: the transcript kept on the hot path, what was
relayed, whether it may be continued, the continuation request per engine, and the stitching
of the continuation into the first stream. Events are shaped as real engines send them (the
llama.cpp captures under tests/fixtures/llamacpp/)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from router.proxy.resume import (
    Refused,
    Stitcher,
    check,
    continuation_body,
    path_kind,
    read_relayed,
)
from router.proxy.transcript import MAX_HELD, Transcript

LLAMACPP = Path(__file__).resolve().parents[1] / "fixtures" / "llamacpp"
STREAM = (LLAMACPP / "chat-completion-stream.txt").read_bytes()
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def chunk(content: str | None = None, *, role: bool = False, finish: str | None = None,
          id_: str = "chatcmpl-A", created: int = 100, fingerprint: str | None = "fp-A",
          usage: object = None) -> bytes:  # fmt: skip
    delta: dict[str, object] = {}
    if role:
        delta["role"] = "assistant"
    if content is not None:
        delta["content"] = content
    document: dict[str, object] = {
        "id": id_, "object": "chat.completion.chunk", "created": created, "model": "m-A",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }  # fmt: skip
    if fingerprint is not None:
        document["system_fingerprint"] = fingerprint
    if usage is not None:
        document["usage"] = usage
    return b"data: " + orjson.dumps(document) + b"\n\n"


def usage_chunk(prompt: int, completion: int, id_: str = "chatcmpl-B") -> bytes:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion,
             "total_tokens": prompt + completion}  # fmt: skip
    document = {"id": id_, "object": "chat.completion.chunk", "created": 200, "model": "m-B",
                "choices": [], "usage": usage}  # fmt: skip
    return b"data: " + orjson.dumps(document) + b"\n\n"


def events(data: bytes) -> list[dict]:
    return [
        orjson.loads(line[6:])
        for line in data.split(b"\n")
        if line.startswith(b"data: {")
    ]


# --- the transcript


def test_whole_events_pass_at_once_and_a_partial_event_waits_for_its_end():
    transcript = Transcript(cap=1 << 20)
    first, second = chunk("a"), chunk("b")
    assert transcript.take(first) == first
    assert transcript.take(second[:10]) == b""
    assert transcript.take(second[10:] + first[:5]) == second
    assert transcript.relayed == first + second
    transcript.drop_held()
    assert transcript.rest() == b"" and transcript.relayed == first + second


def test_crlf_framed_events_are_whole_events_too():
    transcript = Transcript(cap=1 << 20)
    assert transcript.take(b"data: 1\r\n\r\ndata: 2") == b"data: 1\r\n\r\n"
    assert transcript.rest() == b"data: 2"


def test_past_the_cap_the_copy_is_dropped_and_the_stream_is_not_resumable():
    transcript = Transcript(cap=4096)
    sent = [transcript.take(chunk("x" * 100)) for _ in range(40)]
    assert all(sent) and transcript.unresumable == "past_cap" and transcript.relayed == b""


def test_an_event_that_never_closes_is_passed_on_and_ends_resuming():
    transcript = Transcript(cap=1 << 20)
    huge = b"data: " + b"x" * (MAX_HELD + 10)
    assert transcript.take(huge) == huge
    assert transcript.unresumable == "framing"
    assert transcript.take(b"data: y") == b"data: y"


# --- what was relayed, and whether it may go on


def test_what_was_relayed_from_a_real_llamacpp_stream_cut_after_three_tokens():
    cut = b"\n\n".join(STREAM.split(b"\n\n")[:4])
    relayed = read_relayed(cut + b"\n\n", chat=True)
    assert relayed.text == " Proc leavecial" and relayed.tokens == 3
    assert relayed.id == "chatcmpl-xXexBsqhSCliDiuHhdlbWYJalQQHfinr"
    assert (relayed.model, relayed.fingerprint, relayed.created) == (
        "tiny.gguf", "b0-unknown", 1795879781,
    )  # fmt: skip
    assert not relayed.finished and not relayed.done
    whole = read_relayed(STREAM, chat=True)
    assert whole.finished and whole.done and whole.tokens == 4


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "logprobs"),
        ({"stream": False}, "not_streamed"),
        ({"response_format": {"type": "json_object"}}, "structured_output"),
        ({"guided_json": {"type": "object"}}, "structured_output"),
    ],
)
def test_requests_whose_streams_are_not_continued(change, reason):
    relayed = read_relayed(chunk("x", role=True), chat=True)
    with pytest.raises(Refused) as refused:
        check({**CHAT, **change}, relayed)
    assert refused.value.reason == reason


def test_a_tool_call_or_reasoning_partly_streamed_is_not_continued():
    delta = {"tool_calls": [{"index": 0, "id": "t"}]}
    call = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta}]}  # fmt: skip
    with pytest.raises(Refused, match="tool_call"):
        check(CHAT, read_relayed(b"data: " + orjson.dumps(call) + b"\n\n", chat=True))
    call["choices"] = [{"index": 0, "delta": {"reasoning_content": "hmm"}}]
    with pytest.raises(Refused, match="reasoning"):
        check(CHAT, read_relayed(b"data: " + orjson.dumps(call) + b"\n\n", chat=True))


def test_structured_output_with_nothing_relayed_yet_is_sent_again():
    relayed = read_relayed(chunk("", role=True), chat=True)
    document = {**CHAT, "response_format": {"type": "json_object"}}
    assert check(document, relayed) is document
    assert orjson.loads(continuation_body(document, relayed, "vllm")) == document


def test_completions_with_echo_logprobs_or_token_prompts_are_not_continued():
    relayed = read_relayed(b'data: {"id":"c","choices":[{"index":0,"text":" a"}]}\n\n', False)
    base = {"model": "m", "prompt": "Once", "stream": True}
    for change, reason in (({"echo": True}, "echo"), ({"logprobs": 2}, "logprobs"),
                           ({"prompt": [1, 2, 3]}, "prompt")):  # fmt: skip
        with pytest.raises(Refused, match=reason):
            check({**base, **change}, relayed)


def test_path_kinds():
    assert path_kind("/v1/chat/completions?x=1") is True
    assert path_kind("/v1/completions") is False
    assert path_kind("/v1/embeddings") is None


# --- the continuation request


def test_a_chat_continuation_per_engine_with_max_tokens_reduced():
    relayed = read_relayed(chunk("", role=True) + chunk("Hello") + chunk(" there"), chat=True)
    document = {**CHAT, "max_tokens": 10, "max_completion_tokens": 12}
    vllm = orjson.loads(continuation_body(document, relayed, "vllm"))
    assert vllm["messages"] == [*CHAT["messages"], {"role": "assistant", "content": "Hello there"}]
    assert vllm["continue_final_message"] is True and vllm["add_generation_prompt"] is False
    assert (vllm["max_tokens"], vllm["max_completion_tokens"]) == (8, 10)
    assert orjson.loads(continuation_body(document, relayed, "sglang"))["continue_final_message"]
    llama = orjson.loads(continuation_body(document, relayed, "llamacpp"))
    assert "continue_final_message" not in llama and "add_generation_prompt" not in llama
    assert llama["messages"][-1] == {"role": "assistant", "content": "Hello there"}
    assert document == {**CHAT, "max_tokens": 10, "max_completion_tokens": 12}  # untouched


def test_a_completions_continuation_appends_the_text_to_the_prompt():
    relayed = read_relayed(
        b'data: {"id":"c","choices":[{"index":0,"text":" upon"}]}\n\n'
        b'data: {"id":"c","choices":[{"index":0,"text":" a"}]}\n\n', chat=False,
    )  # fmt: skip
    for prompt, expected in (("Once", "Once upon a"), (["Once"], ["Once upon a"])):
        document = {"model": "m", "prompt": prompt, "stream": True, "max_tokens": 2}
        body = orjson.loads(continuation_body(check(document, relayed), relayed, "vllm"))
        assert body["prompt"] == expected and body["max_tokens"] == 1
        assert "continue_final_message" not in body


# --- stitching


def test_continuation_events_take_the_first_streams_identity_and_drop_the_role_chunk():
    relayed = read_relayed(chunk("", role=True) + chunk("Hello"), chat=True)
    stitcher = Stitcher(relayed, echo=False)
    out = stitcher.feed(
        chunk("", role=True, id_="chatcmpl-B", created=200, fingerprint="fp-B")
        + chunk(" there", id_="chatcmpl-B", created=200, fingerprint="fp-B")
    )
    out += stitcher.feed(chunk(None, finish="stop", id_="chatcmpl-B") + b"data: [DONE]\n\n")
    got = events(out)
    assert len(got) == 2, got  # the role-only chunk is gone
    assert all(
        (e["id"], e["created"], e["model"], e["system_fingerprint"])
        == ("chatcmpl-A", 100, "m-A", "fp-A")
        for e in got
    )
    assert got[0]["choices"][0]["delta"] == {"content": " there"}
    assert got[1]["choices"][0]["finish_reason"] == "stop"
    assert out.endswith(b"data: [DONE]\n\n") and out.count(b"[DONE]") == 1


def test_a_fingerprint_the_first_stream_lacked_is_removed():
    relayed = read_relayed(chunk("a", fingerprint=None), chat=True)
    out = Stitcher(relayed, echo=False).feed(chunk(" b", fingerprint="fp-B"))
    assert "system_fingerprint" not in events(out)[0]


def test_the_usage_chunk_is_derived_from_the_relayed_count_and_the_continuation():
    relayed = read_relayed(chunk("", role=True) + chunk("a") + chunk(" b") + chunk(" c"), True)
    out = Stitcher(relayed, echo=False).feed(usage_chunk(prompt=23, completion=5))
    (usage_event,) = events(out)
    assert usage_event["usage"] == {"prompt_tokens": 20, "completion_tokens": 8,
                                    "total_tokens": 28}  # fmt: skip
    assert usage_event["id"] == "chatcmpl-A"


def test_llamacpp_echo_is_removed_across_chunks_then_the_rest_passes():
    relayed = read_relayed(chunk("", role=True) + chunk("Hello") + chunk(" there,"), chat=True)
    stitcher = Stitcher(relayed, echo=True)
    role = b'data: {"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],"id":"x"}\n\n'  # noqa: E501
    out = stitcher.feed(role + chunk("Hello th") + chunk("ere, my"))
    out += stitcher.feed(chunk(" friend"))
    texts = [e["choices"][0]["delta"].get("content") for e in events(out)]
    assert texts == [" my", " friend"]


def test_the_real_llamacpp_prefill_reply_starts_with_the_given_text():
    reply = orjson.loads((LLAMACPP / "chat-completion-assistant-prefill.json").read_bytes())
    content = reply["choices"][0]["message"]["content"]
    relayed = read_relayed(chunk("Hello") + chunk(" there,"), chat=True)
    out = Stitcher(relayed, echo=True).feed(chunk(content))
    assert events(out)[0]["choices"][0]["delta"]["content"] == " my MeganritiesNote violates"


def test_an_error_event_from_the_continuation_passes_as_it_came():
    relayed = read_relayed(chunk("a"), chat=True)
    error = b'event: error\ndata: {"error": {"message": "x"}}'
    assert Stitcher(relayed, echo=False).feed(error + b"\n\n") == error + b"\n\n"
