import asyncio
import time

from router.sim.engine import SimEngine
from router.sim.options import SimOptions
from router.sim.request import parse_chat
from router.sim.template import render_chat
from router.sim.tokens import tokenize

SYSTEM = {"role": "system", "content": "You are a terse assistant for cache questions."}
HISTORY = [SYSTEM, {"role": "user", "content": "Why do chat turns share a KV prefix at all?"}]


def chat(messages: list[dict], max_tokens: int = 12):
    return parse_chat({"messages": messages, "max_tokens": max_tokens}, 32)


def quiet(**overrides) -> SimEngine:
    return SimEngine(SimOptions(time_scale=0.0, **overrides))


def test_second_turn_hits_the_cache_for_the_whole_previous_conversation():
    engine = quiet()
    first = engine.admit(chat(HISTORY))
    engine.complete(first)
    engine.release()
    replied = [*HISTORY, {"role": "assistant", "content": first.reply.text}]
    second = engine.admit(chat([*replied, {"role": "user", "content": "And then?"}]))
    conversation = render_chat(
        [(m["role"], m["content"]) for m in replied], add_generation_prompt=False
    )
    assert second.cached_tokens == len(tokenize(conversation)) // 16 * 16
    assert second.cached_tokens > first.prompt_tokens - 16


def test_identical_prompt_hits_its_full_blocks_after_completion():
    engine = quiet()
    job = engine.admit(chat(HISTORY))
    assert job.cached_tokens == 0
    engine.complete(job)
    again = engine.admit(chat(HISTORY))
    assert again.cached_tokens == job.prompt_tokens // 16 * 16
    assert engine.counters.cached_tokens == again.cached_tokens


def test_unfinished_request_leaves_the_cache_untouched():
    engine = quiet()
    engine.admit(chat(HISTORY))
    engine.release()
    assert len(engine.cache) == 0
    assert engine.admit(chat(HISTORY)).cached_tokens == 0


def test_admission_counts_running_until_release():
    engine = quiet()
    engine.admit(chat(HISTORY))
    engine.admit(chat(HISTORY))
    assert engine.running == 2
    engine.release()
    assert engine.stats()["running"] == 1


async def test_prefill_is_serialized_through_one_queue():
    engine = SimEngine(SimOptions(prefill_ms_per_token=2.0, decode_ms_per_token=0.0))
    jobs = [engine.admit(chat([{"role": "user", "content": f"q{i} " * 40}])) for i in range(3)]
    start = time.monotonic()
    done: list[float] = []

    async def prefill(job) -> None:
        await engine.prefill(job)
        done.append(time.monotonic() - start)

    tasks = [asyncio.create_task(prefill(job)) for job in jobs]
    await asyncio.sleep(0.01)
    assert engine.waiting == 2
    await asyncio.gather(*tasks)
    one = jobs[0].uncached_tokens * 0.002
    assert done[-1] >= 3 * one * 0.9
    assert done[0] < 2 * one
    assert engine.waiting == 0


async def test_cancelled_prefill_leaves_the_queue_consistent():
    engine = SimEngine(SimOptions(prefill_ms_per_token=5.0))
    first = engine.admit(chat(HISTORY))
    second = engine.admit(chat(HISTORY))
    holder = asyncio.create_task(engine.prefill(first))
    waiter = asyncio.create_task(engine.prefill(second))
    await asyncio.sleep(0.01)
    waiter.cancel()
    holder.cancel()
    await asyncio.gather(holder, waiter, return_exceptions=True)
    assert engine.waiting == 0
    await asyncio.wait_for(engine.prefill(first), timeout=5)


async def test_zero_time_scale_makes_prefill_and_decode_instant():
    engine = SimEngine(
        SimOptions(prefill_ms_per_token=1000.0, decode_ms_per_token=1000.0, time_scale=0.0)
    )
    job = engine.admit(chat(HISTORY, max_tokens=50))
    start = time.monotonic()
    await engine.prefill(job)
    await engine.decode(50)
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
