"""Command-line face of the simulated worker: flags, options and the blocking server loop."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable, Sequence
from dataclasses import fields

from aiohttp import web

from router.sim.app import build_sim_app
from router.sim.options import SimOptions

_SHUTDOWN_GRACE_SECONDS = 2.0
_HELP = {
    "name": "worker name, sent back in the x-sim-worker header",
    "model": "model id served at /v1/models and echoed in responses",
    "block_size": "tokens per KV block",
    "cache_tokens": "prefix-cache capacity in tokens (LRU, whole blocks)",
    "prefill_ms_per_token": "prefill cost per uncached prompt token (serialized)",
    "decode_ms_per_token": "decode cost per output token for a lone request",
    "decode_batch_penalty": "decode slowdown per extra running request (fraction)",
    "default_max_tokens": "output tokens when the request sets no max_tokens",
    "max_running": "requests admitted at once, like vLLM's max_num_seqs; the rest wait "
    "in arrival order (0: no limit)",
    "time_scale": "multiplies every simulated delay; 0 never sleeps",
    "fail_health": "answer /health with 503",
    "error_rate": "fraction of completion requests answered with --error-status",
    "error_status": "HTTP status of injected errors",
    "stall_seconds": "wall-clock wait before the first response byte",
    "drop_after_chunks": "abort the connection after this many token chunks (0: never)",
    "seed": "seed of generated text and of error draws",
    "echo_prefill": "behave like llama.cpp's server: continue a chat's final assistant message "
    "without continue_final_message and start the reply with that message's text",
}


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    """--host, --port and one flag per SimOptions field (underscores become dashes)."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port)")
    for field in fields(SimOptions):
        flag = "--" + field.name.replace("_", "-")
        default = field.default
        if isinstance(default, bool):
            action = argparse.BooleanOptionalAction
            parser.add_argument(flag, action=action, default=default, help=_HELP[field.name])
        else:
            parser.add_argument(flag, type=type(default), default=default, help=_HELP[field.name])


def sim_options_from_args(ns: argparse.Namespace) -> SimOptions:
    """Raises ValueError when a value is out of range."""
    return SimOptions(**{field.name: getattr(ns, field.name) for field in fields(SimOptions)})


def run_sim_worker(opts: SimOptions, host: str, port: int) -> None:
    """Serves until SIGTERM or SIGINT, on uvloop when it is installed."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve_sim_worker(opts, host, port))


async def serve_sim_worker(opts: SimOptions, host: str, port: int) -> None:
    """Prints `sim worker NAME listening on http://HOST:PORT` once connections are accepted,
    with the port actually bound, then serves until SIGTERM or SIGINT."""
    runner = web.AppRunner(
        build_sim_app(opts),
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=_SHUTDOWN_GRACE_SECONDS,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_port = runner.addresses[0][1]
        print(f"sim worker {opts.name} listening on http://{host}:{bound_port}", flush=True)
        await _until_signalled((signal.SIGTERM, signal.SIGINT))
    finally:
        await runner.cleanup()


async def _until_signalled(signals: Sequence[signal.Signals]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m router.sim", description="Simulated OpenAI-compatible inference worker."
    )
    add_sim_arguments(parser)
    ns = parser.parse_args(argv)
    try:
        opts = sim_options_from_args(ns)
    except ValueError as exc:
        parser.error(str(exc))
    run_sim_worker(opts, ns.host, ns.port)
