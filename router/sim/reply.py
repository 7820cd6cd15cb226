"""Deterministic pseudo-text replies: one word per output token."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import blake2b
from types import MappingProxyType

from router.sim.tokens import token_bytes, token_id

_WORDS = (
    "alpha beta gamma delta kernel cache block token prefix decode prefill batch "
    "router worker session model tensor layer head vector shard queue stream chunk "
    "latency budget memory page table hash index offset window context prompt reply "
    "signal metric sample seed value state graph node edge route proxy client server "
    "request answer record frame buffer socket thread event timer clock cycle wave"
).split()
_SPACED = tuple(f" {word}" for word in _WORDS)
_IDS = MappingProxyType({piece: token_id(piece) for piece in (*_WORDS, *_SPACED)})


@dataclass(frozen=True)
class Reply:
    """The output text split per token, with each piece's token id."""

    pieces: tuple[str, ...]
    token_ids: tuple[int, ...]

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def generate_reply(
    prompt_ids: Sequence[int], seed: int, length: int, *, leading_space: bool
) -> Reply:
    """`length` words chosen by the prompt's tokens and `seed`; every piece is exactly one
    token, so tokenizing `text` yields `token_ids`. Without `leading_space` the first
    word has no space before it (chat content); with it every word does (completions)."""
    digest = blake2b(str(seed).encode(), digest_size=8)
    digest.update(token_bytes(prompt_ids))
    chooser = random.Random(int.from_bytes(digest.digest(), "little"))
    pieces = chooser.choices(_SPACED, k=length)
    if not leading_space and pieces:
        pieces[0] = pieces[0][1:]
    return Reply(pieces=tuple(pieces), token_ids=tuple(_IDS[piece] for piece in pieces))
