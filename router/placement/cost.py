"""What moving a session costs: its prompt recomputed on another worker.

No tokenizer on the proxy path: the prompt is estimated from the size of the request body about
to be sent (it holds the whole conversation in both modes, the orchestrator's rebuilt prompt
included) at `bytes_per_token`, and recomputed at the target engine's prefill rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.config import CostSettings

# JSON request bytes per prompt token, measured on the chat workload of `loadtests/workload.py`
# with the cl100k_base tokenizer (`python -m loadtests.bytes_per_token`).
BYTES_PER_TOKEN = 4.6
# Prompt tokens per second one worker prefills. GPU engines: the simulated worker's default
# timing (0.3 ms a token); set `routing.cost.prefill_tokens_per_second` to your fleet's figure.
PREFILL_TOKENS_PER_SECOND: dict[str, float] = {
    "vllm": 3333.0,
    "sglang": 3333.0,
    "tgi": 3333.0,
    "llamacpp": 3333.0,
    "custom": 3333.0,
}


@dataclass(frozen=True, slots=True)
class CostModel:
    bytes_per_token: float
    prefill_tokens_per_second: float | None

    @classmethod
    def from_settings(cls, settings: CostSettings) -> CostModel:
        return cls(settings.bytes_per_token or BYTES_PER_TOKEN, settings.prefill_tokens_per_second)

    def recompute_seconds(self, body_bytes: int, engine: str) -> float:
        """Seconds to prefill the prompt of a `body_bytes` request from scratch on `engine`."""
        rate = self.prefill_tokens_per_second or PREFILL_TOKENS_PER_SECOND.get(engine, 3333.0)
        return body_bytes / self.bytes_per_token / rate
