"""The failover run's figures: resume pauses from event times, the streams under way at the
kill, the router's resume counts, and the control requests' sizes and homes."""

from __future__ import annotations

import random

import pytest

from loadtests.failover import (
    ControlHomes,
    Kill,
    continuation_tokens,
    control_burst,
    control_text,
    pause_ratio,
    prompt_tokens,
    read_router_resumes,
    resume_pause,
    under_way,
    verdict,
)
from loadtests.player import Record
from router.metrics import Metrics


def record(worker: str, started: float, ended: float, events: tuple[float, ...], error: str = ""):
    return Record(0, "s", 1, started, None, ended, 200, worker, "home", "", 0, 0, error, events)


def test_the_pause_is_the_gap_from_the_last_event_before_the_kill_to_the_next():
    events = (1.0, 1.01, 1.02, 1.03, 1.50, 1.51, 1.52)
    assert resume_pause(events, at=1.035) == pytest.approx(0.47)


def test_events_the_dead_worker_sent_before_the_kill_but_read_after_it_do_not_hide_the_pause():
    events = (1.0, 1.01, 1.02, 1.031, 1.032, 1.50, 1.51)  # 1.031 and 1.032 read late
    assert resume_pause(events, at=1.025) == pytest.approx(0.468)


def test_gaps_before_the_kill_do_not_count():
    events = (1.0, 1.9, 1.91, 1.92, 2.0, 2.01)  # a long wait for the first event, then a cut
    assert resume_pause(events, at=1.95) == pytest.approx(0.08)


def test_no_pause_without_events_on_both_sides_of_the_kill():
    assert resume_pause((), at=1.0) is None
    assert resume_pause((1.1, 1.2), at=1.0) is None
    assert resume_pause((0.5, 0.9), at=1.0) is None


def test_under_way_is_the_victims_streams_with_a_head_before_the_kill_and_not_ended():
    at = 5.0
    resumed = record("sim-1", 4.0, 6.0, (4.5, 4.9, 5.4))
    cut = record("sim-1", 4.0, 5.2, (4.5, 4.9), error="stream ended before [DONE]")
    finished_before = record("sim-1", 4.0, 5.001, (4.5, 4.99))  # only its record came late
    other_worker = record("sim-0", 4.0, 6.0, (4.5, 4.9, 5.4))
    head_after = record("sim-1", 4.9, 6.0, (5.3, 5.4))  # retried before its head: not resumed
    streams = under_way([resumed, cut, finished_before, other_worker, head_after], "sim-1", at)
    assert streams == [resumed, cut]


def test_ratio_and_verdict_against_the_target():
    assert pause_ratio([0.1, 0.2, 0.3], [0.25, 0.3]) == pytest.approx(1.0)
    assert verdict(1.2) == "PASS"
    assert verdict(1.21) == "MISS"
    ratio = pause_ratio([], [0.3])
    assert ratio != ratio and verdict(ratio) == "n/a"


def test_router_resume_counts_and_pause_histogram_from_its_metrics():
    metrics = Metrics()
    metrics.resumes.labels("resumed", "reset").inc(3)
    metrics.resumes.labels("resumed", "idle").inc()
    metrics.resumes.labels("refused", "n").inc()
    for pause in (0.2, 0.3, 0.8):
        metrics.resume_pause_seconds.observe(pause)
    counted = read_router_resumes(metrics.render().decode())
    assert counted.outcomes == {"resumed": 4, "refused": 1}
    assert counted.pauses == 3
    assert counted.pause_quantile(0.5) == 0.5  # the bucket holding it, by its upper bound
    assert counted.pause_quantile(0.99) == 1.0


def test_a_control_prompt_is_as_long_as_the_continuation_it_stands_for():
    messages = [("system", "You are terse."), ("user", "Turn 1: cache token prefix?")]
    tokens = continuation_tokens(messages, "The cache holds")
    assert tokens > prompt_tokens(messages, generation_prompt=False)
    rng = random.Random(1)
    text = control_text(rng, tokens)
    assert prompt_tokens([("user", text)]) == tokens
    assert control_text(rng, tokens) != text  # fresh text each time


def test_control_sessions_are_homed_on_the_survivor_each_victim_session_continues_on():
    names = ["sim-0", "sim-1", "sim-2", "sim-3"]
    homes = ControlHomes(names, "sim-1", "t")
    homes.fill(3)
    assert set(homes.spares()) == {"sim-0", "sim-2", "sim-3"}
    for worker, sessions in homes.spares().items():
        assert len(sessions) >= 3
        assert all(homes.home(s) == worker for s in sessions)
    sessions = [f"chat-{i}" for i in range(200)]
    for session in sessions:
        survivor = homes.survivor(session)
        assert survivor != "sim-1"
        if homes.home(session) != "sim-1":
            assert survivor == homes.home(session)
    taken = homes.take("sim-2")
    assert homes.home(taken) == "sim-2" and taken not in homes.spares()["sim-2"]


def test_controls_go_where_the_router_says_each_stream_continued_else_by_the_ring():
    homes = ControlHomes(["sim-0", "sim-1", "sim-2", "sim-3"], "sim-1", "t")
    homes.fill(2)
    kill = Kill(prefills={"a": 300, "b": 40, "c": 20})
    kill.ring = {"a": "sim-2", "b": "sim-0", "c": "sim-3"}
    kill.continued_on = {"a": "sim-3", "c": "sim-1"}  # c: not a survivor, so not believed
    targets = kill.targets(homes)
    assert targets == {"a": "sim-3", "b": "sim-0", "c": "sim-3"}
    burst = control_burst("twin", kill.prefills, targets, homes, "seed")
    assert sorted(burst.intended.values()) == ["sim-0", "sim-3", "sim-3"]
    for [session] in burst.users:
        assert homes.home(session.id) == burst.intended[session.id]
        [turn] = session.turns
        assert turn.at == 0.0 and turn.max_tokens == 1
    sizes = sorted(prompt_tokens([("user", s.turns[0].users_text[0])]) for [s] in burst.users)
    assert sizes == [20, 40, 300]
