"""Logging what clients get wrong without letting them flood the log.

aiohttp logs every request it cannot parse (a bad request line, a bad header, a smuggling
shape, a broken chunked body) with an 11-line traceback, so anyone who can open a connection
could fill the router's log. `ClientErrorLog` is the logger handed to aiohttp's server: a
client's fault becomes one line, at most one per second per kind of error, the next line
saying how many were left out; anything else (a real router bug) keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger("kvrouter.clients")


class RateLimitedLog:
    """One line per `interval` seconds per kind; the next line of a kind counts the ones left
    out since the last."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def log(self, level: int, kind: str, message: str, *args: object) -> bool:
        """Log `message % args` unless a line of `kind` went out within the interval;
        whether it was logged."""
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            self._left_out[kind] = self._left_out.get(kind, 0) + 1
            return False
        self._last[kind] = now
        left_out = self._left_out.pop(kind, 0)
        if left_out:
            message += f" ({left_out} more like it since the last line were not logged)"
        self._logger.log(level, message, *args)
        return True


def client_fault(exc: BaseException | None) -> HttpProcessingError | None:
    """The parse error behind `exc` when the client sent something malformed: aiohttp's
    `HttpProcessingError`s, also as the cause of a `RequestPayloadError` (a broken body)."""
    seen = 0
    while exc is not None and seen < 4:
        if isinstance(exc, HttpProcessingError):
            return exc
        if not isinstance(exc, web.RequestPayloadError):
            return None
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def describe(exc: HttpProcessingError) -> str:
    """The parser's one-line description, without the echo of the client's bytes that
    aiohttp appends on the following lines."""
    lines = str(exc.message or "").strip().splitlines()
    return (lines[0].rstrip(":") if lines else type(exc).__name__)[:200]


class ClientErrorLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The logger aiohttp's request handlers use (`AppRunner(logger=...)`)."""

    def __init__(self, logger: logging.Logger | None = None, interval: float = 1.0) -> None:
        super().__init__(logger or logging.getLogger("aiohttp.server"), {})
        self._limited = RateLimitedLog(log, interval)

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        exc = exc_info if isinstance(exc_info, BaseException) else None
        if exc_info is True:
            exc = sys.exc_info()[1]
        fault = client_fault(exc)
        if fault is None:
            super().log(level, msg, *args, **kwargs)
            return
        kind = type(fault).__name__
        where = str(msg) % args if args else str(msg)  # aiohttp's words: whose request
        level = logging.WARNING if level > logging.DEBUG else logging.DEBUG
        line = "malformed request refused: %s: %s [%s]"
        self._limited.log(level, kind, line, kind, describe(fault), where)

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        return msg, kwargs
