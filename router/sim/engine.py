"""The simulated inference engine: admission, prefix-cache accounting, prefill and decode
timing, and the counters every endpoint reports. One instance per app."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
    """One admitted request: its prompt, its cache hit and the reply it will produce."""

    prompt_ids: Sequence[int]
    prompt_hashes: Sequence[int]
    cached_tokens: int
    reply: Reply
    chat: bool

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
        self.running = 0
        self.waiting = 0
        self._prefill_lock = asyncio.Lock()
        self._fault_draws = random.Random(opts.seed)
        self._issued = 0
        self.started = int(time.time())

    def next_response_id(self, chat: bool) -> str:
        self._issued += 1
        return f"{'chatcmpl' if chat else 'cmpl'}-{self.opts.name}-{self._issued}"

    def should_fail(self) -> bool:
        """Whether this request gets the injected error, drawn at `faults.error_rate`."""
        rate = self.faults.error_rate
        return rate >= 1.0 or (rate > 0.0 and self._fault_draws.random() < rate)

    def admit(self, request: CompletionRequest) -> Job:
        """Tokenize, look up the prefix cache and count the request as running."""
        prompt_ids = tokenize(request.prompt)
        if len(prompt_ids) + request.max_tokens > MAX_MODEL_LEN:
            raise InvalidRequest(
                f"prompt ({len(prompt_ids)} tokens) plus max_tokens ({request.max_tokens}) "
                f"exceeds the model's context length {MAX_MODEL_LEN}",
                "max_tokens",
            )
        hashes = block_hashes(prompt_ids, self.opts.block_size)
        cached = self.cache.match(hashes) * self.opts.block_size
        reply = generate_reply(
            prompt_ids, self.opts.seed, request.max_tokens, leading_space=not request.chat
        )
        counters = self.counters
        counters.prompt_tokens += len(prompt_ids)
        counters.cached_tokens += cached
        self.running += 1
        return Job(prompt_ids, hashes, cached, reply, request.chat)

    def release(self) -> None:
        """The admitted request stopped running, however it ended."""
        self.running -= 1

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
        self.waiting += 1
        try:
            await self._prefill_lock.acquire()
        finally:
            self.waiting -= 1

    async def decode(self, tokens: int) -> None:
        """The delay of `tokens` output tokens, re-reading the batch size at every step."""
        if self.timing.decode_sleeps:
            for _ in range(tokens):
                await self.decode_step()

    async def decode_step(self) -> None:
        """The delay of one output token at the current batch size."""
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
            "cancelled": counters.cancelled,
            "completed": counters.completed,
            "errors": counters.errors,
            "dropped": counters.dropped,
            "cache_blocks": len(self.cache),
            "cache_capacity_blocks": self.cache.capacity,
        }
