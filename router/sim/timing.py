"""How long simulated prefill and decode take."""

from __future__ import annotations

from dataclasses import dataclass

from router.sim.options import SimOptions


@dataclass(frozen=True)
class TimingModel:
    """Prefill costs per uncached prompt token; decode costs per output token and slows
    down linearly with the number of requests decoding at the same time."""

    prefill_ms_per_token: float
    decode_ms_per_token: float
    decode_batch_penalty: float
    time_scale: float

    @classmethod
    def from_options(cls, opts: SimOptions) -> TimingModel:
        return cls(
            prefill_ms_per_token=opts.prefill_ms_per_token,
            decode_ms_per_token=opts.decode_ms_per_token,
            decode_batch_penalty=opts.decode_batch_penalty,
            time_scale=opts.time_scale,
        )

    @property
    def prefill_sleeps(self) -> bool:
        """False when prefill never waits, so callers can skip the wait entirely."""
        return self.prefill_ms_per_token * self.time_scale > 0

    @property
    def decode_sleeps(self) -> bool:
        """False when decode never waits, so callers can skip the wait entirely."""
        return self.decode_ms_per_token * self.time_scale > 0

    def prefill_seconds(self, uncached_tokens: int) -> float:
        return uncached_tokens * self.prefill_ms_per_token * self.time_scale / 1000.0

    def decode_step_seconds(self, running: int) -> float:
        """One output token's delay while `running` requests (this one included) decode."""
        slowdown = 1.0 + self.decode_batch_penalty * max(running - 1, 0)
        return self.decode_ms_per_token * slowdown * self.time_scale / 1000.0
