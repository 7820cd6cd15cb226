import argparse

import pytest

from router.sim.cli import add_sim_arguments, sim_options_from_args
from router.sim.faults import Faults
from router.sim.options import SimOptions


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_sim_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_round_trip_through_the_command_line():
    ns = parse()
    assert (ns.host, ns.port) == ("127.0.0.1", 8000)
    assert sim_options_from_args(ns) == SimOptions()


def test_every_field_has_a_dashed_flag():
    ns = parse(
        "--name", "w3", "--model", "m", "--block-size", "8", "--cache-tokens", "64",
        "--prefill-ms-per-token", "0.2", "--decode-ms-per-token", "5",
        "--decode-batch-penalty", "0.1", "--default-max-tokens", "4", "--max-running", "3",
        "--time-scale", "0",
        "--fail-health", "--error-rate", "0.5", "--error-status", "503",
        "--stall-seconds", "1.5", "--drop-after-chunks", "2", "--seed", "9", "--echo-prefill",
        "--port", "9001", "--host", "0.0.0.0",
    )  # fmt: skip
    opts = sim_options_from_args(ns)
    assert opts == SimOptions(
        name="w3", model="m", block_size=8, cache_tokens=64, prefill_ms_per_token=0.2,
        decode_ms_per_token=5.0, decode_batch_penalty=0.1, default_max_tokens=4,
        max_running=3, time_scale=0.0, fail_health=True, error_rate=0.5, error_status=503,
        stall_seconds=1.5, drop_after_chunks=2, seed=9, echo_prefill=True,
    )  # fmt: skip
    assert (ns.host, ns.port) == ("0.0.0.0", 9001)
    assert opts.cache_capacity_blocks == 8


@pytest.mark.parametrize(
    "bad",
    [
        {"block_size": 0},
        {"cache_tokens": -1},
        {"time_scale": -1.0},
        {"error_rate": 1.5},
        {"error_status": 200},
        {"default_max_tokens": 0},
        {"drop_after_chunks": -2},
        {"max_running": -1},
    ],
)
def test_out_of_range_options_are_rejected(bad):
    with pytest.raises(ValueError):
        SimOptions(**bad)


def test_fault_updates_are_validated_and_atomic():
    faults = Faults()
    assert faults.updated({"error_rate": 1, "fail_health": True}) == Faults(
        error_rate=1.0, fail_health=True
    )
    for bad in ({"nope": 1}, {"fail_health": 1}, {"error_status": 5.5}, {"error_rate": 2}):
        with pytest.raises(ValueError):
            faults.updated(bad)
    assert faults == Faults()
