"""`GET /v1/models` answered from the healthy workers: one bad worker never makes it an error."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from router.errors import UpstreamError
from router.fleet.workers import Worker


async def _models_of(
    session: aiohttp.ClientSession, worker: Worker, timeout: aiohttp.ClientTimeout
) -> list[dict[str, Any]]:
    async with session.get(worker.url + "/v1/models", timeout=timeout) as resp:
        if resp.status != 200:
            return []
        document = await resp.json(content_type=None)
    data = document.get("data") if isinstance(document, dict) else None
    return [m for m in data if isinstance(m, dict) and "id" in m] if isinstance(data, list) else []


async def list_models(
    session: aiohttp.ClientSession, workers: list[Worker], timeout: float
) -> dict[str, Any]:
    """The union, by model id, of what the given workers serve, each asked in parallel."""
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    results = await asyncio.gather(
        *(_models_of(session, w, client_timeout) for w in workers), return_exceptions=True
    )
    answered = [r for r in results if isinstance(r, list)]
    if not answered:
        raise UpstreamError(
            "no healthy worker answered /v1/models", worker="*", kind="models", retryable=False
        )
    merged: dict[str, dict[str, Any]] = {}
    for models in answered:
        for model in models:
            merged.setdefault(model["id"], model)
    return {"object": "list", "data": list(merged.values())}
