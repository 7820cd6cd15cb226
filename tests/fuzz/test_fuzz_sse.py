"""Server-sent event streams under arbitrary chunking: however a worker's stream is cut into
chunks (inside a `data:` line, inside `\\n\\n`, inside `\\r\\n\\r\\n`), the parser, the transcript
kept for resuming and the stitcher of a continuation see the same events as with the stream
whole; and reading relayed bytes never raises, whatever they are.

Streams are built from the pieces real ones have (data lines with JSON, `[DONE]`, `event:`
and comment lines, LF and CRLF line ends and event boundaries) and from arbitrary bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from itertools import pairwise

import orjson
from hypothesis import given
from hypothesis import strategies as st

from router.proxy.resume import Relayed, Stitcher, read_relayed
from router.proxy.sse import MAX_PENDING, EventSplitter, data_of
from router.proxy.transcript import MAX_HELD, Transcript

BOUNDARY = re.compile(rb"\r\n\r\n|\n\n")  # a blank line, LF or CRLF framed

# -- streams and cuts ------------------------------------------------------------------------

json_payloads = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=12)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=8,
).map(orjson.dumps)  # fmt: skip
pieces = st.one_of(
    st.just(b"data: "),
    st.just(b"data:"),
    json_payloads,
    st.just(b"[DONE]"),
    st.sampled_from([b"\n", b"\r\n", b"\n\n", b"\r\n\r\n", b"\r", b"\n\r\n"]),
    st.sampled_from([b"event: error", b": keep-alive", b"id: 7", b"retry: 10"]),
    st.binary(max_size=8),
)
streams = st.lists(pieces, max_size=30).map(b"".join)


@st.composite
def cuts(draw: st.DrawFn, data: bytes, bytewise: bool = True) -> list[bytes]:
    """`data` cut into chunks at arbitrary points: anywhere, or (short streams) every byte on
    its own."""
    if bytewise and data and draw(st.integers(0, 9)) == 0:
        return [data[i : i + 1] for i in range(len(data))]
    points = draw(st.lists(st.integers(0, len(data)), max_size=12))
    bounds = [0, *sorted(points), len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]


def stream_and_cuts(source: st.SearchStrategy[bytes] = streams):
    return source.flatmap(lambda data: st.tuples(st.just(data), cuts(data)))


def split_feed(chunks: Iterable[bytes]) -> list[bytes]:
    splitter = EventSplitter()
    events = [event for chunk in chunks for event in splitter.feed(chunk)]
    return [*events, *splitter.flush()]


# -- the event splitter ----------------------------------------------------------------------


@given(stream_and_cuts())
def test_chunks_give_the_events_of_the_whole_stream(case: tuple[bytes, list[bytes]]) -> None:
    data, chunks = case
    assert b"".join(chunks) == data
    expected = BOUNDARY.split(data)  # every event the stream closes, then its unclosed tail
    if expected[-1] == b"":
        expected.pop()
    assert split_feed(chunks) == split_feed([data]) == expected


@given(
    st.lists(
        st.binary(max_size=40).filter(lambda e: b"\n" not in e and b"\r" not in e), max_size=6
    ),
    st.integers(0, 5),
    st.integers(MAX_PENDING + 1, MAX_PENDING + 512),
    st.data(),
)
def test_an_event_too_long_to_hold_never_costs_its_neighbours(
    events: list[bytes], at: int, size: int, data: st.DataObject
) -> None:
    """An event growing past MAX_PENDING without closing is dropped (or comes out cut short),
    whatever the chunks; the events around it come out whole, in order."""
    big = b"data: " + b"x" * size
    events = [e for e in events if e]
    before = b"".join(e + b"\n\n" for e in events[:at])
    stream = before + big + b"\n\n" + b"".join(e + b"\n\n" for e in events[at:])
    # anywhere, and at least once where the big event has already outgrown MAX_PENDING
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=4))
    points.append(data.draw(st.integers(len(before) + MAX_PENDING + 1, len(before) + len(big))))
    bounds = [0, *sorted(points), len(stream)]
    got = split_feed(stream[a:b] for a, b in pairwise(bounds))
    small = [e for e in got if len(e) <= MAX_PENDING and not big.endswith(e)]
    assert small == [e for e in events if not big.endswith(e)]


payload_texts = st.one_of(json_payloads, st.just(b"[DONE]")).filter(
    lambda p: p == p.strip() and b"\n" not in p and b"\r" not in p
)


@given(
    st.lists(
        st.tuples(payload_texts, st.sampled_from([b"data: ", b"data:", b"data:  "]),
                  st.sampled_from([b"\n", b"\r\n"])),
        min_size=1, max_size=4,
    ),
    st.lists(st.sampled_from([b"event: message", b": comment", b"id: 1"]), max_size=2),
)  # fmt: skip
def test_data_of_gives_each_data_lines_payload(
    lines: list[tuple[bytes, bytes, bytes]], others: list[bytes]
) -> None:
    event = b"".join(other + b"\n" for other in others)
    event += b"".join(field + payload + end for payload, field, end in lines)
    assert list(data_of(event.rstrip(b"\r\n"))) == [payload for payload, _, _ in lines]


# -- the transcript kept for resuming --------------------------------------------------------


def last_boundary_end(data: bytes) -> int:
    ends = [match.end() for match in BOUNDARY.finditer(data)]
    lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
    return max([0, *ends, lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0])


@given(stream_and_cuts(), st.sampled_from([1 << 20, 64, 0]))
def test_the_transcript_sends_whole_events_and_keeps_the_rest(
    case: tuple[bytes, list[bytes]], cap: int
) -> None:
    data, chunks = case
    transcript = Transcript(cap)
    sent = [transcript.take(chunk) for chunk in chunks]
    relayed = transcript.relayed
    rest = transcript.rest()
    assert b"".join(sent) + rest == data  # nothing lost, nothing added, in order
    if transcript.unresumable is None:
        assert b"".join(sent) == data[: last_boundary_end(data)]
        assert rest == data[last_boundary_end(data) :]
        assert relayed == b"".join(sent) and transcript.size == len(relayed) <= cap
        assert all(s == b"" or s.endswith((b"\n\n", b"\r\n\r\n")) for s in sent)
    else:
        assert transcript.unresumable == "past_cap" and len(b"".join(sent)) > cap


@given(st.integers(MAX_HELD + 1, MAX_HELD + 256), st.data())
def test_an_event_that_never_closes_is_passed_on_whole(size: int, data: st.DataObject) -> None:
    stream = b"data: 1\n\n" + b"data: " + b"y" * size + b"\n\ndata: 2\n\n"
    transcript = Transcript(1 << 20)
    sent = [transcript.take(chunk) for chunk in data.draw(cuts(stream, bytewise=False))]
    assert b"".join(sent) + transcript.rest() == stream


# -- reading what was relayed, and stitching a continuation ---------------------------------


def chat_event(content: str | None, *, id_: str, role: bool = False,
               finish: str | None = None) -> dict:  # fmt: skip
    delta: dict[str, str] = {"role": "assistant"} if role else {}
    if content is not None:
        delta["content"] = content
    return {"id": id_, "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip


def sse(documents: Sequence[dict], *, done: bool = True, crlf: bool = False) -> bytes:
    end = b"\r\n\r\n" if crlf else b"\n\n"
    events = [b"data: " + orjson.dumps(d) + end for d in documents]
    return b"".join(events) + (b"data: [DONE]" + end if done else b"")


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(
        allow_nan=False), st.text(max_size=8)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8,
)  # fmt: skip
choices = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "index": json_values,
            "delta": st.one_of(
                st.fixed_dictionaries({}, optional={
                    "role": json_values, "content": json_values, "tool_calls": json_values,
                    "reasoning_content": json_values,
                }),
                json_values,
            ),
            "text": json_values,
            "finish_reason": json_values,
        },
    ),
    json_values,
)  # fmt: skip
chunk_documents = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values, "created": json_values, "model": json_values,
        "system_fingerprint": json_values, "choices": st.one_of(st.lists(choices, max_size=3),
                                                                json_values),
        "usage": st.one_of(st.fixed_dictionaries({}, optional={
            "prompt_tokens": json_values, "completion_tokens": json_values}), json_values),
    },
)  # fmt: skip
event_streams = st.lists(st.one_of(chunk_documents, json_values), max_size=6).flatmap(
    lambda documents: st.booleans().map(lambda crlf: sse(documents, crlf=crlf))
)


@given(st.one_of(st.binary(max_size=200), streams, event_streams), st.booleans(), st.booleans())
def test_reading_or_stitching_any_bytes_never_raises(data: bytes, chat: bool, echo: bool) -> None:
    """Whatever a worker sent before it broke, and whatever the next one sends."""
    relayed = read_relayed(data, chat)
    assert isinstance(relayed, Relayed) and isinstance(relayed.text, str)
    assert relayed.tokens >= 0 and (relayed.tokens == 0) == (relayed.text == "")
    stitcher = Stitcher(relayed, echo=echo)
    out = stitcher.feed(data) + stitcher.rest()
    assert isinstance(out, bytes)


tokens = st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=12)


@given(tokens, st.integers(0, 12), st.booleans(), st.booleans(), st.data())
def test_a_stitched_continuation_is_the_rest_of_the_answer_however_it_is_cut(
    answer: list[str], cut: int, echo: bool, crlf: bool, data: st.DataObject
) -> None:
    """The first stream relayed `answer[:cut]`; the continuation (echoing the relayed text
    first, for llama.cpp) sends the rest. Stitched, chunk by chunk or whole, the client gets
    exactly the rest, under the first stream's id."""
    cut = min(cut, len(answer))
    relayed_events = [
        chat_event("", id_="A", role=True),
        *(chat_event(t, id_="A") for t in answer[:cut]),
    ]
    first = sse(relayed_events, done=False, crlf=crlf)
    relayed = read_relayed(first, chat=True)
    assert relayed.text == "".join(answer[:cut]) and relayed.tokens == cut
    rest = answer[cut:]
    if echo and relayed.text:
        split = data.draw(st.integers(0, len(relayed.text)))
        rest = [relayed.text[:split], relayed.text[split:], *rest]
    continuation = sse([chat_event("", id_="B", role=True),
                        *(chat_event(t, id_="B") for t in rest),
                        chat_event(None, id_="B", finish="stop")], crlf=crlf)  # fmt: skip

    def stitch(chunks: list[bytes]) -> bytes:
        stitcher = Stitcher(relayed, echo=echo)
        return b"".join(stitcher.feed(chunk) for chunk in chunks) + stitcher.rest()

    whole = stitch([continuation])
    assert stitch(data.draw(cuts(continuation))) == whole
    events = [orjson.loads(p) for e in BOUNDARY.split(whole) for p in data_of(e) if p != b"[DONE]"]
    assert {event["id"] for event in events} <= {"A"}  # the first stream's identity
    assert not any("role" in c["delta"] for e in events for c in e["choices"])
    text = "".join(c["delta"].get("content", "") for e in events for c in e["choices"])
    assert relayed.text + text == "".join(answer)
    assert whole.endswith(b"data: [DONE]\n\n")
