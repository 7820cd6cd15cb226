"""KV blocks referenced by live requests: what vLLM reports as `kv_cache_usage_perc`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


class LiveBlocks:
    """The blocks admitted requests hold, against the cache's capacity.

    vLLM's usage is `1 - free / total` blocks (`BlockPool.get_usage` in
    vllm/v1/core/block_pool.py, exported through `KVCacheManager.usage`), and its free queue
    includes cached prefix blocks no request references: a warm but idle cache reads 0.
    The rule here: a request's full prompt blocks are keyed by their chained hash and counted
    once however many live requests share them (a prefix hit takes a reference on the same
    block, `BlockPool.touch`); its trailing partial prompt block and the blocks its generated
    tokens fill are its own. Requests held by the batch limit hold no blocks, since vLLM
    allocates them when the scheduler admits a request. The simulator never preempts, so
    demand beyond capacity reads as 1.0.
    """

    def __init__(self, block_size: int, capacity_blocks: int) -> None:
        self._block_size = block_size
        self._capacity = capacity_blocks
        self._shared: Counter[int] = Counter()
        self._own = 0

    def __len__(self) -> int:
        return len(self._shared) + self._own

    @property
    def usage(self) -> float:
        """Fraction of the capacity in use, within [0, 1]; 0.0 without capacity."""
        return min(1.0, len(self) / self._capacity) if self._capacity else 0.0

    def hold(self, prompt_hashes: Sequence[int], prompt_tokens: int) -> BlockHold:
        """The blocks of one admitted prompt, held until the hold is released."""
        return BlockHold(self, tuple(prompt_hashes), prompt_tokens)

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self._block_size)


class BlockHold:
    """One request's share of the live blocks; a second `release` does nothing."""

    def __init__(self, live: LiveBlocks, prompt_hashes: tuple[int, ...], tokens: int) -> None:
        self._live: LiveBlocks | None = live
        self._hashes = prompt_hashes
        self._tokens = tokens
        self._own = 0
        live._shared.update(prompt_hashes)
        self._resize()

    @property
    def tokens(self) -> int:
        """Prompt plus generated tokens so far."""
        return self._tokens

    def add_tokens(self, count: int = 1) -> None:
        """Generated tokens take room; a block is added each time the last one fills."""
        self._tokens += count
        self._resize()

    def release(self) -> None:
        live, self._live = self._live, None
        if live is None:
            return
        live._own -= self._own
        live._shared.subtract(self._hashes)
        for block_hash in self._hashes:
            if live._shared[block_hash] <= 0:
                live._shared.pop(block_hash, None)

    def _resize(self) -> None:
        live = self._live
        if live is None:
            return
        own = live._blocks_for(self._tokens) - len(self._hashes)
        live._own += own - self._own
        self._own = own
