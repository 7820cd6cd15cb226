"""Session state behind one interface: in-memory (the embedded default) and Redis."""

from router.store.base import SessionStore, StoreUnavailable
from router.store.memory import MemoryStore

__all__ = ["MemoryStore", "SessionStore", "StoreUnavailable"]
