import pytest

from router.sim.cache import PrefixCache, block_hashes

BLOCK = 4


def seq(*values: int) -> list[int]:
    return list(values)


def test_only_full_blocks_are_hashed():
    assert len(block_hashes(list(range(11)), BLOCK)) == 2
    assert block_hashes([1, 2, 3], BLOCK) == []


def test_block_hash_depends_on_the_whole_prefix():
    a = block_hashes([1, 2, 3, 4, 5, 6, 7, 8], BLOCK)
    b = block_hashes([9, 2, 3, 4, 5, 6, 7, 8], BLOCK)
    assert a[0] != b[0]
    assert a[1] != b[1], "same second block after a different first block must not match"


def test_block_hashes_are_deterministic_and_prefix_stable():
    tokens = list(range(100, 140))
    assert block_hashes(tokens, BLOCK) == block_hashes(list(tokens), BLOCK)
    assert block_hashes(tokens[:20], BLOCK) == block_hashes(tokens, BLOCK)[:5]


def test_known_leading_hashes_are_reused():
    tokens = list(range(40))
    known = block_hashes(tokens[:17], BLOCK)
    assert block_hashes(tokens, BLOCK, known) == block_hashes(tokens, BLOCK)


def test_miss_then_hit_after_insert():
    cache = PrefixCache(capacity_blocks=10)
    hashes = block_hashes(list(range(12)), BLOCK)
    assert cache.match(hashes) == 0
    cache.insert(hashes)
    assert cache.match(hashes) == 3
    assert len(cache) == 3


def test_match_counts_leading_blocks_only():
    cache = PrefixCache(capacity_blocks=10)
    cache.insert(block_hashes(list(range(8)), BLOCK))
    longer = block_hashes([*range(8), 50, 51, 52, 53], BLOCK)
    assert cache.match(longer) == 2
    diverging = block_hashes([0, 1, 2, 99, 4, 5, 6, 7], BLOCK)
    assert cache.match(diverging) == 0


def test_eviction_removes_least_recently_used_sequence_first():
    cache = PrefixCache(capacity_blocks=4)
    first = block_hashes([1] * 8, BLOCK)
    second = block_hashes([2] * 8, BLOCK)
    third = block_hashes([3] * 8, BLOCK)
    cache.insert(first)
    cache.insert(second)
    cache.insert(third)
    assert cache.match(first) == 0
    assert cache.match(second) == 2
    assert cache.match(third) == 2


def test_lookup_refreshes_lru_position():
    cache = PrefixCache(capacity_blocks=4)
    first = block_hashes([1] * 8, BLOCK)
    second = block_hashes([2] * 8, BLOCK)
    cache.insert(first)
    cache.insert(second)
    assert cache.match(first) == 2
    cache.insert(block_hashes([3] * 8, BLOCK))
    assert cache.match(first) == 2
    assert cache.match(second) == 0


def test_eviction_trims_a_sequence_from_its_tail():
    cache = PrefixCache(capacity_blocks=4)
    first = block_hashes(list(range(12)), BLOCK)
    cache.insert(first)
    cache.insert(block_hashes([7] * 4, BLOCK))
    assert len(cache) == 4
    assert cache.match(first) == 3
    cache.insert(block_hashes([8] * 8, BLOCK))
    assert cache.match(first) == 2
    assert first[2] not in cache


def test_capacity_is_never_exceeded():
    cache = PrefixCache(capacity_blocks=5)
    for start in range(0, 400, 16):
        cache.insert(block_hashes(list(range(start, start + 16)), BLOCK))
        assert len(cache) <= 5
    assert len(cache) == 5


def test_sequence_longer_than_capacity_keeps_its_leading_blocks():
    cache = PrefixCache(capacity_blocks=3)
    hashes = block_hashes(list(range(40)), BLOCK)
    cache.insert(hashes)
    assert cache.match(hashes) == 3


def test_zero_capacity_caches_nothing():
    cache = PrefixCache(capacity_blocks=0)
    hashes = block_hashes(list(range(8)), BLOCK)
    cache.insert(hashes)
    assert len(cache) == 0
    assert cache.match(hashes) == 0


def test_reinserting_does_not_duplicate_blocks():
    cache = PrefixCache(capacity_blocks=10)
    hashes = block_hashes(list(range(8)), BLOCK)
    cache.insert(hashes)
    cache.insert(hashes)
    assert len(cache) == 2


def test_clear_empties_the_cache():
    cache = PrefixCache(capacity_blocks=10)
    cache.insert(block_hashes(list(range(8)), BLOCK))
    cache.clear()
    assert len(cache) == 0


def test_negative_capacity_is_rejected():
    with pytest.raises(ValueError):
        PrefixCache(capacity_blocks=-1)
