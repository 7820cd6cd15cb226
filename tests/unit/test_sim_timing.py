import pytest

from router.sim.options import SimOptions
from router.sim.timing import TimingModel


def model(**overrides) -> TimingModel:
    return TimingModel.from_options(SimOptions(**overrides))


def test_prefill_costs_per_uncached_token_and_scales():
    assert model(prefill_ms_per_token=0.5).prefill_seconds(1000) == pytest.approx(0.5)
    assert model(prefill_ms_per_token=0.5, time_scale=0.1).prefill_seconds(1000) == (
        pytest.approx(0.05)
    )


def test_decode_slows_down_with_each_extra_running_request():
    timing = model(decode_ms_per_token=10.0, decode_batch_penalty=0.5)
    assert timing.decode_step_seconds(1) == pytest.approx(0.010)
    assert timing.decode_step_seconds(3) == pytest.approx(0.020)
    assert timing.decode_step_seconds(0) == pytest.approx(0.010)


def test_zero_time_scale_never_sleeps():
    timing = model(time_scale=0.0)
    assert not timing.prefill_sleeps
    assert not timing.decode_sleeps
    assert timing.decode_step_seconds(50) == 0.0


def test_zero_costs_never_sleep():
    timing = model(prefill_ms_per_token=0.0, decode_ms_per_token=0.0)
    assert not timing.prefill_sleeps
    assert not timing.decode_sleeps
