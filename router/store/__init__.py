"""Session state behind one interface: in-memory (the embedded default) and Redis."""

from router.config import StoreSettings
from router.store.base import SessionStore, StoredHistory, StoreUnavailable
from router.store.memory import MemoryStore


def make_store(settings: StoreSettings) -> SessionStore:
    """Redis when `store.url` is set, else this process's memory."""
    if settings.url:
        from router.store.redis import RedisStore

        return RedisStore(settings)
    return MemoryStore(history_ttl=settings.history_ttl, max_messages=settings.max_messages)


__all__ = ["MemoryStore", "SessionStore", "StoreUnavailable", "StoredHistory", "make_store"]
