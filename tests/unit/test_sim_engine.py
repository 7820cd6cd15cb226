import asyncio
import time
from contextlib import AsyncExitStack

import pytest

from router.sim.engine import SimEngine
from router.sim.options import SimOptions
from router.sim.request import InvalidRequest, parse_chat
from router.sim.template import render_chat
from router.sim.tokens import tokenize

SYSTEM = {"role": "system", "content": "You are a terse assistant for cache questions."}
HISTORY = [SYSTEM, {"role": "user", "content": "Why do chat turns share a KV prefix at all?"}]


def chat(messages: list[dict], max_tokens: int = 12):
    return parse_chat({"messages": messages, "max_tokens": max_tokens}, 32)


def quiet(**overrides) -> SimEngine:
    return SimEngine(SimOptions(time_scale=0.0, **overrides))


async def admit(engine: SimEngine, request, stack: AsyncExitStack):
    """Admits `request` and keeps it running until `stack` closes."""
    return await stack.enter_async_context(engine.admission(request))


async def run_to_completion(engine: SimEngine, request):
    async with engine.admission(request) as job:
        engine.complete(job)
    return job


async def test_second_turn_hits_the_cache_for_the_whole_previous_conversation():
    engine = quiet()
    first = await run_to_completion(engine, chat(HISTORY))
    replied = [*HISTORY, {"role": "assistant", "content": first.reply.text}]
    second = await run_to_completion(
        engine, chat([*replied, {"role": "user", "content": "And then?"}])
    )
    conversation = render_chat(
        [(m["role"], m["content"]) for m in replied], add_generation_prompt=False
    )
    assert second.cached_tokens == len(tokenize(conversation)) // 16 * 16
    assert second.cached_tokens > first.prompt_tokens - 16


async def test_identical_prompt_hits_its_full_blocks_after_completion():
    engine = quiet()
    job = await run_to_completion(engine, chat(HISTORY))
    assert job.cached_tokens == 0
    again = await run_to_completion(engine, chat(HISTORY))
    assert again.cached_tokens == job.prompt_tokens // 16 * 16
    assert engine.counters.cached_tokens == again.cached_tokens


async def test_unfinished_request_leaves_the_cache_untouched():
    engine = quiet()
    async with engine.admission(chat(HISTORY)):
        pass
    assert len(engine.cache) == 0
    async with engine.admission(chat(HISTORY)) as again:
        assert again.cached_tokens == 0


async def test_admission_counts_running_until_the_request_leaves():
    engine = quiet()
    async with AsyncExitStack() as outer:
        await admit(engine, chat(HISTORY), outer)
        async with engine.admission(chat(HISTORY)):
            assert engine.running == 2
        assert engine.stats()["running"] == 1
    assert engine.running == 0


async def test_prefill_is_serialized_through_one_queue():
    engine = SimEngine(SimOptions(prefill_ms_per_token=2.0, decode_ms_per_token=0.0))
    stack = AsyncExitStack()
    prompts = [chat([{"role": "user", "content": f"q{i} " * 40}]) for i in range(3)]
    jobs = [await admit(engine, prompt, stack) for prompt in prompts]
    start = time.monotonic()
    done: list[float] = []

    async def prefill(job) -> None:
        await engine.prefill(job)
        done.append(time.monotonic() - start)

    tasks = [asyncio.create_task(prefill(job)) for job in jobs]
    await asyncio.sleep(0.01)
    assert (engine.prefill_queued, engine.running, engine.waiting) == (2, 3, 0)
    await asyncio.gather(*tasks)
    await stack.aclose()
    one = jobs[0].uncached_tokens * 0.002
    assert done[-1] >= 3 * one * 0.9
    assert done[0] < 2 * one
    assert engine.prefill_queued == 0


async def test_cancelled_prefill_leaves_the_queue_consistent():
    engine = SimEngine(SimOptions(prefill_ms_per_token=5.0))
    stack = AsyncExitStack()
    first = await admit(engine, chat(HISTORY), stack)
    second = await admit(engine, chat(HISTORY), stack)
    holder = asyncio.create_task(engine.prefill(first))
    waiter = asyncio.create_task(engine.prefill(second))
    await asyncio.sleep(0.01)
    waiter.cancel()
    holder.cancel()
    await asyncio.gather(holder, waiter, return_exceptions=True)
    assert engine.prefill_queued == 0
    await asyncio.wait_for(engine.prefill(first), timeout=5)
    await stack.aclose()


async def test_zero_time_scale_makes_prefill_and_decode_instant():
    engine = SimEngine(
        SimOptions(prefill_ms_per_token=1000.0, decode_ms_per_token=1000.0, time_scale=0.0)
    )
    start = time.monotonic()
    async with engine.admission(chat(HISTORY, max_tokens=50)) as job:
        await engine.prefill(job)
        await engine.decode(job)
    assert time.monotonic() - start < 0.05


