"""Configuration of one simulated inference worker."""

from __future__ import annotations

from dataclasses import dataclass

from router.sim.faults import Faults


@dataclass(frozen=True)
class SimOptions:
    """Everything that shapes a simulated worker; validated on construction. `echo_prefill`
    makes chat behave like llama.cpp's server: a final assistant message is continued without
    parameters and its text echoed at the start of the reply (see `router.sim.chat`)."""

    name: str = "sim"
    model: str = "sim-model"
    block_size: int = 16
    cache_tokens: int = 200_000
    prefill_ms_per_token: float = 0.1
    decode_ms_per_token: float = 15.0
    decode_batch_penalty: float = 0.02
    default_max_tokens: int = 32
    max_running: int = 0
    time_scale: float = 1.0
    fail_health: bool = False
    error_rate: float = 0.0
    error_status: int = 500
    stall_seconds: float = 0.0
    drop_after_chunks: int = 0
    seed: int = 0
    echo_prefill: bool = False

    def __post_init__(self) -> None:
        checks = {
            "block_size must be >= 1": self.block_size >= 1,
            "cache_tokens must be >= 0": self.cache_tokens >= 0,
            "prefill_ms_per_token must be >= 0": self.prefill_ms_per_token >= 0,
            "decode_ms_per_token must be >= 0": self.decode_ms_per_token >= 0,
            "decode_batch_penalty must be >= 0": self.decode_batch_penalty >= 0,
            "default_max_tokens must be >= 1": self.default_max_tokens >= 1,
            "max_running must be >= 0": self.max_running >= 0,
            "time_scale must be >= 0": self.time_scale >= 0,
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ValueError("; ".join(failed))
        self.faults()

    def faults(self) -> Faults:
        """The initial fault settings; raises ValueError when they are out of range."""
        return Faults(
            fail_health=self.fail_health,
            error_rate=self.error_rate,
            error_status=self.error_status,
            stall_seconds=self.stall_seconds,
            drop_after_chunks=self.drop_after_chunks,
        )

    @property
    def cache_capacity_blocks(self) -> int:
        """Whole KV blocks that fit in `cache_tokens`."""
        return self.cache_tokens // self.block_size
