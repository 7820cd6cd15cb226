import asyncio
from contextlib import AsyncExitStack

from router.sim.engine import SimEngine
from router.sim.metrics import build_registry
from router.sim.options import SimOptions
from router.sim.request import parse_chat

MODEL = {"model_name": "sim-model"}


def question(i: int):
    return parse_chat({"messages": [{"role": "user", "content": f"question {i} " * 20}]}, 8)


def vllm_gauges(engine: SimEngine) -> tuple[float | None, ...]:
    registry = build_registry(engine)
    return tuple(
        registry.get_sample_value(f"vllm:{name}", MODEL)
        for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc")
    )


async def test_requests_queued_for_prefill_count_as_running_not_waiting():
    engine = SimEngine(SimOptions(max_running=2, prefill_ms_per_token=50.0))
    async with AsyncExitStack() as stack:
        jobs = [await stack.enter_async_context(engine.admission(question(i))) for i in (0, 1)]
        prefills = [asyncio.create_task(engine.prefill(job)) for job in jobs]
        queued = asyncio.create_task(stack.enter_async_context(engine.admission(question(2))))
        await asyncio.sleep(0.01)
        assert engine.prefill_queued == 1
        running, waiting, usage = vllm_gauges(engine)
        assert (running, waiting) == (2.0, 1.0)
        assert usage is not None and usage > 0.0
        for task in (*prefills, queued):
            task.cancel()
        await asyncio.gather(*prefills, queued, return_exceptions=True)
    assert vllm_gauges(engine) == (0.0, 0.0, 0.0)


async def test_kv_usage_reads_zero_on_an_idle_worker_with_a_warm_cache():
    engine = SimEngine(SimOptions(time_scale=0.0))
    for i in range(4):
        async with engine.admission(question(i)) as job:
            engine.complete(job)
    registry = build_registry(engine)
    assert registry.get_sample_value("sim_cache_blocks_used", {"worker": "sim"}) > 0
    assert vllm_gauges(engine) == (0.0, 0.0, 0.0)
    assert registry.get_sample_value("vllm:gpu_cache_usage_perc", MODEL) == 0.0
