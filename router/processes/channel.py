"""The line of JSON messages between a child and the supervisor (a Unix socket pair).

The leader publishes what it observes and what the operator changed; the supervisor copies each
line to every other child, whose `Siblings.follow` hands it to `router.processes.follow`.
Messages are small and periodic, so a child that stops reading does not hold the others up: past
`MAX_BUFFERED` bytes waiting for it, lines to it are dropped (and counted in the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

import orjson

from router.processes.role import ProcessRole

log = logging.getLogger("kvrouter.processes")

MAX_LINE = 64 * 1024
MAX_BUFFERED = 4 * 1024 * 1024

Message = dict[str, Any]


class Line:
    """One end of a channel: write whole lines, read whole lines."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.dropped = 0

    @classmethod
    async def open(cls, sock: socket.socket) -> Line:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_LINE)
        return cls(reader, writer)

    def write(self, line: bytes) -> None:
        """Queue one line (ending in a newline); dropped when the peer is far behind or gone."""
        transport = self._writer.transport
        if transport.is_closing() or transport.get_write_buffer_size() > MAX_BUFFERED:
            self.dropped += 1
            if self.dropped in (1, 100, 10_000):
                log.warning("dropped %d messages to a router process that is not reading",
                            self.dropped)  # fmt: skip
            return
        self._writer.write(line)

    async def read(self) -> bytes | None:
        """The next line, or None once the peer has closed its end."""
        try:
            line = await self._reader.readline()
        except (ValueError, asyncio.LimitOverrunError, ConnectionError):
            return None
        return line or None

    def close(self) -> None:
        self._writer.close()


class Siblings:
    """This process's link to the other children of the same supervisor. With no role (one
    process), or as a follower, `publish` does nothing."""

    def __init__(self, role: ProcessRole | None) -> None:
        self.role = role
        self._line: Line | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def publishing(self) -> bool:
        return self.role is not None and self.role.leader and self.role.count > 1

    async def open(self, follow: Callable[[Message], None], on_closed: Callable[[], None]) -> None:
        """Connect to the supervisor; a follower applies every message with `follow`. When the
        supervisor is gone (its end closed), `on_closed` is called: a child never outlives it."""
        if self.role is None:
            return
        sock = socket.socket(fileno=self.role.control_fd)
        self._line = await Line.open(sock)
        self._task = asyncio.get_running_loop().create_task(
            self._read(self._line, follow, on_closed), name="siblings"
        )

    async def _read(
        self, line: Line, follow: Callable[[Message], None], on_closed: Callable[[], None]
    ) -> None:
        while (raw := await line.read()) is not None:
            try:
                message = orjson.loads(raw)
                follow(message)
            except Exception as err:  # one bad message never stops the others
                log.warning("ignored a message from the leader process: %r", err)
        log.warning("the supervisor is gone: stopping")
        on_closed()

    def publish(self, message: Message) -> None:
        if self.publishing and self._line is not None:
            self._line.write(orjson.dumps(message) + b"\n")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._line is not None:
            self._line.close()
