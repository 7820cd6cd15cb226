"""Scoring stored vectors against a query and choosing the turns to recall."""

from __future__ import annotations

import numpy as np

from router.orchestrator.history import Turn
from router.orchestrator.similarity import choose, scores, unit_rows
from router.store.vectors import VectorBatch, merge, parse_header, turn_digest


def stored(vectors: dict[str, list[float]]):
    rows = unit_rows(np.array(list(vectors.values()), dtype=np.float32))
    records = tuple(
        (i, turn_digest(name.encode()) + row.astype("<f4").tobytes())
        for i, (name, row) in enumerate(zip(vectors, rows, strict=True))
    )
    blob = merge(b"", VectorBatch("0badcafe", rows.shape[1], len(records), records), 100).blob
    return blob, parse_header(blob)


def turn(name: str, tokens: int = 10) -> Turn:
    return Turn(name.encode(), (), tokens, True)


def unit(*values: float) -> np.ndarray:
    return unit_rows(np.array([values], dtype=np.float32))[0]


VECTORS = {"near": [1, 0.1, 0], "close": [1, 0.5, 0], "far": [0, 0, 1], "opposite": [-1, 0, 0]}


def test_scores_are_cosine_similarities_in_stored_order():
    blob, header = stored(VECTORS)
    got = scores(blob, header, unit(1, 0, 0))
    expected = [1 / np.sqrt(1.01), 1 / np.sqrt(1.25), 0.0, -1.0]
    assert np.allclose(got, expected, atol=1e-6)


def test_the_most_similar_come_first_and_none_below_the_threshold():
    blob, header = stored(VECTORS)
    candidates = {turn_digest(n.encode()): turn(n) for n in VECTORS}
    similarity = scores(blob, header, unit(1, 0, 0))
    chosen = choose(blob, header, similarity, candidates, top_k=5, threshold=0.5, room=100)
    assert [r.turn.key for r in chosen] == [b"near", b"close"]
    assert chosen[0].score > chosen[1].score >= 0.5


def test_at_most_top_k_and_only_candidates_are_chosen():
    blob, header = stored(VECTORS)
    similarity = scores(blob, header, unit(1, 0, 0))
    everyone = {turn_digest(n.encode()): turn(n) for n in VECTORS}
    assert [r.turn.key for r in choose(blob, header, similarity, everyone, top_k=1,
                                       threshold=-1, room=100)] == [b"near"]  # fmt: skip
    in_window = dict(everyone)
    del in_window[turn_digest(b"near")]  # a turn still in the window is no candidate
    chosen = choose(blob, header, similarity, in_window, top_k=5, threshold=0.5, room=100)
    assert [r.turn.key for r in chosen] == [b"close"]


def test_a_turn_that_does_not_fit_the_room_is_passed_over_for_a_smaller_one():
    blob, header = stored(VECTORS)
    similarity = scores(blob, header, unit(1, 0, 0))
    candidates = {
        turn_digest(b"near"): turn("near", tokens=80),
        turn_digest(b"close"): turn("close", tokens=15),
        turn_digest(b"far"): turn("far", tokens=5),
    }
    chosen = choose(blob, header, similarity, candidates, top_k=5, threshold=-0.5, room=60)
    assert [r.turn.key for r in chosen] == [b"close", b"far"]
