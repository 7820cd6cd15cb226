"""The demo's summary figures, from turns as the router reports them."""

from __future__ import annotations

from router.tooling.chatload import LoadReport, Turn


def turn(session: str, number: int, worker: str, prompt: int, cached: int, completion: int = 24):
    return Turn(session, number, 200, worker, "affinity", prompt, cached, 0.01,
                completion_tokens=completion)  # fmt: skip


def test_only_history_beyond_the_shared_system_prompt_counts_as_cached_history():
    report = LoadReport([
        # kept on one worker: the second turn finds its whole history (64 tokens) cached
        turn("kept", 1, "w1", prompt=40, cached=32),
        turn("kept", 2, "w1", prompt=74, cached=64),
        # moved: the other worker has only the shared system prompt (32 tokens)
        turn("moved", 1, "w1", prompt=40, cached=32),
        turn("moved", 2, "w2", prompt=74, cached=32),
    ])  # fmt: skip
    assert report.shared_prefix_tokens() == 32
    assert report.same_worker_share() == 0.5
    assert report.history_cached_share() == 0.5  # 32 of 32 + 0 of 32 history tokens
    assert report.cached_ratio() > 0.6, "counting any cached token would hide the move"


def test_the_last_partial_block_of_the_history_is_not_expected_in_cache():
    report = LoadReport([
        turn("s", 1, "w1", prompt=40, cached=32, completion=30),  # 70 tokens: 4 whole blocks
        turn("s", 2, "w1", prompt=80, cached=64),
    ])  # fmt: skip
    assert report.history_cached_share() == 1.0


def test_turns_after_a_failed_turn_are_left_out():
    failed = Turn("s", 2, 502, "w1", "affinity", 0, 0, 0.01, "bad gateway")
    report = LoadReport([
        turn("s", 1, "w1", prompt=40, cached=32),
        failed,
        turn("s", 3, "w2", prompt=90, cached=32),
    ])  # fmt: skip
    assert report.same_worker_share() == 0.0 and report.history_cached_share() == 0.0
