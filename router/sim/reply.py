"""Deterministic pseudo-text replies, generated autoregressively: one word per output token.

Each next token is a function of the seed and of every token id of the context so far (the
prompt, then the tokens generated before it), like a model decoding greedily. A 64-bit
polynomial rolling hash is folded over the context's ids once, then extended by one step per
generated token, so a 10,000-token prompt costs one pass. Because the sim's tokenizer gives
each reply piece exactly one token, generating from `prompt + first k pieces` yields exactly
pieces k, k+1, ... of the generation from `prompt`: a continuation of a cut reply is the rest
of the reply an undisturbed worker gives.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from types import MappingProxyType

from router.sim.tokens import token_id

_WORDS = (
    "alpha beta gamma delta kernel cache block token prefix decode prefill batch "
    "router worker session model tensor layer head vector shard queue stream chunk "
    "latency budget memory page table hash index offset window context prompt reply "
    "signal metric sample seed value state graph node edge route proxy client server "
    "request answer record frame buffer socket thread event timer clock cycle wave"
).split()
_SPACED = tuple(f" {word}" for word in _WORDS)
_IDS = MappingProxyType({piece: token_id(piece) for piece in (*_WORDS, *_SPACED)})
_NEWLINE_ID = token_id("\n")
_MASK = (1 << 64) - 1
_K = 0x9E3779B97F4A7C15  # odd multiplier of the rolling hash


@dataclass(frozen=True)
class Reply:
    """The output text split per token, with each piece's token id."""

    pieces: tuple[str, ...]
    token_ids: tuple[int, ...]

    @property
    def text(self) -> str:
        return "".join(self.pieces)


class Decoder:
    """The generation state of one context: its rolling hash and whether it ends a line.

    `h = (h * K + id + 1) mod 2**64`, starting from a 64-bit digest of the seed, folded over
    the context's token ids; the next word is the splitmix64 finalizer of `h`, modulo the
    word count. Spacing follows the context too, never a position in the reply: without
    `leading_space` (chat) a word that starts a line, that is follows a "\\n" token, has no
    space before it and every other word has one; with `leading_space` (completions) every
    word has one."""

    __slots__ = ("_h", "_line_start", "_spaced")

    def __init__(self, context_ids: Sequence[int], seed: int, *, leading_space: bool) -> None:
        self._h = _seed_key(seed)
        self._spaced = leading_space
        self._line_start = False
        self.extend(context_ids)

    def extend(self, ids: Iterable[int]) -> None:
        """Appends token ids to the context."""
        h = self._h
        last = None
        for last in ids:
            h = (h * _K + last + 1) & _MASK
        self._h = h
        if last is not None:
            self._line_start = last == _NEWLINE_ID

    def next_piece(self) -> tuple[str, int]:
        """The next token (text, id), appended to the context."""
        index = _finalize(self._h) % len(_WORDS)
        piece = _WORDS[index] if self._line_start and not self._spaced else _SPACED[index]
        ident = _IDS[piece]
        self.extend((ident,))
        return piece, ident


def generate_reply(
    prompt_ids: Sequence[int], seed: int, length: int, *, leading_space: bool
) -> Reply:
    """`length` tokens decoded after `prompt_ids` with `seed` (see `Decoder`); every piece is
    exactly one token, so tokenizing `text` yields `token_ids`. A chat prompt ends with the
    template's newline, so a chat reply's first word has no space and the later ones have one;
    a chat prompt ending inside an open assistant turn continues with spaced words."""
    decoder = Decoder(prompt_ids, seed, leading_space=leading_space)
    pieces: list[str] = []
    ids: list[int] = []
    for _ in range(length):
        piece, ident = decoder.next_piece()
        pieces.append(piece)
        ids.append(ident)
    return Reply(pieces=tuple(pieces), token_ids=tuple(ids))


def _seed_key(seed: int) -> int:
    """A 64-bit digest of any integer seed, the same in every process."""
    digest = blake2b(str(seed).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _finalize(h: int) -> int:
    """splitmix64's finalizer: every bit of `h` moves every bit of the result."""
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK
    return h ^ (h >> 31)
