import os
import subprocess
import sys
import zlib
from pathlib import Path

from router.sim.tokens import split_tokens, token_bytes, token_id, tokenize

ROOT = Path(__file__).resolve().parents[2]


def test_tokens_join_back_to_the_original_text():
    text = "Hello, world!  Tabs\tand\nnewlines — ünïcode 42."
    assert "".join(split_tokens(text)) == text


def test_roughly_one_token_per_word():
    text = "the quick brown fox jumps over the lazy dog " * 10
    assert len(tokenize(text)) == len(text.split()) + 1


def test_a_word_keeps_one_leading_space():
    assert split_tokens("say hi, you") == ["say", " hi", ",", " you"]


def test_long_words_are_split_every_16_characters():
    assert split_tokens("a" * 40) == ["a" * 16, "a" * 16, "a" * 8]


def test_ids_are_crc32_of_the_token_bytes():
    assert tokenize("hi there") == [zlib.crc32(b"hi"), zlib.crc32(b" there")]
    assert token_id(" there") == zlib.crc32(b" there")


def test_same_text_gets_same_ids_in_another_process_with_another_hash_seed():
    text = "stable ids across processes, please"
    code = f"from router.sim.tokens import tokenize; print(tokenize({text!r}))"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(tokenize(text))


def test_text_split_after_a_newline_tokenizes_like_its_halves():
    head = "<|user|>\nhello there\n<|assistant|>\n"
    for tail in ("alpha beta\n", "<|user|>\nnext", " spaced", "\n\nblank", "\t tab"):
        assert tokenize(head + tail) == tokenize(head) + tokenize(tail)


def test_empty_text_has_no_tokens():
    assert tokenize("") == []


def test_token_bytes_packs_four_little_endian_bytes_per_id():
    assert token_bytes([1, 0xFFFFFFFF]) == b"\x01\x00\x00\x00\xff\xff\xff\xff"
