"""What a stream has relayed so far, kept so it can be resumed elsewhere.

An event stream is passed on in whole events only: the bytes after the last event boundary of
a chunk are held until the next chunk closes that event, so a stream cut mid-event never
leaves half an event at the client (and a resume can continue right after the last whole
one). The usual chunk ends on a boundary and is passed on as it is. The relayed bytes are kept
(not parsed: that happens only when resuming) while they total at most the cap; past it the
stream is no longer resumable and the copy is dropped.

An event that grows past `MAX_HELD` without closing is passed on unclosed, and the stream is
no longer resumable (its framing cannot be followed).
"""

from __future__ import annotations

MAX_HELD = 64 * 1024
_BOUNDARIES = (b"\n\n", b"\r\n\r\n")


class Transcript:
    """Feed every chunk through `take`; send what it returns."""

    __slots__ = ("_cap", "_held", "_kept", "_size", "unresumable")

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._kept: list[bytes] | None = []
        self._size = 0
        self._held = b""
        self.unresumable: str | None = None  # why, once it is not resumable

    def take(self, chunk: bytes) -> bytes:
        """The whole events `chunk` completes, to send now; the rest is held."""
        if self._held:
            chunk = self._held + chunk
            self._held = b""
        if self.unresumable is not None:
            return chunk
        if not chunk.endswith(_BOUNDARIES):
            lf, crlf = chunk.rfind(b"\n\n"), chunk.rfind(b"\r\n\r\n")
            cut = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
            held = chunk[cut:]
            if len(held) > MAX_HELD:
                self._give_up("framing")
            else:
                self._held, chunk = held, chunk[:cut]
        kept = self._kept
        if kept is not None and chunk:
            self._size += len(chunk)
            if self._size > self._cap:
                self._give_up("past_cap")
            else:
                kept.append(chunk)
        return chunk

    def rest(self) -> bytes:
        """What is still held once the stream has ended (an unclosed last event)."""
        held, self._held = self._held, b""
        return held

    def drop_held(self) -> None:
        """The stream broke: the unfinished event is never sent."""
        self._held = b""

    @property
    def relayed(self) -> bytes:
        """Every byte sent so far (only while resumable)."""
        return b"".join(self._kept or ())

    @property
    def size(self) -> int:
        return self._size

    def _give_up(self, reason: str) -> None:
        if self.unresumable is None:
            self.unresumable = reason
        self._kept = None
