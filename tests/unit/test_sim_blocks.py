import pytest

from router.sim.blocks import LiveBlocks


def test_a_prompt_holds_its_full_blocks_and_its_partial_one():
    live = LiveBlocks(block_size=4, capacity_blocks=10)
    live.hold([11, 12], prompt_tokens=10)
    assert len(live) == 3
    assert live.usage == pytest.approx(0.3)


def test_shared_prompt_blocks_count_once_and_partial_blocks_per_request():
    live = LiveBlocks(block_size=4, capacity_blocks=100)
    first = live.hold([11, 12], prompt_tokens=9)
    second = live.hold([11, 12, 13], prompt_tokens=13)
    assert len(live) == 3 + 1 + 1
    first.release()
    assert len(live) == 4
    second.release()
    assert len(live) == 0


def test_generated_tokens_add_a_block_each_time_the_last_one_fills():
    live = LiveBlocks(block_size=4, capacity_blocks=100)
    hold = live.hold([11], prompt_tokens=4)
    assert len(live) == 1
    hold.add_tokens()
    assert len(live) == 2
    hold.add_tokens(3)
    assert len(live) == 2
    hold.add_tokens()
    assert (len(live), hold.tokens) == (3, 9)


def test_release_gives_back_everything_once():
    live = LiveBlocks(block_size=4, capacity_blocks=100)
    kept = live.hold([11], prompt_tokens=4)
    gone = live.hold([11], prompt_tokens=6)
    gone.add_tokens(8)
    gone.release()
    gone.release()
    gone.add_tokens(100)
    assert len(live) == 1
    kept.release()
    assert (len(live), live.usage) == (0, 0.0)


def test_usage_is_capped_at_one_and_zero_without_capacity():
    crowded = LiveBlocks(block_size=4, capacity_blocks=2)
    crowded.hold([1, 2, 3], prompt_tokens=12)
    assert crowded.usage == 1.0
    none = LiveBlocks(block_size=4, capacity_blocks=0)
    none.hold([1], prompt_tokens=4)
    assert none.usage == 0.0
