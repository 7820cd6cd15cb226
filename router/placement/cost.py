"""What moving a session costs: its prompt recomputed on another worker.

No tokenizer on the proxy path: the prompt is estimated from the size of the request body about
to be sent (it holds the whole conversation in both modes, the orchestrator's rebuilt prompt
included) at `bytes_per_token`, and recomputed at the target engine's prefill rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.config import CostSettings

# JSON request bytes per prompt token, measured with the cl100k_base tokenizer on chat bodies
# (`python -m loadtests.bytes_per_token`): 4.17 on English prose, 6.25 on the benchmark's
# word-list workload. It follows the model's tokenizer more than the engine; every engine takes
# the English figure until `routing.cost.bytes_per_token` says otherwise.
BYTES_PER_TOKEN: dict[str, float] = dict.fromkeys(
    ("vllm", "sglang", "tgi", "llamacpp", "custom"), 4.2
)
# Prompt tokens per second one worker prefills from scratch. Every engine takes the simulated
# worker's default timing (0.3 ms a token, a mid-size model on one GPU) until
# `routing.cost.prefill_tokens_per_second` gives the fleet's own measured figure.
PREFILL_TOKENS_PER_SECOND: dict[str, float] = dict.fromkeys(
    ("vllm", "sglang", "tgi", "llamacpp", "custom"), 3333.0
)


@dataclass(frozen=True, slots=True)
class CostModel:
    """Configured figures; None takes the engine's default."""

    bytes_per_token: float | None
    prefill_tokens_per_second: float | None

    @classmethod
    def from_settings(cls, settings: CostSettings) -> CostModel:
        return cls(settings.bytes_per_token, settings.prefill_tokens_per_second)

    def recompute_seconds(self, body_bytes: int, engine: str) -> float:
        """Seconds to prefill the prompt of a `body_bytes` request from scratch on `engine`."""
        per_token = self.bytes_per_token or BYTES_PER_TOKEN.get(engine, 4.2)
        rate = self.prefill_tokens_per_second or PREFILL_TOKENS_PER_SECOND.get(engine, 3333.0)
        return body_bytes / per_token / rate
