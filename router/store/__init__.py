"""Session state behind one interface: in-memory (the embedded default) and Redis."""

from collections.abc import Callable

from router.config import StoreSettings
from router.store.base import SessionStore, SessionTooLarge, StoredHistory, StoreUnavailable
from router.store.memory import MemoryStore


def make_store(
    settings: StoreSettings, on_evict: Callable[[str], None] | None = None
) -> SessionStore:
    """Redis when `store.url` is set, else this process's memory, which calls `on_evict(kind)`
    for each live history or pin it evicts at its caps."""
    if settings.url:
        from router.store.redis import RedisStore

        return RedisStore(settings)
    return MemoryStore(
        max_pins=settings.max_pins,
        history_ttl=settings.history_ttl,
        max_messages=settings.max_messages,
        max_sessions=settings.max_sessions,
        max_session_bytes=settings.max_session_bytes,
        on_evict=on_evict,
    )


__all__ = [
    "MemoryStore",
    "SessionStore",
    "SessionTooLarge",
    "StoreUnavailable",
    "StoredHistory",
    "make_store",
]
