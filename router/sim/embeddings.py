"""`POST /v1/embeddings`: OpenAI-compatible embeddings computed from the text alone.

A text's features are its lower-cased words and each pair of adjacent words (common English
function words left out); each feature adds +1 or -1 to one of `dimensions` coordinates,
both chosen by a stable hash of the feature, and the vector is scaled to unit length. So the
same text always gets the same vector in every process, texts that share words and phrases
score high (cosine similarity), and texts that share none score near 0. `dimensions` is the
request's (as OpenAI's API takes it), else 256.
"""

from __future__ import annotations

import base64
import math
import re
import sys
from array import array
from hashlib import blake2b
from itertools import pairwise
from typing import Any

from aiohttp import web

from router.sim.appkeys import ENGINE
from router.sim.request import InvalidRequest, decode_json
from router.sim.responses import error_response, json_response
from router.sim.tokens import tokenize
from router.sim.validation import optional

DEFAULT_DIMENSIONS = 256
MAX_DIMENSIONS = 4096
MAX_INPUTS = 2048
_WORD = re.compile(r"\w+")
STOPWORDS = frozenset(
    "a an and are as at be by did do does for from had has have how i in is it its me my of "
    "on or our so that the their then there these this to was we were what when where which "
    "who why will with you your".split()
)


def features(text: str) -> list[str]:
    """The words of `text` (function words left out) and each pair of adjacent ones."""
    words = [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]
    return words + [f"{a} {b}" for a, b in pairwise(words)]


def embed_text(text: str, dimensions: int) -> list[float]:
    """The unit vector of `text` (all zeros for a text without features)."""
    vector = [0.0] * dimensions
    for feature in features(text):
        h = int.from_bytes(blake2b(feature.encode(), digest_size=8).digest(), "little")
        vector[(h >> 1) % dimensions] += 1.0 if h & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm else vector


def parse_inputs(body: dict[str, Any]) -> list[str]:
    value = body.get("input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidRequest("'input' must be a string or a non-empty array of strings", "input")
    if len(texts) > MAX_INPUTS:
        raise InvalidRequest(f"'input' holds {len(texts)} texts, over {MAX_INPUTS}", "input")
    return texts


def parse_dimensions(body: dict[str, Any]) -> int:
    dimensions = optional(body, "dimensions", int, default=DEFAULT_DIMENSIONS)
    if isinstance(dimensions, bool) or not 1 <= dimensions <= MAX_DIMENSIONS:
        raise InvalidRequest(
            f"'dimensions' must be an integer from 1 to {MAX_DIMENSIONS}", "dimensions"
        )
    return dimensions


def parse_format(body: dict[str, Any]) -> str:
    encoding = optional(body, "encoding_format", str, default="float")
    if encoding not in ("float", "base64"):
        raise InvalidRequest("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    return encoding


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    """As OpenAI sends it: the floats, or base64 of little-endian float32."""
    if encoding == "float":
        return vector
    packed = array("f", vector)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


async def embeddings(request: web.Request) -> web.Response:
    try:
        body = decode_json(await request.read())
        texts = parse_inputs(body)
        dim = parse_dimensions(body)
        encoding = parse_format(body)
        model = optional(body, "model", str, default=request.app[ENGINE].opts.model)
    except InvalidRequest as exc:
        return error_response(400, str(exc), exc.param)
    data = [
        {"object": "embedding", "index": i, "embedding": _encoded(embed_text(t, dim), encoding)}
        for i, t in enumerate(texts)
    ]
    tokens = sum(len(tokenize(t)) for t in texts)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return json_response({"object": "list", "data": data, "model": model, "usage": usage})
