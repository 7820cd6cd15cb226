"""Token counting with real tokenizers, offline."""

from __future__ import annotations

import json

import pytest

from router.config import TokenizerSettings
from router.errors import ConfigError
from router.metrics import Metrics
from router.orchestrator.tokenizer import (
    MediaRule,
    SentCounter,
    bpe_tokenizer,
    huggingface_tokenizer,
    make_tokenizer,
)


@pytest.mark.parametrize(
    ("encoding", "text", "tokens"),
    [
        ("cl100k_base", "hello world", 2),
        ("cl100k_base", "tiktoken is great!", 6),
        ("o200k_base", "hello world", 2),
        ("cl100k_base", "<|endoftext|>", 7),
    ],
)
async def test_bpe_counts_match_the_openai_encodings_offline(encoding, text, tokens):
    tokenizer = bpe_tokenizer(encoding, per_message=0)
    counted = await tokenizer.count([{"role": "", "content": text}])
    assert counted == [tokens + 1], "role '' plus newline adds one token"


async def test_per_message_overhead_and_role_are_counted():
    tokenizer = bpe_tokenizer("cl100k_base", per_message=4)
    [n] = await tokenizer.count([{"role": "user", "content": "hello world"}])
    assert n == 4 + 4  # "user", "\n", "hello", " world"


async def test_content_parts_count_their_text():
    tokenizer = bpe_tokenizer("cl100k_base", per_message=0)
    parts = [{"type": "text", "text": "hello"}, {"type": "text", "text": " world"}]
    assert await tokenizer.count([{"role": "user", "content": parts}]) == await tokenizer.count(
        [{"role": "user", "content": "hello world"}]
    )


def sent_counter() -> SentCounter:
    return SentCounter(bpe_tokenizer("cl100k_base", per_message=4), MediaRule(576, 4))


async def test_an_image_costs_a_fixed_amount_plus_what_its_data_weighs():
    counter = sent_counter()
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 4000}}
    text = {"role": "user", "content": [{"type": "text", "text": "look"}]}
    with_image = {"role": "user", "content": [{"type": "text", "text": "look"}, image]}
    [plain, seen] = await counter.count([text, with_image])
    assert seen - plain == 576 + -(-len(json.dumps(image, separators=(",", ":"))) // 4)
    assert seen - plain > 1000


async def test_tool_calls_and_other_fields_are_counted_as_their_json_text():
    counter = sent_counter()
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}  # fmt: skip
    [bare, with_call] = await counter.count(
        [{"role": "assistant", "content": ""}, {"role": "assistant", "tool_calls": [call]}]
    )
    assert with_call - bare >= 15
    [answer] = await counter.count([{"role": "tool", "tool_call_id": "x" * 400, "content": "ok"}])
    assert answer > 50, "an extra field is counted"


async def test_plain_text_messages_count_as_the_tokenizer_counts_them():
    plain = [{"role": "user", "content": "hello world"}, {"role": "user", "name": "bo",
                                                          "content": "hi"}]  # fmt: skip
    assert await sent_counter().count(plain) == await bpe_tokenizer(
        "cl100k_base", per_message=4
    ).count(plain)


def write_tokenizer_json(path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "user": 1, "hello": 2, "world": 3}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(path))


async def test_a_hugging_face_tokenizer_json_is_used_as_given(tmp_path):
    path = tmp_path / "tokenizer.json"
    write_tokenizer_json(path)
    tokenizer = huggingface_tokenizer(str(path), per_message=1)
    assert await tokenizer.count([{"role": "user", "content": "hello hello world zzz"}]) == [6]


def test_an_unreadable_tokenizer_json_is_a_config_error(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"nope": 1}))
    with pytest.raises(ConfigError, match=r"history\.tokenizer\.path"):
        huggingface_tokenizer(str(tmp_path / "bad.json"), per_message=0)


async def test_the_estimate_is_only_a_declared_logged_and_counted_fallback(caplog):
    import aiohttp

    from router.config import PinSettings
    from router.fleet.workers import Worker, WorkerPool
    from router.placement.calls import WorkerCalls
    from router.placement.place import Balancer, Placement
    from router.store import MemoryStore

    metrics = Metrics()
    settings = TokenizerSettings(kind="worker", fallback="estimate", timeout=0.5)
    pool = WorkerPool([Worker("gone", "http://127.0.0.1:9")])
    calls = WorkerCalls(Placement(Balancer(pool), MemoryStore(), PinSettings(), metrics), pool)

    async with aiohttp.ClientSession() as session:
        tokenizer = make_tokenizer(settings, metrics, session, calls)
        counted = await tokenizer.count([{"role": "user", "content": "x" * 40}])
    assert counted == [4 + 12], 'ceil(len("user\\n" + 40 chars) / 4) plus the overhead'
    assert metrics.tokenizer_fallbacks._value.get() == 1
    assert "by estimate" in caplog.text
