"""Token counting with real tokenizers, offline."""

from __future__ import annotations

import json

import pytest

from router.config import TokenizerSettings
from router.errors import ConfigError
from router.metrics import Metrics
from router.orchestrator.tokenizer import bpe_tokenizer, huggingface_tokenizer, make_tokenizer


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
