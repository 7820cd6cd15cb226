"""A TCP relay that holds back what its clients send by a fixed delay (replies pass at once):
a real connection to a real server, made slow in one direction, so a test can show what
happens when one process's writes reach a shared store late."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from router.tooling.launch import free_port

CHUNK = 65536


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy `reader` to `writer`, each chunk sent `delay` seconds after it arrived (in order)."""
    loop = asyncio.get_running_loop()
    pending: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await pending.get()
            if not data:
                break
            await asyncio.sleep(max(0.0, due - loop.time()))
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        while data := await reader.read(CHUNK):
            pending.put_nowait((loop.time() + delay, data))
        pending.put_nowait((loop.time(), b""))
        await sender
    finally:
        sender.cancel()
        writer.close()


@contextlib.asynccontextmanager
async def delayed_tcp(host: str, port: int, delay: float) -> AsyncIterator[int]:
    """A relay to `host:port` on a free loopback port (yielded) that delays client bytes."""
    connections: set[asyncio.Task[None]] = set()

    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(5):
            server_r, server_w = await asyncio.open_connection(host, port)
        await asyncio.gather(
            _pipe(client_r, server_w, delay), _pipe(server_r, client_w, 0.0),
            return_exceptions=True,
        )

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(relay(reader, writer))
        connections.add(task)
        task.add_done_callback(connections.discard)

    listen = free_port()
    server = await asyncio.start_server(accept, "127.0.0.1", listen)
    try:
        yield listen
    finally:
        server.close()
        for task in list(connections):
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
