"""What each worker says about its own queue during a run, sampled on a timer.

Reads every worker's `/metrics` (vLLM's `num_requests_running`, `num_requests_waiting` and
`kv_cache_usage_perc`, or another engine's names for them, parsed by the router's own parser)
every `interval` wall seconds in a
thread of its own, so the player's event loop is not disturbed. A worker *queues* in a sample
when its waiting count is above 0: requests are held by its batch limit.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType

from router.fleet.engines import MetricsParseError, metric_names, parse_load


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    worker: str
    running: float
    waiting: float
    kv_usage: float


class QueueSampler:
    """A context manager: samples from entry to exit; `samples` holds them all."""

    def __init__(
        self, workers: Mapping[str, str], interval: float = 0.1, engine: str = "vllm"
    ) -> None:
        self._workers = dict(workers)
        self._names = metric_names(engine)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="queue-sampler", daemon=True)
        self._t0 = 0.0
        self.samples: list[Sample] = []

    def __enter__(self) -> QueueSampler:
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            for name, url in self._workers.items():
                sample = self._read(name, url)
                if sample is not None:
                    self.samples.append(sample)
            self._stop.wait(max(0.0, self._interval - (time.perf_counter() - started)))

    def _read(self, name: str, url: str) -> Sample | None:
        try:
            with urllib.request.urlopen(url + "/metrics", timeout=1.0) as resp:
                text = resp.read().decode()
            reading = parse_load(text, self._names)
        except (OSError, MetricsParseError):
            return None
        return Sample(
            time.perf_counter() - self._t0, name, reading.running or 0.0,
            reading.waiting or 0.0, reading.kv_usage or 0.0,
        )  # fmt: skip

    def queued_share(self, worker: str) -> float:
        """Share of `worker`'s samples in which requests were waiting."""
        mine = [s for s in self.samples if s.worker == worker]
        return sum(1 for s in mine if s.waiting > 0) / len(mine) if mine else float("nan")

    def peak(self, field: str) -> float:
        """The largest value of `field` (running, waiting, kv_usage) over every sample."""
        return max((getattr(s, field) for s in self.samples), default=0.0)
