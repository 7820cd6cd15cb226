"""How a session's turn embeddings are stored: one append-only blob per session.

The blob is a 64-byte ASCII header, then fixed-size records: a turn's 16-byte digest and its
vector (`dim` little-endian float32). One blob means one read (a Redis GET, or only its new
tail) and a zero-copy matrix view on it. The header names the vector size and the embedding
model (a tag), a generation that changes whenever records are removed or replaced (so a reader
holding an earlier copy knows whether what it has is still a prefix of the blob), and the
entry index through which pruned turns were sent to be embedded (the embedder's watermark:
turns up to it are not sent again, whether their embedding landed or failed).

    kvrv1 <dim:6> <tag:8> <generation:10> <through:20><spaces>\\n

Records are kept oldest first and capped per session: past cap + cap/8 the oldest are dropped
down to the cap, so the copy a trim costs is paid once per cap/8 writes. `merge` is the rule
both stores apply (the Redis store in a Lua script of the same shape).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

from router.store.keys import trim_slack

HEADER_BYTES = 64
DIGEST_BYTES = 16
MAGIC = b"kvrv1 "
GENERATIONS = 10**10


def record_bytes(dim: int) -> int:
    return DIGEST_BYTES + 4 * dim


def turn_digest(turn_key: bytes) -> bytes:
    """The 16 bytes that name a turn in its records (a digest of its stored key)."""
    return hashlib.blake2b(turn_key, digest_size=DIGEST_BYTES).digest()


def model_tag(model: str) -> str:
    """8 hex digits naming the embedding model, so vectors of another model are never mixed."""
    return hashlib.blake2b(model.encode(), digest_size=4).hexdigest()


@dataclass(frozen=True, slots=True)
class VectorHeader:
    dim: int
    tag: str
    generation: int
    through: int

    def encode(self) -> bytes:
        text = b"%b%06d %b %010d %020d" % (
            MAGIC, self.dim, self.tag.encode(), self.generation, self.through
        )
        return text.ljust(HEADER_BYTES - 1) + b"\n"

    @property
    def record(self) -> int:
        return record_bytes(self.dim)


def parse_header(blob: bytes) -> VectorHeader | None:
    """The header of a stored blob; None for no (or no readable) blob."""
    if len(blob) < HEADER_BYTES or not blob.startswith(MAGIC):
        return None
    try:
        dim, tag, generation, through = blob[len(MAGIC) : HEADER_BYTES].split()
        return VectorHeader(int(dim), tag.decode(), int(generation), int(through))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class VectorBatch:
    """Embeddings to store for one session: `records` are (the last entry index of the
    turn, its record), in index order; `through` is the watermark after them (it also covers
    turns whose embedding failed). A batch without records only moves the watermark."""

    tag: str
    dim: int
    through: int
    records: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class StoredVectors:
    """A session's vector blob as read: `data` is the blob from byte `start` on (0: all of
    it, header included; else only what was appended after a copy the reader holds, whose
    header is `head`)."""

    head: bytes = b""
    data: bytes = b""
    start: int = 0

    @property
    def header(self) -> VectorHeader | None:
        return parse_header(self.head)


@dataclass(frozen=True, slots=True)
class Merged:
    blob: bytes
    adding: int
    freed: int
    stored: int  # records appended


def merge(blob: bytes, batch: VectorBatch, cap: int) -> Merged:
    """`blob` with `batch` appended: records at or below the stored watermark are skipped (an
    embedder elsewhere got there first), vectors of another model or size are replaced, and
    past cap + slack the oldest records are dropped down to `cap`."""
    header = parse_header(blob)
    if header is not None and not batch.records:  # only the watermark moves
        batch = VectorBatch(header.tag, header.dim, batch.through)
    size = record_bytes(batch.dim)
    fresh = header is None or header.dim != batch.dim or header.tag != batch.tag
    if header is None or fresh:
        generation, through, count, freed = _new_generation(), -1, 0, len(blob)
    else:
        generation, through = header.generation, header.through
        count, freed = (len(blob) - HEADER_BYTES) // size, 0
    take = [record for index, record in batch.records if index > through]
    drop = count + len(take) - cap if count + len(take) > cap + trim_slack(cap) else 0
    old = min(drop, count)
    take = take[drop - old :]
    freed += old * size
    adding = len(take) * size + (HEADER_BYTES if fresh else 0)
    if drop:
        generation = (generation + 1) % GENERATIONS
    head = VectorHeader(batch.dim, batch.tag, generation, max(through, batch.through)).encode()
    body = b"" if fresh else blob[HEADER_BYTES + old * size :]
    return Merged(b"".join((head, body, *take)), adding, freed, len(take))


def _new_generation() -> int:
    return time.time_ns() // 1000 % GENERATIONS


def digests_of(blob: bytes, dim: int) -> Sequence[bytes]:
    """The turn digests of every record in a whole blob, oldest first."""
    size = record_bytes(dim)
    return [blob[at : at + DIGEST_BYTES] for at in range(HEADER_BYTES, len(blob), size)]
