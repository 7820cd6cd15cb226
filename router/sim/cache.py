"""Prefix KV cache with chained block hashes and LRU eviction, like vLLM's prefix caching."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from hashlib import blake2b

from router.sim.tokens import token_bytes

_ID_BYTES = 4


def block_hashes(token_ids: Sequence[int], block_size: int, known: Sequence[int] = ()) -> list[int]:
    """Hashes of the full blocks of `token_ids`; block i's hash covers blocks 0..i.

    Chaining makes a block match only when the whole prefix before it matches too.
    The trailing partial block is never hashed. `known` may hold already computed
    hashes of leading blocks of the same tokens; they are reused, not recomputed.
    """
    packed = token_bytes(token_ids)
    step = block_size * _ID_BYTES
    hashes = list(known)
    previous = hashes[-1].to_bytes(8, "little") if hashes else b""
    for start in range(len(hashes) * step, len(token_ids) // block_size * step, step):
        previous = blake2b(previous + packed[start : start + step], digest_size=8).digest()
        hashes.append(int.from_bytes(previous, "little"))
    return hashes


class PrefixCache:
    """The set of resident block hashes, bounded in blocks and evicted least-recent first.

    Blocks of one sequence are touched tail-first, so within a sequence the tail is
    least recent: eviction trims a cached prefix from its end instead of cutting off
    its first block and orphaning the rest.
    """

    def __init__(self, capacity_blocks: int) -> None:
        if capacity_blocks < 0:
            raise ValueError("capacity_blocks must be >= 0")
        self._capacity = capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._blocks

    def match(self, hashes: Sequence[int]) -> int:
        """How many leading `hashes` are resident; those blocks become most recent."""
        blocks = self._blocks
        hits = 0
        for block_hash in hashes:
            if block_hash not in blocks:
                break
            hits += 1
        for block_hash in reversed(hashes[:hits]):
            blocks.move_to_end(block_hash)
        return hits

    def insert(self, hashes: Sequence[int]) -> None:
        """Make every block of one sequence resident (or refresh it), evicting as needed.

        A sequence longer than the capacity keeps its leading blocks.
        """
        blocks = self._blocks
        for block_hash in reversed(hashes):
            if block_hash in blocks:
                blocks.move_to_end(block_hash)
                continue
            if self._capacity == 0:
                return
            if len(blocks) >= self._capacity:
                blocks.popitem(last=False)
            blocks[block_hash] = None

    def clear(self) -> None:
        self._blocks.clear()
