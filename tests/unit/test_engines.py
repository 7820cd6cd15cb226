"""Engine metric names and the `/metrics` parser, against real (or source-built) expositions in
tests/fixtures/metrics (README.md there says where each comes from)."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from router.config import EngineName
from router.fleet import engines
from router.fleet.engines import (
    ENGINES,
    LoadReading,
    MetricNames,
    MetricsParseError,
    metric_names,
    parse_load,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "metrics"

# What each fixture holds, read off the files: vllm.txt has two data-parallel engines
# (running 5 + 3, waiting 2 + 1, KV 0.61 and 0.35), and vllm:num_requests_waiting_by_reason
# beside them, which must not be added in.
EXPECTED = {
    "vllm": LoadReading(running=8.0, waiting=3.0, kv_usage=pytest.approx(0.48)),
    "sglang": LoadReading(running=162.0, waiting=2826.0, kv_usage=0.28),
    "tgi": LoadReading(running=4.0, waiting=7.0, kv_usage=None),
    "llamacpp": LoadReading(running=0.0, waiting=0.0, kv_usage=None),
}


def fixture(engine: str) -> str:
    return (FIXTURES / f"{engine}.txt").read_text()


def parse_unfiltered(text: str, names: MetricNames, monkeypatch: pytest.MonkeyPatch):
    """parse_load with every line handed to the parser."""
    with monkeypatch.context() as patch:
        patch.setattr(engines, "_wanted_lines", lambda text, names: text)
        return parse_load(text, names)


@pytest.mark.parametrize("engine", sorted(EXPECTED))
def test_each_fixture_reads_the_values_it_holds(engine):
    assert parse_load(fixture(engine), metric_names(engine)) == EXPECTED[engine]


@pytest.mark.parametrize("engine", sorted(EXPECTED))
def test_reading_only_the_load_lines_gives_what_the_whole_text_gives(engine, monkeypatch):
    text, names = fixture(engine), metric_names(engine)
    assert parse_load(text, names) == parse_unfiltered(text, names, monkeypatch)


def test_the_line_filter_keeps_types_of_suffixed_samples_and_drops_lookalikes(monkeypatch):
    text = (
        '# TYPE q histogram\nq_bucket{le="+Inf"} 4\nq_count 4\nq_sum 9\n'
        "# TYPE r gauge\nr 2\n# TYPE r_total counter\nr_total 40\nr_extra 7\n"
    )
    names = MetricNames(running=("r",), waiting=("q_count",), kv_usage=())
    reading = parse_load(text, names)
    assert reading == LoadReading(running=2.0, waiting=None, kv_usage=None)
    assert reading == parse_unfiltered(text, names, monkeypatch)


def test_label_sets_are_summed_and_kv_usage_averaged():
    text = "\n".join(
        [
            "# TYPE vllm:num_requests_running gauge",
            'vllm:num_requests_running{engine="0",model_name="m"} 4.0',
            'vllm:num_requests_running{engine="1",model_name="m"} 1.0',
            'vllm:num_requests_running{engine="2",model_name="m"} 2.0',
            "# TYPE vllm:kv_cache_usage_perc gauge",
            'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.9',
            'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.3',
            'vllm:kv_cache_usage_perc{engine="2",model_name="m"} 0.0',
        ]
    )
    reading = parse_load(text, metric_names("vllm"))
    assert reading.running == 7.0 and reading.waiting is None
    assert reading.kv_usage == pytest.approx(0.4)


# vLLM before 0.10 (vllm/v1/metrics/loggers.py at a6f0308c): the KV gauge's older name only.
OLD_VLLM = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 0.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.25
"""


def test_older_vllm_kv_name_is_read_when_the_current_one_is_absent():
    reading = parse_load(OLD_VLLM, metric_names("vllm"))
    assert reading == LoadReading(running=2.0, waiting=0.0, kv_usage=0.25)


def test_current_vllm_kv_name_wins_over_the_older_one():
    both = OLD_VLLM + (
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.75\n'
    )
    assert parse_load(both, metric_names("vllm")).kv_usage == 0.75


def test_older_llamacpp_kv_ratio_is_read():
    text = (
        "# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.\n"
        "# TYPE llamacpp:kv_cache_usage_ratio gauge\nllamacpp:kv_cache_usage_ratio 0.125\n"
    )
    assert parse_load(text, metric_names("llamacpp")).kv_usage == 0.125


def test_custom_names_are_read_and_unnamed_fields_are_none():
    names = metric_names("custom", {"running": "llamacpp:requests_processing"})
    assert names == MetricNames(running=("llamacpp:requests_processing",), waiting=(), kv_usage=())
    reading = parse_load(fixture("llamacpp"), names)
    assert reading == LoadReading(running=0.0, waiting=None, kv_usage=None)


