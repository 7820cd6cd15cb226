"""What a follower does with the leader's messages: the same calls the leader made, so every
child holds the same view of worker health, load and operator changes.

| message | meaning | applied with |
| --- | --- | --- |
| `{"t": "health", "w", "ok", "refused"}` | one active probe's result | `HealthChecker.record` |
| `{"t": "load", "w", "r": [running, waiting, kv_usage]}` | one scrape's figures | `Loads.record` |
| `{"t": "load_failed", "w"}` | a scrape that failed | `Loads.failed` |
| `{"t": "drain" / "undrain", "w"}` | the operator's drain | `Router.drain` / `undrain` |
| `{"t": "weight", "w", "weight"}` | the operator's weight | `Router.set_weight` |

A message about a worker this process does not know (discovery runs in every child, and lists
may arrive a moment apart) is ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from router.fleet.engines import LoadReading
from router.fleet.workers import Worker
from router.processes.channel import Message

if TYPE_CHECKING:
    from router.root import Router


def health(worker: Worker, ok: bool, refused: bool) -> Message:
    return {"t": "health", "w": worker.name, "ok": ok, "refused": refused}


def load(worker: Worker, reading: LoadReading | None) -> Message:
    if reading is None:
        return {"t": "load_failed", "w": worker.name}
    return {"t": "load", "w": worker.name,
            "r": [reading.running, reading.waiting, reading.kv_usage]}  # fmt: skip


def operator(action: str, worker: Worker, **values: object) -> Message:
    return {"t": action, "w": worker.name, **values}


def apply(root: Router, message: Message) -> None:
    """Apply one of the leader's messages to this follower's router."""
    worker = root.pool.get(str(message["w"]))
    if worker is None:
        return
    kind = message["t"]
    if kind == "health":
        root.checker.record(worker, bool(message["ok"]), refused=bool(message["refused"]),
                            relayed=True)  # fmt: skip
    elif kind == "load":
        running, waiting, kv_usage = message["r"]
        root.loads.record(worker, LoadReading(running, waiting, kv_usage))
    elif kind == "load_failed":
        root.loads.failed(worker)
    elif kind == "drain":
        root.drain(worker)
    elif kind == "undrain":
        root.undrain(worker)
    elif kind == "weight":
        root.set_weight(worker, float(message["weight"]))
    else:
        raise ValueError(f"unknown message kind {kind!r}")
