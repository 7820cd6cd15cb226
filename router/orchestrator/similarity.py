"""Scoring a session's stored vectors against a query and choosing the turns to recall. Pure:
plain values and numpy arrays in, plain values out.

Only recall imports this module (and numpy with it). Vectors are stored unit length, so
cosine similarity is one matrix-vector product over a
zero-copy view of the stored blob: brute force per session, about 0.2 ms for 1,000 vectors of
1,024 dims. The product is an `einsum`, which runs in the calling thread: a BLAS call would
start a thread pool that competes with the event loop for the cores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from router.orchestrator.history import Turn
from router.store.vectors import DIGEST_BYTES, HEADER_BYTES, VectorHeader

MAX_DIMENSIONS = 65_536


@dataclass(frozen=True, slots=True)
class Recalled:
    turn: Turn
    score: float


def as_matrix(rows: Sequence[Any]) -> np.ndarray:
    """Vectors as one float32 matrix; ValueError unless they are finite and of one size."""
    try:
        matrix = np.array(rows, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"not a list of equal-length number lists ({err})") from None
    if matrix.ndim != 2 or not 0 < matrix.shape[1] <= MAX_DIMENSIONS:
        raise ValueError(f"vectors of shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError("a vector that is not finite")
    return matrix


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (a zero row stays zero)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


def scores(blob: bytes | bytearray, header: VectorHeader, query: np.ndarray) -> np.ndarray:
    """The similarity of every stored vector to `query` (a unit float32 vector of the same
    size), oldest first."""
    size = header.record
    count = (len(blob) - HEADER_BYTES) // size
    if count <= 0:
        return np.empty(0, dtype=np.float32)
    rows = np.frombuffer(blob, dtype="<f4", count=count * size // 4, offset=HEADER_BYTES)
    vectors = rows.reshape(count, size // 4)[:, DIGEST_BYTES // 4 :]
    return np.einsum("ij,j->i", vectors, query)


def choose(
    blob: bytes | bytearray,
    header: VectorHeader,
    similarity: np.ndarray,
    candidates: Mapping[bytes, Turn],
    *,
    top_k: int,
    threshold: float,
    room: int,
) -> list[Recalled]:
    """At most `top_k` candidate turns (by digest) whose similarity reaches `threshold`, most
    similar first, each whole and all within `room` tokens; a turn that does not fit is
    passed over for a smaller, less similar one. A turn stored twice counts once."""
    above = np.flatnonzero(similarity >= threshold)
    order = above[np.argsort(-similarity[above], kind="stable")]
    chosen: list[Recalled] = []
    seen: set[bytes] = set()
    size = header.record
    for position in order.tolist():
        at = HEADER_BYTES + position * size
        digest = bytes(blob[at : at + DIGEST_BYTES])
        turn = candidates.get(digest)
        if turn is None or digest in seen or turn.tokens > room:
            continue
        seen.add(digest)
        room -= turn.tokens
        chosen.append(Recalled(turn, float(similarity[position])))
        if len(chosen) == top_k:
            break
    return chosen
