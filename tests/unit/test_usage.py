from router.proxy.usage import ReplyMeter, Usage, UsageSniffer, usage_from_json

USAGE = (
    b'"usage": {"prompt_tokens": 120, "completion_tokens": 5, '
    b'"prompt_tokens_details": {"cached_tokens": 96}}'
)


def test_usage_from_a_json_response():
    assert usage_from_json(b"{" + USAGE + b"}") == Usage(120, 96, 5)
    assert usage_from_json(b'{"usage": {"prompt_tokens": 7}}') == Usage(7, 0, 0)
    assert usage_from_json(b"not json") is None


def test_sniffer_finds_usage_in_the_last_event_of_a_stream():
    sniffer = UsageSniffer()
    sniffer.feed(b'data: {"choices": [{"delta": {"content": "hi"}}], "usage": null}\n\n')
    assert sniffer.usage is None
    sniffer.feed(b'data: {"choices": [], ' + USAGE + b"}\n\n")
    sniffer.feed(b"data: [DONE]\n\n")
    assert sniffer.usage == Usage(120, 96, 5)


def test_sniffer_handles_an_event_split_across_chunks():
    event = b'data: {"choices": [], ' + USAGE + b"}\n\n"
    sniffer = UsageSniffer()
    for i in range(0, len(event), 7):
        sniffer.feed(event[i : i + 7])
    assert sniffer.usage == Usage(120, 96, 5)


def chunk(text: str) -> bytes:
    return b'data: {"choices": [{"delta": {"content": "' + text.encode() + b'"}}]}\n\n'


def test_a_meter_reports_the_workers_usage_when_the_stream_has_it():
    meter = ReplyMeter()
    meter.sent_bytes = 4000
    meter.sniffer.feed(chunk("Hello") + chunk(" there"))
    meter.sniffer.feed(b'data: {"choices": [], ' + USAGE + b"}\n\ndata: [DONE]\n\n")
    assert meter.tokens(4.0) == (125, True)


def test_a_meter_estimates_a_stream_without_usage_from_its_body_and_relayed_text():
    meter = ReplyMeter()
    meter.sent_bytes = 400  # 100 prompt tokens at 4 bytes each
    text = "x" * 39  # 10 tokens at 4 characters each, rounded up
    for i in range(0, len(text), 5):  # split across events, one event split across chunks
        event = chunk(text[i : i + 5])
        meter.sniffer.feed(event[:9])
        meter.sniffer.feed(event[9:])
    meter.sniffer.feed(b"data: [DONE]\n\n")
    assert meter.sniffer.text_chars == 39
    assert meter.tokens(4.0) == (110, False)


def test_a_meter_reads_a_whole_answer_with_or_without_usage():
    meter = ReplyMeter()
    meter.sniffer.whole(b'{"choices": [{"message": {"content": "abcdefgh"}}], ' + USAGE + b"}")
    assert meter.tokens(4.0) == (125, True)
    bare = ReplyMeter()
    bare.sent_bytes = 40
    bare.sniffer.whole(b'{"choices": [{"text": "abcdefgh"}]}')
    assert bare.tokens(4.0) == (12, False)
