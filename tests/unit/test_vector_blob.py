"""The stored form of a session's turn embeddings and the rule every store applies to it."""

from __future__ import annotations

import numpy as np

from router.store.vectors import (
    HEADER_BYTES,
    VectorBatch,
    VectorHeader,
    digests_of,
    merge,
    parse_header,
    record_bytes,
    turn_digest,
)

TAG = "0badcafe"


def record(name: str, dim: int = 4) -> bytes:
    return turn_digest(name.encode()) + np.full(dim, 0.5, dtype="<f4").tobytes()


def batch(through: int, *named: tuple[int, str], dim: int = 4, tag: str = TAG) -> VectorBatch:
    return VectorBatch(tag, dim, through, tuple((i, record(n, dim)) for i, n in named))


def stored_names(blob: bytes, *names: str) -> list[str]:
    by_digest = {turn_digest(n.encode()): n for n in names}
    header = parse_header(blob)
    assert header is not None
    return [by_digest[d] for d in digests_of(blob, header.dim)]


def test_the_header_reads_back_and_is_64_bytes():
    header = VectorHeader(1024, TAG, 1234567890, -1)
    encoded = header.encode()
    assert len(encoded) == HEADER_BYTES and encoded.endswith(b"\n")
    assert parse_header(encoded + b"records") == header
    assert parse_header(b"") is None and parse_header(b"x" * 64) is None


def test_records_append_after_the_header_and_the_watermark_moves():
    merged = merge(b"", batch(7, (3, "a"), (7, "b")), cap=100)
    assert merged.stored == 2 and merged.freed == 0
    assert merged.adding == HEADER_BYTES + 2 * record_bytes(4) == len(merged.blob)
    assert stored_names(merged.blob, "a", "b") == ["a", "b"]
    assert parse_header(merged.blob).through == 7


def test_turns_at_or_below_the_watermark_are_not_stored_twice():
    first = merge(b"", batch(7, (3, "a"), (7, "b")), cap=100).blob
    again = merge(first, batch(9, (7, "b"), (9, "c")), cap=100)
    assert again.stored == 1
    assert stored_names(again.blob, "a", "b", "c") == ["a", "b", "c"]


def test_a_batch_without_records_moves_only_the_watermark():
    first = merge(b"", batch(7, (3, "a")), cap=100).blob
    moved = merge(first, VectorBatch(TAG, 0, 12), cap=100)
    assert moved.stored == 0 and moved.adding == 0 and moved.freed == 0
    assert stored_names(moved.blob, "a") == ["a"]
    assert parse_header(moved.blob).through == 12


def test_past_the_cap_and_its_slack_the_oldest_go_and_the_generation_changes():
    blob = merge(b"", batch(7, *((i, f"t{i}") for i in range(8))), cap=8).blob
    generation = parse_header(blob).generation
    same = merge(blob, batch(8, (8, "t8")), cap=8)  # 9 records: within cap + cap/8
    assert parse_header(same.blob).generation == generation and same.freed == 0
    trimmed = merge(same.blob, batch(9, (9, "t9")), cap=8)
    names = [f"t{i}" for i in range(10)]
    assert stored_names(trimmed.blob, *names) == names[2:]
    assert trimmed.freed == 2 * record_bytes(4)
    assert parse_header(trimmed.blob).generation != generation


def test_vectors_of_another_model_or_size_are_replaced_not_mixed():
    blob = merge(b"", batch(3, (3, "a")), cap=100).blob
    other = merge(blob, batch(5, (5, "b"), tag="feedf00d"), cap=100)
    assert stored_names(other.blob, "a", "b") == ["b"]
    assert other.freed == len(blob)
    resized = merge(other.blob, batch(6, (6, "c"), dim=8, tag="feedf00d"), cap=100)
    assert parse_header(resized.blob).dim == 8
    assert stored_names(resized.blob, "c") == ["c"]
