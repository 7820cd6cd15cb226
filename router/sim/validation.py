"""The one error request parsing raises, and the typed read of an optional field."""

from __future__ import annotations

from typing import Any


class InvalidRequest(ValueError):
    """The client sent something the API does not accept (HTTP 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def optional(body: dict[str, Any], key: str, kind: type, *, default: Any) -> Any:
    """`body[key]` when present and not null, else `default`; InvalidRequest if of another
    type."""
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise InvalidRequest(f"'{key}' must be of type {kind.__name__}", key)
    return value
