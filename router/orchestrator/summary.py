"""Summarised memory: fold pruned turns into a running summary, in the background.

The request path never waits for a summary: it uses the last one stored. One summary job runs
per session at a time; a job asks the configured model through the router's own workers and
stores its answer only if no newer summary got there first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import aiohttp
import orjson

from router.config import SummarySettings
from router.metrics import Metrics
from router.orchestrator.history import Message, Summary, Turn, encode_summary
from router.orchestrator.tokenizer import Tokenizer, message_text
from router.placement.calls import WorkerCalls
from router.store import SessionStore

log = logging.getLogger("kvrouter.summary")


def summary_request(
    settings: SummarySettings, model: str, previous: Summary | None, turns: Sequence[Turn]
) -> dict[str, object]:
    """The chat completion that folds `turns` into `previous`."""
    lines = [f"Summary so far: {previous.text}"] if previous else []
    lines += [message_text(m) for turn in turns for m in turn.messages]
    messages: list[Message] = [
        {"role": "system", "content": settings.instruction},
        {"role": "user", "content": "\n\n".join(lines)},
    ]
    return {
        "model": settings.model or model,
        "messages": messages,
        "max_tokens": settings.max_tokens,
        "stream": False,
    }


class Summarizer:
    """Owns the summary tasks; `close` cancels them."""

    def __init__(
        self,
        settings: SummarySettings,
        store: SessionStore,
        session: aiohttp.ClientSession,
        calls: WorkerCalls,
        tokenizer: Tokenizer,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._store = store
        self._session = session
        self._calls = calls
        self._tokenizer = tokenizer
        self._metrics = metrics
        self._running: dict[tuple[str, str], asyncio.Task[None]] = {}

    def reconfigure(self, settings: SummarySettings) -> None:
        self._settings = settings

    def schedule(
        self,
        tenant: str,
        session: str,
        model: str,
        previous: Summary | None,
        dropped: Sequence[Turn],
    ) -> bool:
        """Start folding `dropped` unless disabled or a job for the session is running."""
        key = (tenant, session)
        if not self._settings.enabled or not dropped or key in self._running:
            return False
        body = summary_request(self._settings, model, previous, dropped)
        through = dropped[-1].last_index
        task = asyncio.create_task(self._summarise(tenant, session, body, through))
        self._running[key] = task
        task.add_done_callback(lambda _: self._running.pop(key, None))
        return True

    async def _summarise(
        self, tenant: str, session: str, body: dict[str, object], through: int
    ) -> None:
        try:
            text = await self._ask(body)
            tokens = (await self._tokenizer.count([Summary(text, 0, 0).message()]))[0]
            with self._metrics.store_call("summary", self._store.name):
                await self._store.set_summary(
                    tenant, session, encode_summary(text, tokens), through
                )
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self._metrics.summaries.labels("failed").inc()
            log.warning("summary of session %r failed: %s", session, err or type(err).__name__)
            return
        self._metrics.summaries.labels("made").inc()

    async def _ask(self, body: dict[str, object]) -> str:
        timeout = aiohttp.ClientTimeout(total=self._settings.timeout)
        async with self._calls.worker() as worker, self._session.post(
            worker.url + "/v1/chat/completions",
            data=orjson.dumps(body),
            headers={"Content-Type": "application/json"},
            timeout=timeout,
        ) as resp:
            document = await resp.json(content_type=None)
            if resp.status != 200:
                raise RuntimeError(f"worker {worker.name} answered {resp.status}")
        text = document["choices"][0]["message"]["content"]
        if not isinstance(text, str) or not text.strip():
            raise RuntimeError(f"worker {worker.name} gave an empty summary")
        return text.strip()

    async def close(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
