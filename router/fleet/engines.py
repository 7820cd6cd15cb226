"""The inference engines the router reads load from, and how: for each engine the Prometheus
metric families that say how many requests it is running, how many wait in its queue, and how
full its KV cache is (a fraction from 0 to 1), and a parser for its `/metrics` text.

The names are the engines' own, checked against their sources (tests/fixtures/metrics/README.md
says where). A family the worker does not export reads as None, never as 0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache

from prometheus_client.parser import text_string_to_metric_families

ENGINES = ("vllm", "sglang", "tgi", "llamacpp", "custom")
LOAD_FIELDS = ("running", "waiting", "kv_usage")


class MetricsParseError(ValueError):
    """The text is not a Prometheus exposition, or a load family in it is unreadable."""


@dataclass(frozen=True, slots=True)
class MetricNames:
    """Family names for each load field, in order of preference: the first one the worker
    exports is read, the others are older or alternative spellings."""

    running: tuple[str, ...]
    waiting: tuple[str, ...]
    kv_usage: tuple[str, ...]

    def all(self) -> frozenset[str]:
        return frozenset((*self.running, *self.waiting, *self.kv_usage))


@dataclass(frozen=True, slots=True)
class LoadReading:
    """One worker's load as its engine reports it; None where the engine exports no such
    family. `running` and `waiting` are summed over label sets (data-parallel engines report
    one series each); `kv_usage` is their mean, the share of the worker's whole KV cache in use
    when its engines are the same size, as data-parallel ranks are."""

    running: float | None
    waiting: float | None
    kv_usage: float | None


_KNOWN: dict[str, MetricNames] = {
    # vllm/v1/metrics/loggers.py; gpu_cache_usage_perc is the name before 0.10 (and a
    # deprecated alias of kv_cache_usage_perc until it was removed).
    "vllm": MetricNames(
        running=("vllm:num_requests_running",),
        waiting=("vllm:num_requests_waiting",),
        kv_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    ),
    # sglang/srt/observability/metrics_collector.py (srt/metrics/collector.py before);
    # token_usage is used tokens over the KV pool's capacity.
    "sglang": MetricNames(
        running=("sglang:num_running_reqs",),
        waiting=("sglang:num_queue_reqs",),
        kv_usage=("sglang:token_usage",),
    ),
    # router/src/server.rs and backends/v3/src/{backend,queue}.rs: no KV usage family.
    "tgi": MetricNames(
        running=("tgi_batch_current_size",),
        waiting=("tgi_queue_size",),
        kv_usage=(),
    ),
    # tools/server: kv_cache_usage_ratio exists in older builds only; current ones export none.
    "llamacpp": MetricNames(
        running=("llamacpp:requests_processing",),
        waiting=("llamacpp:requests_deferred",),
        kv_usage=("llamacpp:kv_cache_usage_ratio",),
    ),
}

# Prometheus metric names: https://prometheus.io/docs/concepts/data_model/
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_SAMPLE_SUFFIXES = ("_total", "_created", "_count", "_sum", "_bucket", "_info", "_gcount", "_gsum")
_EXPOSITION_LINE = re.compile(
    r"\s*(?:#|[a-zA-Z_:][a-zA-Z0-9_:]*(?:\{.*\})?[ \t]+[-+]?(?:[0-9.]|(?i:inf|nan)))"
)


def metric_names(engine: str, custom: Mapping[str, str] | None = None) -> MetricNames:
    """The families to read for `engine`; for "custom", `custom` maps our fields (running,
    waiting, kv_usage) to the worker's family names and needs running or waiting."""
    if engine == "custom":
        return _custom_names(custom or {})
    try:
        return _KNOWN[engine]
    except KeyError:
        raise ValueError(f"unknown engine {engine!r}; expected one of {list(ENGINES)}") from None


def _custom_names(custom: Mapping[str, str]) -> MetricNames:
    unknown = sorted(set(custom) - set(LOAD_FIELDS))
    if unknown:
        raise ValueError(f"custom metrics: unknown field {unknown}; expected {list(LOAD_FIELDS)}")
    if not (custom.get("running") or custom.get("waiting")):
        raise ValueError("custom metrics: name the family for running or waiting (or both)")
    for field, name in custom.items():
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"custom metrics: {field}: {name!r} is not a Prometheus metric name")
    return MetricNames(
        **{field: (custom[field],) if custom.get(field) else () for field in LOAD_FIELDS}
    )


