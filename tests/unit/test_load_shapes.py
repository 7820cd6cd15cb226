"""The benchmark's planned workloads: pure, seeded, and of the shape they claim."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

import pytest

from loadtests.multiround import MultiRound, plan_multiround
from loadtests.oracle import replay
from loadtests.report import same_placement, span
from loadtests.zipf import ZipfActivity, plan_zipf

SHAPE = MultiRound(users=8, rounds=5, qps=2.0, system_tokens=50, history_tokens=100,
                   answer_tokens=10, duration=60.0)  # fmt: skip


def test_multi_round_users_ask_every_gap_seconds_at_the_original_rate():
    users = plan_multiround(SHAPE, seed=1)
    times = sorted(t.at for u in users for s in u for t in s.turns)
    steady = [t for t in times if 10 <= t < 50]
    assert SHAPE.rate == pytest.approx(SHAPE.qps * 5 / 4)  # a joining user asks at once
    assert len(steady) / 40 == pytest.approx(SHAPE.rate, rel=0.05)
    for user in users:
        ats = [t.at for t in user[0].turns]
        assert all(b - a == pytest.approx(SHAPE.gap) for a, b in pairwise(ats))
        assert len(ats) <= SHAPE.rounds


def test_multi_round_first_questions_share_the_system_prompt_and_nothing_else():
    users = plan_multiround(SHAPE, seed=1)
    firsts = [u[0].turns[0].users_text[0] for u in users]
    prefix = firsts[0].split(". For user")[0]
    assert all(f.startswith(prefix) for f in firsts)
    assert len({f.split(". For user")[1][:40] for f in firsts}) == len(firsts)
    assert plan_multiround(SHAPE, seed=1) == users


def test_zipf_rates_fall_as_a_power_of_rank_and_add_up():
    shape = ZipfActivity(16, 1.0, 4.0, 30.0, (5, 10), 8)
    rates = shape.rates()
    assert sum(rates) == pytest.approx(4.0)
    assert rates[0] / rates[3] == pytest.approx(4.0)


def test_zipf_session_ids_do_not_depend_on_rate_or_length():
    shape = ZipfActivity(16, 1.0, 4.0, 30.0, (5, 10), 8)
    ids = {u[0].id for u in plan_zipf(shape, 3)}
    longer = {u[0].id for u in plan_zipf(replace(shape, rate=8.0, duration=60.0), 3)}
    assert ids <= longer


def test_zipf_hot_sessions_ask_most():
    shape = ZipfActivity(32, 1.0, 6.0, 120.0, (5, 10), 8)
    counts = sorted((len(u[0].turns) for u in plan_zipf(shape, 1)), reverse=True)
    assert sum(counts[:3]) > sum(counts[-16:])


def test_the_oracle_replays_scheduled_turns_in_time_order():
    users = plan_multiround(SHAPE, seed=2)
    in_order = replay(users, 2, 10_000)
    assert in_order.requests == sum(len(s.turns) for u in users for s in u)
    assert in_order.hit_ratio > 0.5 and in_order.bytes_per_token > 1


def test_placement_comparison_and_ranges():
    a = {("s", 1): "w1", ("s", 2): "w1", ("t", 1): "w2"}
    b = {("s", 1): "w1", ("s", 2): "w2"}
    assert same_placement(a, b) == 0.5
    assert span([0.5, 0.25]) == "25.0%\u201350.0%" and span([3, 3], "{:.0f}") == "3"