def test_custom_names_can_point_at_any_gauge():
    custom = {"running": "tgi_batch_current_max_tokens", "kv_usage": "sglang:token_usage"}
    text = fixture("tgi") + fixture("sglang")
    reading = parse_load(text, metric_names("custom", custom))
    assert reading == LoadReading(running=9472.0, waiting=None, kv_usage=0.28)


def test_missing_families_read_as_none_not_zero():
    reading = parse_load(fixture("tgi"), metric_names("vllm"))
    assert reading == LoadReading(running=None, waiting=None, kv_usage=None)


@pytest.mark.parametrize(
    "text",
    [
        "# TYPE tgi_queue_size counter\ntgi_queue_size 5\n",
        '# TYPE tgi_queue_size summary\ntgi_queue_size{quantile="0.5"} 5\ntgi_queue_size_count 2\n',
    ],
)
def test_a_load_name_exported_as_another_type_is_not_read(text):
    assert parse_load(text, metric_names("tgi")).waiting is None


def test_the_parser_is_handed_only_the_load_families_lines():
    kept = engines._wanted_lines(fixture("vllm"), metric_names("vllm")).splitlines()
    # HELP, TYPE and two samples (one per engine) for each of the three load families
    assert len(kept) == 12
    assert not [line for line in kept if "_by_reason" in line]


def test_nan_samples_are_left_out():
    text = "\n".join(
        [
            "# TYPE vllm:num_requests_running gauge",
            'vllm:num_requests_running{engine="0",model_name="m"} NaN',
            'vllm:num_requests_running{engine="1",model_name="m"} 2.0',
            "# TYPE vllm:kv_cache_usage_perc gauge",
            'vllm:kv_cache_usage_perc{engine="0",model_name="m"} NaN',
        ]
    )
    reading = parse_load(text, metric_names("vllm"))
    assert reading == LoadReading(running=2.0, waiting=None, kv_usage=None)


def test_untyped_samples_count():
    assert parse_load("tgi_queue_size 5\n", metric_names("tgi")).waiting == 5.0


def test_sglang_priority_breakdowns_are_not_added_to_the_total():
    # With priority scheduling SGLang exports the total under priority="" and one series per
    # priority beside it (sglang/srt/observability/metrics_collector.py).
    text = "\n".join(
        [
            "# TYPE sglang:num_queue_reqs gauge",
            'sglang:num_queue_reqs{model_name="m",priority="",tp_rank="0"} 6.0',
            'sglang:num_queue_reqs{model_name="m",priority="0",tp_rank="0"} 4.0',
            'sglang:num_queue_reqs{model_name="m",priority="1",tp_rank="0"} 2.0',
        ]
    )
    assert parse_load(text, metric_names("sglang")).waiting == 6.0


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("<html><body>502 Bad Gateway</body></html>", "not a Prometheus text exposition"),
        ('{"error": "metrics disabled"}', "not a Prometheus text exposition"),
        ("Internal Server Error", "not a Prometheus text exposition"),
        ("Error: metrics are off\n", "not a Prometheus text exposition"),
        ("  \n\n", "empty metrics text"),
        ("# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running many\n", "unreadable"),
        ('vllm:num_requests_running{engine="0 3\n', "not a Prometheus text exposition"),
        ('process_open_fds 7\nvllm:num_requests_running{engine="0 3\n', "unreadable"),
    ],
)
def test_garbage_raises_a_parse_error_naming_the_problem(text, problem):
    with pytest.raises(MetricsParseError, match=problem):
        parse_load(text, metric_names("vllm"))


def test_parse_error_is_a_value_error():
    assert issubclass(MetricsParseError, ValueError)


def test_kv_usage_outside_zero_to_one_is_an_error_naming_the_family():
    text = "# TYPE my_kv gauge\nmy_kv 87.5\n"
    names = metric_names("custom", {"running": "my_running", "kv_usage": "my_kv"})
    with pytest.raises(MetricsParseError, match=r"my_kv reads 87\.5; .*fraction from 0 to 1"):
        parse_load(text, names)


def test_unknown_engine_is_rejected_naming_it():
    with pytest.raises(ValueError, match=r"unknown engine 'ollama'"):
        metric_names("ollama")


@pytest.mark.parametrize(
    ("custom", "problem"),
    [
        (None, "running or waiting"),
        ({"kv_usage": "x"}, "running or waiting"),
        ({"running": "x", "latency": "y"}, r"unknown field \['latency'\]"),
        ({"running": "not a name"}, "running: 'not a name' is not a Prometheus metric name"),
    ],
)
def test_bad_custom_names_are_rejected(custom, problem):
    with pytest.raises(ValueError, match=problem):
        metric_names("custom", custom)


def test_config_offers_exactly_the_known_engines():
    assert get_args(EngineName) == ENGINES
