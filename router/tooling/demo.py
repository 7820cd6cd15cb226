"""`kvrouter demo`: simulated workers and the router on loopback, no external service needed."""

from __future__ import annotations

import argparse
import asyncio
import sys

from router.tooling.chatload import Turn, run_chat_load
from router.tooling.fleet import LocalFleet
from router.tooling.launch import free_port

EXAMPLE = """\
Try it:

  curl -s {url}/v1/chat/completions -H 'content-type: application/json' \\
       -H 'x-session-id: alice-1' \\
       -d '{{"model": "sim-model", "messages": [{{"role": "user", "content": "Hello"}}]}}' -i

  python - <<'PY'
  from openai import OpenAI
  client = OpenAI(base_url="{url}/v1", api_key="unused")
  reply = client.chat.completions.create(
      model="sim-model", messages=[{{"role": "user", "content": "Hello"}}],
      extra_headers={{"x-session-id": "alice-1"}})
  print(reply.choices[0].message.content, reply.usage)
  PY

Every turn with the same x-session-id lands on the same worker (see the x-kvrouter-worker
header). Add -H 'x-kvrouter-history: server' and send only the new message: the router keeps
the conversation ({url}/v1/sessions/alice-1). Open to every client here (history.access:
open), which is fine on loopback only.
Metrics: {url}/metrics   Readiness: {url}/readyz
"""


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=4, help="simulated workers (default 4)")
    parser.add_argument("--port", type=int, default=0, help="router port (default: a free one)")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=0.05,
        help="speed of the simulated GPUs' clock; 1.0 is real time (default 0.05)",
    )
    parser.add_argument(
        "--load",
        action="store_true",
        help="run a short multi-turn chat load, print a summary, and exit",
    )
    parser.add_argument("--sessions", type=int, default=60)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)  # fmt: skip


def _progress(total: int) -> callable:
    done = {"n": 0}

    def on_turn(turn: Turn) -> None:
        done["n"] += 1
        if done["n"] % max(1, total // 20) == 0 or done["n"] == total:
            print(f"\r  load: {done['n']}/{total} turns", end="", file=sys.stderr, flush=True)

    return on_turn


async def _demo(ns: argparse.Namespace, fleet: LocalFleet) -> int:
    listen = f"127.0.0.1:{ns.port or free_port()}"
    # The demo listens on loopback for one local user, so stored history may be open to every
    # client (history.access: open) and the orchestrator example works without API keys; a
    # shared router keeps the default, keys.
    history = {"access": "open"}
    async with fleet.router_in_process(listen=listen, history=history) as url:
        print(f"kvrouter demo: router on {url} in front of {len(fleet.workers)} simulated workers:")
        for worker in fleet.workers:
            print(f"  {worker.name}  {worker.url}")
        print()
        print(EXAMPLE.format(url=url))
        if not ns.load:
            print("Ctrl-C to stop.", flush=True)
            await asyncio.Event().wait()
        total = ns.sessions * ns.turns
        print(f"Running {ns.sessions} chat sessions x {ns.turns} turns "
              f"({ns.concurrency} at a time)...", flush=True)  # fmt: skip
        report = await run_chat_load(
            url, ns.sessions, ns.turns, ns.concurrency, on_turn=_progress(total)
        )
        print(file=sys.stderr)
        print(report.table())
        return 1 if report.errors else 0


def run_demo(ns: argparse.Namespace) -> int:
    from router.server import install_fast_loop

    install_fast_loop()
    with LocalFleet(ns.workers, ["--time-scale", str(ns.time_scale)]) as fleet:
        try:
            return asyncio.run(_demo(ns, fleet))
        except KeyboardInterrupt:
            return 0
