"""The event splitter the relay's taps share: whole events out of a stream cut anywhere."""

from __future__ import annotations

import orjson

from router.proxy.resume import Stitcher, read_relayed
from router.proxy.sse import MAX_PENDING, EventSplitter


def test_lf_and_crlf_framed_events_come_out_as_they_close_wherever_the_stream_is_cut():
    stream = b"data: 1\n\ndata: 2\r\n\r\ndata: 3\r\n\r\ndata: 4"
    whole = EventSplitter()
    assert whole.feed(stream) == [b"data: 1", b"data: 2", b"data: 3"]
    assert whole.flush() == [b"data: 4"]
    bytewise = EventSplitter()
    events = [event for i in range(len(stream)) for event in bytewise.feed(stream[i : i + 1])]
    assert events == [b"data: 1", b"data: 2", b"data: 3"] and bytewise.flush() == [b"data: 4"]


def chunk(content: str, id_: str, role: bool = False) -> bytes:
    delta = {"role": "assistant", "content": content} if role else {"content": content}
    document = {"id": id_, "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}  # fmt: skip
    return b"data: " + orjson.dumps(document) + b"\r\n\r\n"


def test_a_crlf_framed_continuation_is_stitched_as_it_streams():
    """CRLF-framed events (as servers built on sse-starlette send them) were one unclosed
    event to the splitter: the stitcher passed the continuation on unrewritten, at its end."""
    relayed = read_relayed(chunk("", "A", role=True) + chunk("Hello", "A"), chat=True)
    stitcher = Stitcher(relayed, echo=False)
    out = stitcher.feed(chunk("", "B", role=True) + chunk(" there", "B"))
    assert out.count(b"data: ") == 1 and b'"id":"A"' in out and b"role" not in out
    assert stitcher.rest() == b""


def test_a_crlf_framed_stream_longer_than_the_pending_limit_is_read_whole():
    """Relayed past MAX_PENDING, the whole CRLF stream was one oversized tail and was dropped:
    nothing seemed relayed, and a resume would have sent the answer again from its start."""
    tokens = MAX_PENDING // 100 + 10
    stream = chunk("", "A", role=True) + b"".join(chunk("x", "A") for _ in range(tokens))
    relayed = read_relayed(stream, chat=True)
    assert relayed.id == "A" and relayed.tokens == tokens and relayed.text == "x" * tokens
