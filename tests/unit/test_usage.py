from router.proxy.usage import UsageSniffer, usage_from_json

USAGE = (
    b'"usage": {"prompt_tokens": 120, "completion_tokens": 5, '
    b'"prompt_tokens_details": {"cached_tokens": 96}}'
)


def test_usage_from_a_json_response():
    assert usage_from_json(b"{" + USAGE + b"}") == (120, 96)
    assert usage_from_json(b'{"usage": {"prompt_tokens": 7}}') == (7, 0)
    assert usage_from_json(b"not json") is None


def test_sniffer_finds_usage_in_the_last_event_of_a_stream():
    sniffer = UsageSniffer()
    sniffer.feed(b'data: {"choices": [{"delta": {"content": "hi"}}], "usage": null}\n\n')
    assert sniffer.usage is None
    sniffer.feed(b'data: {"choices": [], ' + USAGE + b"}\n\n")
    sniffer.feed(b"data: [DONE]\n\n")
    assert sniffer.usage == (120, 96)


def test_sniffer_handles_an_event_split_across_chunks():
    event = b'data: {"choices": [], ' + USAGE + b"}\n\n"
    sniffer = UsageSniffer()
    for i in range(0, len(event), 7):
        sniffer.feed(event[i : i + 7])
    assert sniffer.usage == (120, 96)
