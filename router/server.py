"""Run the router until SIGTERM/SIGINT, then drain: stop accepting, let in-flight requests and
streams finish within `shutdown_grace`, and exit. SIGHUP re-reads the configuration file and
applies what changed (`router.reload`).

Once started, everything allocated so far (modules, config, tokenizer tables) is moved out of
the garbage collector's sight (`gc.freeze`), so full collections stay short: rebuilding a
1,000-turn prompt allocates enough to trigger them, and they set its p99.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from router.config import Settings
from router.http.app import build_admin_app, build_app
from router.http.client_errors import ClientErrorLog
from router.http.common import ROOT
from router.http.connections import ClientSite
from router.processes.role import ProcessRole
from router.reload import Reloader
from router.root import Router

log = logging.getLogger("kvrouter")


def install_fast_loop() -> None:
    """Use uvloop when it is installed; it roughly doubles proxy throughput."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


ADMIN_SHUTDOWN_SECONDS = 2.0


@contextlib.asynccontextmanager
async def running(
    settings: Settings, host: str, port: int, role: ProcessRole | None = None
) -> AsyncIterator[web.AppRunner]:
    """The router serving on host:port for the duration of the block, then drained; with an
    admin token, the operator API on `admin.listen` too (closed first on the way out). As a
    child of a `--processes N` router (`role`), it shares the port with its siblings, and only
    the leader serves the operator API."""
    root = Router(settings, role)
    app = build_app(root)
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        shutdown_timeout=settings.shutdown_grace,
        access_log=None,
        logger=ClientErrorLog(),  # a client's malformed request: one line, rate-limited
        keepalive_timeout=settings.limits.keepalive_timeout,
    )
    await runner.setup()
    admin: web.AppRunner | None = None
    try:
        site = ClientSite(
            runner, root.clients, host, port, backlog=2048, reuse_port=role is not None
        )
        await site.start()
        if settings.admin.token and root.observes:
            admin = web.AppRunner(
                build_admin_app(root),
                shutdown_timeout=ADMIN_SHUTDOWN_SECONDS,
                access_log=None,
                logger=ClientErrorLog(),
                keepalive_timeout=settings.limits.keepalive_timeout,
            )
            await admin.setup()
            await web.TCPSite(admin, settings.admin.host, settings.admin.port).start()
        yield runner
    finally:
        root.stopping = True
        if admin is not None:
            await admin.cleanup()
        await runner.cleanup()


async def serve(
    settings: Settings,
    host: str,
    port: int,
    config_path: str | Path | None = None,
    role: ProcessRole | None = None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(settings, host, port, role) as runner:
        root = runner.app[ROOT]
        if config_path is not None:
            reloader = Reloader(root, config_path)
            loop.add_signal_handler(signal.SIGHUP, reloader.reload)
        gc.freeze()
        who = "" if role is None else f" (process {role.index + 1} of {role.count})"
        for address in runner.addresses:
            print(f"kvrouter listening on http://{address[0]}:{address[1]}{who}", flush=True)
        if settings.admin.token and root.observes:
            print(f"kvrouter admin API on http://{settings.admin.listen}", flush=True)
        waits = (loop.create_task(stop.wait()), loop.create_task(root.supervisor_gone.wait()))
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            task.cancel()
        log.warning("stopping: draining in-flight requests for up to %ss", settings.shutdown_grace)


def run(
    settings: Settings,
    host: str | None = None,
    port: int | None = None,
    config_path: str | Path | None = None,
    role: ProcessRole | None = None,
) -> None:
    install_fast_loop()
    asyncio.run(
        serve(settings, host or settings.host, port or settings.port, config_path, role)
    )
