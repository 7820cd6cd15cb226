"""The store interface every implementation passes the same test suite against.

Every key is scoped by tenant: one tenant can never read or change another's session.
"""

from __future__ import annotations

from typing import Protocol


class StoreUnavailable(Exception):
    """The backing store cannot be reached; the message names the store."""


class SessionStore(Protocol):
    """Shared session state; implementations are safe for concurrent use by router replicas."""

    name: str

    async def get_pin(self, tenant: str, session: str) -> str | None:
        """The worker that holds this session's KV cache, if one was recorded and not expired."""

    async def set_pin(self, tenant: str, session: str, worker: str, ttl: float) -> None:
        """Record (or refresh) where the session's cache lives for `ttl` seconds."""

    async def delete_pin(self, tenant: str, session: str) -> None: ...

    async def close(self) -> None: ...
