"""Rebuilding the assistant's reply from what was relayed."""

from __future__ import annotations

from pathlib import Path

import orjson

from router.orchestrator.replies import ReplyCollector

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "replies"


def sse(*pieces: str) -> bytes:
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    chunks += [{"choices": [{"index": 0, "delta": {"content": p}}]} for p in pieces]
    chunks.append({"choices": [{"index": 1, "delta": {"content": "other choice"}}]})
    chunks.append({"choices": [], "usage": {"prompt_tokens": 3}})
    body = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks)
    return body + b"data: [DONE]\n\n"


async def test_a_stream_split_anywhere_gives_back_the_whole_reply():
    body = sse("Hel", "lo", " there")
    for size in (1, 7, 64, len(body)):
        collector = ReplyCollector()
        collector.start(200, "text/event-stream")
        for i in range(0, len(body), size):
            collector.feed(body[i : i + size])
        await collector.finish()
        assert collector.message() == {"role": "assistant", "content": "Hello there"}


async def test_a_buffered_completion_gives_its_message_without_empty_fields():
    document = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi",
                "tool_calls": [], "refusal": None}}]}  # fmt: skip
    collector = ReplyCollector()
    collector.start(200, "application/json")
    collector.feed(orjson.dumps(document))
    await collector.finish()
    assert collector.message() == {"role": "assistant", "content": "hi"}


async def test_an_unfinished_or_failed_response_gives_no_reply():
    broken = ReplyCollector()
    broken.start(200, "text/event-stream")
    broken.feed(sse("partial")[:60])
    assert broken.message() is None
    failed = ReplyCollector()
    failed.start(500, "application/json")
    failed.feed(b'{"error": {"message": "boom"}}')
    await failed.finish()
    assert failed.message() is None


async def test_a_json_body_fed_in_pieces_is_read_whole():
    body = orjson.dumps({"choices": [{"index": 0, "message": {"role": "assistant",
                                                              "content": "whole"}}]})  # fmt: skip
    collector = ReplyCollector()
    collector.start(200, "application/json")
    for i in range(0, len(body), 5):
        assert collector.feed(body[i : i + 5]) == body[i : i + 5]
    await collector.finish()
    assert collector.message() == {"role": "assistant", "content": "whole"}


async def test_parallel_streamed_tool_calls_are_merged_by_index():
    deltas = [
        {"role": "assistant", "content": None},
        {"tool_calls": [{"index": 0, "id": "a", "type": "function",
                         "function": {"name": "f", "arguments": ""}}]},
        {"tool_calls": [{"index": 1, "id": "b", "type": "function",
                         "function": {"name": "g", "arguments": '{"y"'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"x": 1}'}}]},
        {"tool_calls": [{"index": 1, "function": {"arguments": ": 2}"}}]},
    ]  # fmt: skip
    chunks = [{"choices": [{"index": 0, "delta": d}]} for d in deltas]
    body = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    collector = ReplyCollector()
    collector.start(200, "text/event-stream")
    for i in range(0, len(body), 11):
        collector.feed(body[i : i + 11])
    await collector.finish()
    assert collector.message() == {"role": "assistant", "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
        {"id": "b", "type": "function", "function": {"name": "g", "arguments": '{"y": 2}'}},
    ]}  # fmt: skip


async def test_llama_cpp_replies_give_their_message_streamed_or_not():
    stream = ReplyCollector()
    stream.start(200, "text/event-stream")
    stream.feed((FIXTURES / "llamacpp-stream.txt").read_bytes())
    await stream.finish()
    assert stream.message() == {"role": "assistant", "content": " Proc leavecial Stew"}
    whole = ReplyCollector()
    whole.start(200, "application/json")
    whole.feed((FIXTURES / "llamacpp.json").read_bytes())
    await whole.finish()
    assert whole.message() == {"role": "assistant",
                               "content": " hosting rehab disk wonderrities Parties"}  # fmt: skip


async def test_the_final_done_is_held_back_until_the_reply_is_handed_on_lf_or_crlf_framed():
    for crlf in (False, True):
        body = sse("Hi")
        if crlf:
            body = body.replace(b"\n\n", b"\r\n\r\n")
        stored: list[object] = []

        async def keep(message: object, stored: list[object] = stored) -> None:
            stored.append(message)

        collector = ReplyCollector(keep)
        collector.start(200, "text/event-stream")
        sent = collector.feed(body)
        assert b"[DONE]" not in sent and stored == []
        held = await collector.finish()
        assert held.startswith(b"data: [DONE]")
        assert stored == [{"role": "assistant", "content": "Hi"}]
