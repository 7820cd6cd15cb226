"""Prometheus view of one engine, read from its counters at scrape time.

Besides `sim_*` series, the gauges and counters a router typically scrapes from vLLM
are exposed under vLLM's names and meanings, so the simulator can stand in for a real pod:
running counts admitted requests (queued for prefill too), waiting counts only those held by
`--max-running`, and KV-cache usage counts blocks live requests hold (see `LiveBlocks`).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from router.sim.engine import SimEngine

_Series = tuple[str, str, float]


class EngineCollector(Collector):
    """Yields a fresh snapshot of the engine on every collect()."""

    def __init__(self, engine: SimEngine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self._engine
        worker = ("worker", engine.opts.name)
        model = ("model_name", engine.opts.model)
        yield from _families(CounterMetricFamily, worker, self._sim_counters())
        yield from _families(GaugeMetricFamily, worker, self._sim_gauges())
        yield from _families(CounterMetricFamily, model, self._vllm_counters())
        yield from _families(GaugeMetricFamily, model, self._vllm_gauges())

    def _sim_counters(self) -> list[_Series]:
        c = self._engine.counters
        return [
            ("sim_requests", "Completion requests received", c.requests),
            ("sim_prompt_tokens", "Prompt tokens of admitted requests", c.prompt_tokens),
            ("sim_cached_prompt_tokens", "Prompt tokens found in the cache", c.cached_tokens),
            ("sim_generation_tokens", "Output tokens of completed requests", c.generation_tokens),
            ("sim_completed_requests", "Replies fully delivered", c.completed),
            ("sim_cancelled_requests", "Requests abandoned by the client", c.cancelled),
            ("sim_error_responses", "Requests answered with an injected error", c.errors),
            ("sim_dropped_streams", "Streams broken by the drop fault", c.dropped),
        ]

    def _sim_gauges(self) -> list[_Series]:
        engine = self._engine
        return [
            ("sim_running_requests", "Requests admitted and not finished", engine.running),
            ("sim_waiting_requests", "Requests held by the batch limit", engine.waiting),
            ("sim_prefill_queued_requests", "Requests queued for prefill", engine.prefill_queued),
            ("sim_cache_blocks_used", "KV blocks resident in the cache", len(engine.cache)),
            ("sim_kv_blocks_in_use", "KV blocks held by running requests", len(engine.live_blocks)),
            ("sim_cache_capacity_blocks", "KV blocks the cache can hold", engine.cache.capacity),
        ]

    def _vllm_counters(self) -> list[_Series]:
        c = self._engine.counters
        return [
            ("vllm:prefix_cache_queries", "Prompt tokens looked up", c.prompt_tokens),
            ("vllm:prefix_cache_hits", "Prompt tokens found in the cache", c.cached_tokens),
            ("vllm:prompt_tokens", "Prefill tokens processed", c.prompt_tokens),
            ("vllm:generation_tokens", "Generation tokens processed", c.generation_tokens),
        ]

    def _vllm_gauges(self) -> list[_Series]:
        engine = self._engine
        usage = engine.live_blocks.usage
        return [
            ("vllm:num_requests_running", "Requests in the batch", engine.running),
            ("vllm:num_requests_waiting", "Requests waiting to be scheduled", engine.waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage, 1 means 100 percent", usage),
            ("vllm:gpu_cache_usage_perc", "KV-cache usage, 1 means 100 percent", usage),
        ]


def _families(
    kind: type[CounterMetricFamily | GaugeMetricFamily],
    label: tuple[str, str],
    series: list[_Series],
) -> Iterator[Metric]:
    for name, doc, value in series:
        family = kind(name, doc, labels=[label[0]])
        family.add_metric([label[1]], value)
        yield family


def build_registry(engine: SimEngine) -> CollectorRegistry:
    """A registry private to one app, so several workers can share a process."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine))
    return registry