def parse_load(text: str, names: MetricNames) -> LoadReading:
    """Read `names` from a Prometheus text exposition.

    Only the lines of the wanted families reach the parser (a full vLLM exposition costs tens
    of milliseconds to parse, its load families well under one), so lines of other families
    are not validated. Gauges and untyped samples count, other types do not, and a sample that
    is NaN or infinite is left out. Raises MetricsParseError for text that is no exposition at
    all, for an unreadable wanted line, and for a KV usage outside 0..1.
    """
    _check_exposition(text)
    samples = _gauge_samples(_wanted_lines(text, names), names.all())
    kv_usage = _read(samples, names.kv_usage, _mean)
    if kv_usage is not None and not 0.0 <= kv_usage <= 1.0:
        raise MetricsParseError(
            f"{_first_present(samples, names.kv_usage)} reads {kv_usage}; "
            "KV usage must be a fraction from 0 to 1"
        )
    return LoadReading(
        running=_read(samples, names.running, sum),
        waiting=_read(samples, names.waiting, sum),
        kv_usage=kv_usage,
    )


def _check_exposition(text: str) -> None:
    first = text.lstrip().partition("\n")[0]
    if not first:
        raise MetricsParseError("empty metrics text: the worker exported no metrics")
    if not _EXPOSITION_LINE.match(first):
        raise MetricsParseError(f"not a Prometheus text exposition: starts with {first[:80]!r}")


@dataclass(frozen=True, slots=True)
class _LineFilter:
    """Keeps the lines that are a sample of one of the wanted names exactly (`foo` does not
    take `foo_bar`), or a HELP/TYPE comment about it or about the family it may be a suffixed
    sample of (`foo` for `foo_count`), so a wanted name that is no gauge is typed as in the
    full text. `startswith` with a tuple drops most lines cheaply; the regex checks the rest."""

    prefixes: tuple[str, ...]
    exact: re.Pattern[str]

    def keep(self, text: str) -> str:
        prefixes, exact = self.prefixes, self.exact
        kept = [
            line for line in text.split("\n") if line.startswith(prefixes) and exact.match(line)
        ]
        return "\n".join(kept) + "\n"


@lru_cache(maxsize=64)
def _line_filter(names: frozenset[str]) -> _LineFilter:
    families = names | {n.removesuffix(s) for n in names for s in _SAMPLE_SUFFIXES}
    comments = tuple(f"# {kind} {name}" for kind in ("HELP", "TYPE") for name in families)
    return _LineFilter(
        prefixes=tuple(names) + comments,
        exact=re.compile(
            rf"(?:# (?:HELP|TYPE) {_alternatives(families)}|{_alternatives(names)})(?=[ \t\r{{]|$)"
        ),
    )


def _alternatives(names: frozenset[str]) -> str:
    return "(?:" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) + ")"


def _wanted_lines(text: str, names: MetricNames) -> str:
    return _line_filter(names.all()).keep(text) if names.all() else ""


def _gauge_samples(text: str, wanted: frozenset[str]) -> dict[str, list[float]]:
    """Values of the gauge (or untyped) samples of `wanted` families, by family name."""
    found: dict[str, list[float]] = {}
    try:
        for name, value in _samples(text, wanted):
            found.setdefault(name, []).append(value)
    except ValueError as err:
        raise MetricsParseError(f"unreadable metrics line: {err}") from None
    return found


def _samples(text: str, wanted: frozenset[str]) -> Iterator[tuple[str, float]]:
    for family in text_string_to_metric_families(text):
        if family.name not in wanted or family.type not in ("gauge", "unknown"):
            continue
        for sample in family.samples:
            if math.isfinite(sample.value) and not _is_breakdown(sample.labels):
                yield family.name, float(sample.value)


def _is_breakdown(labels: Mapping[str, str]) -> bool:
    """SGLang with priority scheduling exports each queue's total under priority="" and,
    beside it, one series per priority that the total already counts."""
    return bool(labels.get("priority"))


def _read(
    samples: dict[str, list[float]],
    names: tuple[str, ...],
    combine: Callable[[list[float]], float],
) -> float | None:
    present = _first_present(samples, names)
    return None if present is None else float(combine(samples[present]))


def _first_present(samples: dict[str, list[float]], names: tuple[str, ...]) -> str | None:
    return next((name for name in names if samples.get(name)), None)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
