"""Each session's vectors as last read, so a turn reads only what was appended since.

1,000 vectors of 1,024 float32 are 4 MB: read whole on every turn, that is milliseconds of
Redis and socket time and 4 MB of traffic per request. The blob only grows at its end between
trims (see `router.store.vectors`), so a copy kept here stays a prefix of the stored blob for
as long as the blob's generation is unchanged, and the store sends only the tail past it (a
few KB: the turns embedded since) in one small round trip. A changed generation (a trim, a
new model) or a deleted session makes the store send the whole blob, or nothing. Copies are
kept least recently used first, within `history.recall.cache_bytes`.
"""

from __future__ import annotations

from collections import OrderedDict

from router.store import SessionStore
from router.store.vectors import HEADER_BYTES, parse_header

Blob = bytes | bytearray


class VectorCache:
    """Session blobs by (tenant, session); `read` is the only way in or out."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], Blob] = OrderedDict()
        self._held = 0

    @property
    def held_bytes(self) -> int:
        return self._held

    def reconfigure(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._shrink()

    async def read(self, store: SessionStore, tenant: str, session: str) -> Blob:
        """The session's whole blob (b"" for none), asking the store only for what this
        cache does not hold. The result must not be kept past the caller's next await: a
        later read may extend it in place."""
        key = (tenant, session)
        held = self._held_of(key)
        stored = await store.read_vectors(tenant, session, held)
        if not stored.head:
            self._drop(key)
            return b""
        if stored.start == 0:
            self._put(key, stored.data)
            return stored.data
        entry = self._entries.get(key)
        header = parse_header(stored.head)
        if entry is None or header is None or len(entry) < stored.start or (
            (old := parse_header(entry)) is None or old.generation != header.generation
        ):  # another read replaced or dropped the copy meanwhile: read it whole
            self._drop(key)
            stored = await store.read_vectors(tenant, session)
            self._put(key, stored.data)
            return stored.data
        if not isinstance(entry, bytearray):
            entry = bytearray(entry)
            self._entries[key] = entry
        before = len(entry)
        entry.extend(stored.data[before - stored.start :])
        entry[:HEADER_BYTES] = stored.head
        self._held += len(entry) - before
        self._entries.move_to_end(key)
        self._shrink()
        return entry

    def _held_of(self, key: tuple[str, str]) -> tuple[int, int] | None:
        entry = self._entries.get(key)
        header = parse_header(entry) if entry is not None else None
        return (header.generation, len(entry)) if header is not None and entry else None

    def _put(self, key: tuple[str, str], blob: Blob) -> None:
        self._drop(key)
        if not blob or len(blob) > self._max_bytes:
            return
        self._entries[key] = blob
        self._held += len(blob)
        self._shrink()

    def _drop(self, key: tuple[str, str]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._held -= len(entry)

    def _shrink(self) -> None:
        while self._held > self._max_bytes and self._entries:
            _, entry = self._entries.popitem(last=False)
            self._held -= len(entry)
