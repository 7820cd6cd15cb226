"""Weighted round robin across tenants, with plain values."""

from __future__ import annotations

import pytest

from router.limits.fair import FairQueue


def drain(queue: FairQueue[str]) -> list[str]:
    return [queue.pop() for _ in range(len(queue))]


def test_tenants_take_turns_however_many_each_has_waiting():
    queue: FairQueue[str] = FairQueue()
    for i in range(6):
        queue.push("heavy", f"h{i}")
    queue.push("light", "l0")
    queue.push("light", "l1")
    assert drain(queue) == ["h0", "l0", "h1", "l1", "h2", "h3", "h4", "h5"]


def test_shares_weight_the_turns():
    queue: FairQueue[str] = FairQueue()
    for i in range(6):
        queue.push("gold", f"g{i}", share=2.0)
        queue.push("basic", f"b{i}", share=1.0)
    assert drain(queue)[:9] == ["g0", "b0", "g1", "g2", "b1", "g3", "g4", "b2", "g5"]


def test_a_newcomer_is_served_before_a_busy_tenants_next_turn():
    queue: FairQueue[str] = FairQueue()
    for i in range(20):
        queue.push("heavy", f"h{i}")
    for _ in range(10):
        queue.pop()
    queue.push("light", "l0")
    assert [queue.pop(), queue.pop()] == ["l0", "h10"]


def test_idle_time_earns_no_credit():
    queue: FairQueue[str] = FairQueue()
    queue.push("a", "a0")
    queue.pop()
    for i in range(50):  # b alone for a long while
        queue.push("b", f"b{i}")
        queue.pop()
    for i in range(3):
        queue.push("b", f"x{i}")
        queue.push("a", f"a{i + 1}")
    assert drain(queue) == ["a1", "x0", "a2", "x1", "a3", "x2"], "a cannot take 50 turns in a row"


def test_removed_items_leave_their_line_and_the_heaviest_line_is_known():
    queue: FairQueue[str] = FairQueue()
    for i in range(3):
        queue.push("a", f"a{i}")
    queue.push("b", "b0", share=0.5)
    queue.push("b", "b1", share=0.5)
    assert queue.heaviest() == "b", "2 waiting for a share of 0.5 is more than 3 for 1"
    assert queue.remove("b", "b1") and not queue.remove("b", "b1")
    assert queue.pop_newest("a") == "a2"
    assert len(queue) == 3 and queue.waiting("a") == 2
    assert drain(queue) == ["a0", "b0", "a1"]
    with pytest.raises(IndexError):
        queue.pop()
    assert queue.heaviest() is None


def test_pop_first_passes_over_tenants_that_may_not_go_without_losing_their_turn():
    queue: FairQueue[str] = FairQueue()
    for i in range(3):
        queue.push("heavy", f"h{i}")
    queue.push("light", "l0")
    assert queue.pop_first(lambda tenant, waiting: waiting <= 1) == "l0"
    assert queue.pop_first(lambda tenant, waiting: waiting <= 1) is None
    assert queue.pop() == "h0", "heavy kept its turn"
