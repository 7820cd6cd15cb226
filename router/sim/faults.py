"""Run-time fault settings of a worker: what `/sim/fault` reads and replaces."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

_NUMBER = (int, float)


@dataclass(frozen=True)
class Faults:
    """Injected misbehaviour; a new value replaces the old one atomically."""

    fail_health: bool = False
    error_rate: float = 0.0
    error_status: int = 500
    stall_seconds: float = 0.0
    drop_after_chunks: int = 0

    def __post_init__(self) -> None:
        problems = [
            msg
            for msg, ok in (
                ("error_rate must be within [0, 1]", 0.0 <= self.error_rate <= 1.0),
                ("error_status must be within [400, 599]", 400 <= self.error_status <= 599),
                ("stall_seconds must be >= 0", self.stall_seconds >= 0),
                ("drop_after_chunks must be >= 0", self.drop_after_chunks >= 0),
            )
            if not ok
        ]
        if problems:
            raise ValueError("; ".join(problems))

    def updated(self, changes: Mapping[str, Any]) -> Faults:
        """A copy with `changes` applied; ValueError names any bad key or value."""
        expected = {f.name: f.type for f in fields(self)}
        for key, value in changes.items():
            if key not in expected:
                raise ValueError(f"unknown fault setting {key!r}")
            if not _has_type(value, expected[key]):
                raise ValueError(f"{key} must be of type {expected[key]}")
        coerced = {k: float(v) if expected[k] == "float" else v for k, v in changes.items()}
        return replace(self, **coerced)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _has_type(value: object, type_name: str) -> bool:
    if type_name == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if type_name == "int":
        return isinstance(value, int)
    return isinstance(value, _NUMBER)
