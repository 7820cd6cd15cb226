"""Rebuilding the assistant's reply from what was relayed."""

from __future__ import annotations

import orjson

from router.orchestrator.replies import ReplyCollector


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
        collector.start(200, streaming=True)
        for i in range(0, len(body), size):
            collector.feed(body[i : i + size])
        await collector.finish()
        assert collector.message() == {"role": "assistant", "content": "Hello there"}


async def test_a_buffered_completion_gives_its_message_without_empty_fields():
    document = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi",
                "tool_calls": [], "refusal": None}}]}  # fmt: skip
    collector = ReplyCollector()
    collector.start(200, streaming=False)
    collector.feed(orjson.dumps(document))
    await collector.finish()
    assert collector.message() == {"role": "assistant", "content": "hi"}


async def test_an_unfinished_or_failed_response_gives_no_reply():
    broken = ReplyCollector()
    broken.start(200, streaming=True)
    broken.feed(sse("partial")[:60])
    assert broken.message() is None
    failed = ReplyCollector()
    failed.start(500, streaming=False)
    failed.feed(b'{"error": {"message": "boom"}}')
    await failed.finish()
    assert failed.message() is None
