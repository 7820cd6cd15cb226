"""The client of the embeddings endpoint (`history.recall.url`): OpenAI's `POST /v1/embeddings`,
as vLLM, TEI and the simulated worker serve it.

It is not a pool worker and takes no worker lease: it has its own HTTP session, bounded to
`history.recall.max_connections` connections, and every call its own total timeout (a wait
for a free connection included). Vectors come back L2-normalised as one float32 matrix, so a
cosine similarity is a dot product. Any failure is one `EmbeddingFailed` naming what went
wrong; whoever calls decides whether to retry. numpy is imported at the first answer, so a
router with recall off never loads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from router.config import RecallSettings

if TYPE_CHECKING:
    import numpy as np


class EmbeddingFailed(Exception):
    """The endpoint could not embed the texts; `reason` is `timeout` or `error`."""

    def __init__(self, message: str, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason


class EmbeddingClient:
    """One bounded HTTP session to the embeddings endpoint; `close` gives its connections
    back. Built inside the running event loop (its session binds to it)."""

    def __init__(self, settings: RecallSettings) -> None:
        self._settings = settings
        connector = aiohttp.TCPConnector(
            limit=settings.max_connections, limit_per_host=settings.max_connections,
            keepalive_timeout=30, ttl_dns_cache=10,
        )  # fmt: skip
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=settings.timeout),
        )

    def reconfigure(self, settings: RecallSettings) -> None:
        """A new URL, model or timeouts apply to the next call; the connection bound is the
        one the session was built with (it changes at the next start)."""
        self._settings = settings

    async def embed(self, texts: Sequence[str], timeout: float) -> np.ndarray:
        """One call for all `texts`: a (len(texts), dim) float32 matrix of unit rows (a zero
        vector stays zero, and so never passes a similarity threshold above 0)."""
        settings = self._settings
        if not settings.url or not settings.model:
            raise EmbeddingFailed("history.recall.url and model are not set")
        body = {"model": settings.model, "input": list(texts), "encoding_format": "float"}
        try:
            async with self._session.post(
                settings.url,
                data=orjson.dumps(body),
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError:
            raise EmbeddingFailed(
                f"the embeddings endpoint did not answer within {timeout:g}s", "timeout"
            ) from None
        except aiohttp.ClientError as err:
            raise EmbeddingFailed(f"the embeddings endpoint failed: {err!r}") from None
        if status != 200:
            raise EmbeddingFailed(f"the embeddings endpoint answered {status}: {_message(raw)}")
        from router.orchestrator import similarity  # numpy: loaded only once recall runs

        try:
            return similarity.unit_rows(similarity.as_matrix(parse_embeddings(raw, len(texts))))
        except ValueError as err:
            raise EmbeddingFailed(f"the embeddings endpoint sent unusable vectors: {err}") from None

    async def close(self) -> None:
        await self._session.close()


def parse_embeddings(raw: bytes, count: int) -> list[Any]:
    """The `data[].embedding` vectors of an OpenAI embeddings response, in `index` order."""
    try:
        document = orjson.loads(raw)
        data = document["data"]
        if not isinstance(data, list) or len(data) != count:
            raise ValueError(f"expected {count} embeddings, got {_length(data)}")
        ordered = sorted(data, key=lambda item: item.get("index", 0))
        return [item["embedding"] for item in ordered]
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as err:
        raise EmbeddingFailed(f"the embeddings endpoint sent an unusable answer: {err}") from None


def _length(value: Any) -> str:
    return str(len(value)) if isinstance(value, list) else type(value).__name__


def _message(raw: bytes) -> str:
    try:
        return str(orjson.loads(raw)["error"]["message"])[:200]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return raw[:200].decode("utf-8", "replace")
