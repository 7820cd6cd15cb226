"""A cheap deterministic tokenizer: about one token per word, same ids in every process.

A token is a word (optionally with one leading space, split every 16 characters),
a punctuation mark (optionally with one leading space), a newline, or a run of other
whitespace. Ids are CRC-32 of the token's UTF-8 bytes, so they never depend on hash
salting. A newline is always a token of its own, so text split right after a newline
tokenizes as its two halves concatenated: chat-template renderings are prefix-stable.
"""

from __future__ import annotations

import re
import sys
import zlib
from array import array
from collections.abc import Sequence

_TOKEN = re.compile(r"[ ]?\w{1,16}|[ ]?[^\w\s]|\n|[^\S\n]+")
_BIG_ENDIAN = sys.byteorder == "big"


def split_tokens(text: str) -> list[str]:
    """The token strings of `text`; joining them gives back `text`."""
    return _TOKEN.findall(text)


def token_id(piece: str) -> int:
    """The stable id (uint32) of one token string."""
    return zlib.crc32(piece.encode())


def tokenize(text: str) -> list[int]:
    """Token ids of `text`."""
    crc32 = zlib.crc32
    return [crc32(piece.encode()) for piece in _TOKEN.findall(text)]


def token_bytes(ids: Sequence[int]) -> bytes:
    """Packed little-endian uint32 ids, the input of every stable token hash."""
    packed = array("I", ids)
    if _BIG_ENDIAN:
        packed.byteswap()
    return packed.tobytes()
