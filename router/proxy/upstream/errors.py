"""The client's errors, named for where the exchange failed: that is what a retry decision needs."""

from __future__ import annotations


class UpstreamFailure(Exception):
    """Base of the client's errors."""


class ConnectFailed(UpstreamFailure):
    """No connection: nothing was sent. `refused` when the port had no listener."""

    def __init__(self, message: str, *, refused: bool, timed_out: bool = False) -> None:
        super().__init__(message)
        self.refused = refused
        self.timed_out = timed_out


class ClosedBeforeHead(UpstreamFailure):
    """The connection closed or reset before any byte of a response arrived."""


class ProtocolError(UpstreamFailure):
    """The worker's answer is not valid HTTP/1.1."""


class HeadTooLarge(ProtocolError):
    """The worker's response head is over the client's bound (`MAX_HEAD_BYTES`)."""


class BodyBroken(UpstreamFailure):
    """The response body stopped before its end (connection lost or garbled)."""
