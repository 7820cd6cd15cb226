"""The simulated inference engine: admission under the batch limit, prefix-cache and live
KV-block accounting, prefill and decode timing, and the counters every endpoint reports.
One instance per app."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from router.sim.batch import BatchSlots
from router.sim.blocks import BlockHold, LiveBlocks
from router.sim.cache import PrefixCache, block_hashes
from router.sim.faults import Faults
from router.sim.options import SimOptions
from router.sim.reply import Reply, generate_reply
from router.sim.request import CompletionRequest, InvalidRequest
from router.sim.template import close_assistant_turn
from router.sim.timing import TimingModel
from router.sim.tokens import tokenize

MAX_MODEL_LEN = 131_072
_TURN_END_IDS = tuple(tokenize(close_assistant_turn("", "")))


@dataclass(slots=True)
class Counters:
    """Monotonic totals since start."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generation_tokens: int = 0
    completed: int = 0
    cancelled: int = 0
    errors: int = 0
    dropped: int = 0


@dataclass(frozen=True)
class Job:
    """One admitted request: its prompt, its cache hit, the reply it will produce (its new
    tokens), the KV blocks it holds while it runs, and the text its content starts with before
    the reply (llama.cpp's echo of a continued assistant message)."""

    prompt_ids: Sequence[int]
    prompt_hashes: Sequence[int]
    cached_tokens: int
    reply: Reply
    chat: bool
    blocks: BlockHold
    echo: str = ""

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def uncached_tokens(self) -> int:
        return len(self.prompt_ids) - self.cached_tokens

    def transcript_ids(self) -> list[int]:
        """Token ids of prompt plus reply, as the next turn of the conversation resends them."""
        tail = _TURN_END_IDS if self.chat else ()
        return [*self.prompt_ids, *self.reply.token_ids, *tail]


class SimEngine:
    """Mutable state of one simulated worker; all methods run on the event loop thread."""

    def __init__(self, opts: SimOptions) -> None:
        self.opts = opts
        self.timing = TimingModel.from_options(opts)
        self.cache = PrefixCache(opts.cache_capacity_blocks)
        self.faults: Faults = opts.faults()
        self.counters = Counters()
        self.batch = BatchSlots(opts.max_running)
        self.live_blocks = LiveBlocks(opts.block_size, opts.cache_capacity_blocks)
        self.prefill_queued = 0
        self._prefill_lock = asyncio.Lock()
        self._fault_draws = random.Random(opts.seed)
        self._issued = 0
        self.started = int(time.time())

    @property
    def running(self) -> int:
        """Admitted requests: queued for prefill, prefilling or decoding (vLLM's running)."""
        return self.batch.running

    @property
    def waiting(self) -> int:
        """Requests held by the batch limit (vLLM's waiting)."""
        return self.batch.waiting

    def next_response_id(self, chat: bool) -> str:
        self._issued += 1
        return f"{'chatcmpl' if chat else 'cmpl'}-{self.opts.name}-{self._issued}"

    def should_fail(self) -> bool:
        """Whether this request gets the injected error, drawn at `faults.error_rate`."""
        rate = self.faults.error_rate
        return rate >= 1.0 or (rate > 0.0 and self._fault_draws.random() < rate)

    def admission(self, request: CompletionRequest) -> AbstractAsyncContextManager[Job]:
        """Tokenizes and validates now (InvalidRequest before any wait); entering waits for a
        batch slot in arrival order, then looks up the prefix cache and holds the request's
        KV blocks, as vLLM's scheduler does when it admits a request. Leaving gives both
        back, however the request ended."""
        prompt_ids = tokenize(request.prompt)
        if len(prompt_ids) + request.max_tokens > MAX_MODEL_LEN:
            raise InvalidRequest(
                f"prompt ({len(prompt_ids)} tokens) plus max_tokens ({request.max_tokens}) "
                f"exceeds the model's context length {MAX_MODEL_LEN}",
                "max_tokens",
            )
        return self._admitted(request, prompt_ids)

    @asynccontextmanager
    async def _admitted(
        self, request: CompletionRequest, prompt_ids: list[int]
    ) -> AsyncIterator[Job]:
        await self.batch.acquire()
        try:
            job = self._start(request, prompt_ids)
            try:
                yield job
            finally:
                job.blocks.release()
        finally:
            self.batch.release()

    def _start(self, request: CompletionRequest, prompt_ids: list[int]) -> Job:
        hashes = block_hashes(prompt_ids, self.opts.block_size)
        cached = self.cache.match(hashes) * self.opts.block_size
        reply = generate_reply(
            prompt_ids, self.opts.seed, request.max_tokens, leading_space=not request.chat
        )
        counters = self.counters
        counters.prompt_tokens += len(prompt_ids)
        counters.cached_tokens += cached
        blocks = self.live_blocks.hold(hashes, len(prompt_ids))
        return Job(prompt_ids, hashes, cached, reply, request.chat, blocks, request.echo)

    async def prefill(self, job: Job) -> None:
        """Wait for the shared prefill resource (FIFO), then compute the uncached tokens."""
        if not (self.timing.prefill_sleeps and job.uncached_tokens):
            return
        await self._queue_for_prefill()
        try:
            await asyncio.sleep(self.timing.prefill_seconds(job.uncached_tokens))
        finally:
            self._prefill_lock.release()

    async def _queue_for_prefill(self) -> None:
        self.prefill_queued += 1
        try:
            await self._prefill_lock.acquire()
        finally:
            self.prefill_queued -= 1

    async def decode(self, job: Job) -> None:
        """The delay of the whole reply, re-reading the batch size at every step."""
        if not self.timing.decode_sleeps:
            job.blocks.add_tokens(len(job.reply.token_ids))
            return
        for _ in job.reply.token_ids:
            await self.decode_step(job)

    async def decode_step(self, job: Job) -> None:
        """One output token: its KV slot, then its delay at the current batch size."""
        job.blocks.add_tokens()
        if self.timing.decode_sleeps:
            await asyncio.sleep(self.timing.decode_step_seconds(self.running))

    def complete(self, job: Job) -> None:
        """The whole reply reached the client: keep the conversation's blocks cached."""
        self.counters.completed += 1
        self.counters.generation_tokens += len(job.reply.token_ids)
        if self.cache.capacity:
            hashes = block_hashes(job.transcript_ids(), self.opts.block_size, job.prompt_hashes)
            self.cache.insert(hashes)

    def update_faults(self, changes: dict[str, Any]) -> Faults:
        self.faults = self.faults.updated(changes)
        return self.faults

    def stats(self) -> dict[str, Any]:
        counters = self.counters
        return {
            "name": self.opts.name,
            "requests": counters.requests,
            "prompt_tokens": counters.prompt_tokens,
            "cached_tokens": counters.cached_tokens,
            "generation_tokens": counters.generation_tokens,
            "running": self.running,
            "waiting": self.waiting,
            "prefill_queued": self.prefill_queued,
            "max_running": self.batch.limit,
            "cancelled": counters.cancelled,
            "completed": counters.completed,
            "errors": counters.errors,
            "dropped": counters.dropped,
            "cache_blocks": len(self.cache),
            "cache_capacity_blocks": self.cache.capacity,
            "kv_blocks_in_use": len(self.live_blocks),
        }