def test_fault_draws_follow_the_error_rate():
    never, always, half = quiet(), quiet(error_rate=1.0), quiet(error_rate=0.5, seed=4)
    assert not any(never.should_fail() for _ in range(100))
    assert all(always.should_fail() for _ in range(100))
    assert 20 < sum(half.should_fail() for _ in range(100)) < 80


def test_response_ids_are_unique_and_name_the_worker():
    engine = quiet(name="w7")
    ids = {engine.next_response_id(chat=True) for _ in range(5)}
    assert len(ids) == 5
    assert all(i.startswith("chatcmpl-w7-") for i in ids)


def question(i: int):
    return chat([{"role": "user", "content": f"question {i} " * 20}])


async def test_requests_beyond_the_limit_wait_and_are_admitted_in_arrival_order():
    engine = quiet(max_running=2)
    admitted: list[int] = []
    gate = asyncio.Event()

    async def run(i: int) -> None:
        async with engine.admission(question(i)):
            admitted.append(i)
            await gate.wait()

    tasks = []
    for i in range(6):
        tasks.append(asyncio.create_task(run(i)))
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    assert (engine.running, engine.waiting) == (2, 4)
    assert admitted == [0, 1]
    gate.set()
    await asyncio.gather(*tasks)
    assert admitted == [0, 1, 2, 3, 4, 5]
    assert (engine.running, engine.waiting) == (0, 0)


async def test_cancelled_waiter_leaves_the_queue_without_running():
    engine = quiet(max_running=1)
    async with AsyncExitStack() as stack:
        await admit(engine, question(0), stack)
        waiter = asyncio.create_task(admit(engine, question(1), stack))
        await asyncio.sleep(0.01)
        assert engine.waiting == 1
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert (engine.running, engine.waiting) == (1, 0)
    assert engine.counters.prompt_tokens == len(tokenize(question(0).prompt))
    assert engine.running == 0


async def test_cancelled_running_request_frees_its_slot_and_its_blocks():
    engine = SimEngine(SimOptions(max_running=1, decode_ms_per_token=50.0))

    async def decode_forever() -> None:
        async with engine.admission(question(0)) as job:
            await engine.decode(job)

    runner = asyncio.create_task(decode_forever())
    await asyncio.sleep(0.01)
    assert (engine.running, len(engine.live_blocks) > 0) == (1, True)
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    assert (engine.running, len(engine.live_blocks)) == (0, 0)
    async with asyncio.timeout(1):
        async with engine.admission(question(1)):
            assert engine.running == 1


async def test_invalid_request_is_refused_without_waiting_for_a_slot():
    engine = quiet(max_running=1)
    too_long = parse_chat({"messages": HISTORY, "max_tokens": 200_000}, 32)
    async with engine.admission(question(0)):
        with pytest.raises(InvalidRequest):
            engine.admission(too_long)
        assert engine.waiting == 0


async def test_a_waiting_request_looks_up_the_cache_when_admitted():
    engine = quiet(max_running=1)
    async with AsyncExitStack() as stack:
        first = await admit(engine, chat(HISTORY), stack)
        later = asyncio.create_task(run_to_completion(engine, chat(HISTORY)))
        await asyncio.sleep(0.01)
        engine.complete(first)
    second = await later
    assert second.cached_tokens == first.prompt_tokens // 16 * 16


async def test_kv_usage_is_zero_on_an_idle_worker_with_a_warm_cache():
    engine = quiet()
    for i in range(3):
        await run_to_completion(engine, question(i))
    assert len(engine.cache) > 0
    assert (len(engine.live_blocks), engine.live_blocks.usage) == (0, 0.0)


def blocks(tokens: int) -> int:
    return -(-tokens // 16)


async def test_kv_usage_follows_live_requests_and_their_decoded_tokens():
    engine = quiet(block_size=16, cache_tokens=16 * 100)
    async with AsyncExitStack() as stack:
        one = await admit(engine, question(1), stack)
        assert engine.live_blocks.usage == pytest.approx(blocks(one.prompt_tokens) / 100)
        two = await admit(engine, question(2), stack)
        await engine.decode(two)
        shared = len(set(one.prompt_hashes) & set(two.prompt_hashes))
        held = blocks(one.prompt_tokens) + blocks(two.prompt_tokens + 12) - shared
        assert engine.live_blocks.usage == pytest.approx(held / 100)
    assert engine.live_blocks.usage == 0.0


async def test_live_requests_sharing_a_prompt_hold_its_full_blocks_once():
    engine = quiet(block_size=16)
    async with AsyncExitStack() as stack:
        first = await admit(engine, chat(HISTORY), stack)
        await admit(engine, chat(HISTORY), stack)
        full, partial = divmod(first.prompt_tokens, 16)
        assert full > 0 and partial > 0
        assert len(engine.live_blocks) == full + 2
