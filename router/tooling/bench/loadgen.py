"""Load generators for `kvrouter bench`, each run as its own (pinned) process.

Modes, each bounded in requests and seconds, printing one JSON line on stdout at the end:

  rate     closed loop: C keep-alive connections send small POSTs back to back for D seconds;
           requests/s. The Python fallback when wrk is not installed (raw uvloop protocol, one
           or more processes).
  latency  open loop: N requests at a fixed rate, each on an idle keep-alive connection;
           latency percentiles from the moment a request is written to its last response byte.
  sse      C concurrent streaming requests, re-issued for D seconds; SSE events received/s.
  hold     N concurrent streaming requests, opened at a steady rate (a burst of 1,000 connects
           overflows a listen backlog of 128) and held open: prints `ready K` once K streams
           have their response head, keeps reading for H seconds, then closes them all.

Requests carry `x-session-id` from a rotating set of keys so routers hash on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import sys
import time
from collections.abc import Callable
from typing import Any, cast

import aiohttp
import orjson

_END = b"\r\n\r\n"
_PATH = "/v1/chat/completions"


def completion_body(stream: bool = False, max_tokens: int = 4) -> bytes:
    return orjson.dumps(
        {
            "model": "sim-model",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": max_tokens,
            "stream": stream,
        }
    )


def raw_requests(host: str, port: int, keys: int) -> list[bytes]:
    """One ready-to-send HTTP/1.1 request per session key."""
    body = completion_body()
    return [
        (
            f"POST {_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"x-session-id: bench-{k}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for k in range(keys)
    ]


def _progress(message: str) -> None:
    print(f"    loadgen: {message}", file=sys.stderr, flush=True)


class _Client(asyncio.Protocol):
    """A keep-alive connection reading Content-Length framed responses; calls `on_response`
    with the status of each."""

    def __init__(self, on_response: Callable[[_Client, int], None]) -> None:
        self._on_response = on_response
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while True:
            end = buffer.find(_END)
            if end < 0:
                return
            head = bytes(buffer[:end]).lower()
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                raise RuntimeError("load generator needs Content-Length framed responses")
            stop = head.find(b"\r\n", at + 2)
            total = end + 4 + int(head[at + 17 : stop if stop >= 0 else None])
            if len(buffer) < total:
                return
            status = int(head[9:12])
            del buffer[:total]
            self._on_response(self, status)


async def _connect(host: str, port: int, factory: Callable[[], _Client]) -> _Client:
    loop = asyncio.get_running_loop()
    _, protocol = await asyncio.wait_for(loop.create_connection(factory, host, port), 5.0)
    return protocol


# --- rate -------------------------------------------------------------------------------------


async def _rate(host: str, port: int, conns: int, seconds: float, warmup: float, keys: int):
    requests = raw_requests(host, port, keys)
    state = {"ok": 0, "bad": 0, "counting": False, "running": True, "next": 0}

    def on_response(client: _Client, status: int) -> None:
        if state["counting"]:
            state["ok" if 200 <= status < 300 else "bad"] += 1
        if state["running"] and client.transport is not None:
            state["next"] = (state["next"] + 1) % keys
            client.transport.write(requests[state["next"]])

    clients = [await _connect(host, port, lambda: _Client(on_response)) for _ in range(conns)]
    for i, client in enumerate(clients):
        assert client.transport is not None
        client.transport.write(requests[i % keys])
    await asyncio.sleep(warmup)
    state["counting"] = True
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    state["counting"] = False
    elapsed = time.perf_counter() - started
    state["running"] = False
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    return {"requests": state["ok"], "errors": state["bad"], "seconds": elapsed}


def _rate_process(args: tuple[str, int, int, float, float, int], out: Any) -> None:
    _use_uvloop()
    out.send(asyncio.run(_rate(*args)))


def run_rate(ns: argparse.Namespace) -> dict[str, Any]:
    procs = max(1, ns.procs)
    per = [ns.connections // procs + (1 if i < ns.connections % procs else 0) for i in range(procs)]
    ctx = multiprocessing.get_context("fork")
    pipes, children = [], []
    for conns in per:
        receive, send = ctx.Pipe(duplex=False)
        child = ctx.Process(
            target=_rate_process,
            args=((ns.host, ns.port, conns, ns.seconds, ns.warmup, ns.keys), send),
        )
        child.start()
        pipes.append(receive)
        children.append(child)
    results = []
    for receive, child in zip(pipes, children, strict=True):
        if receive.poll(ns.warmup + ns.seconds + 30):
            results.append(receive.recv())
        child.join(10)
        if child.is_alive():
            child.kill()
    total = sum(r["requests"] for r in results)
    seconds = max((r["seconds"] for r in results), default=ns.seconds)
    return {
        "requests": total,
        "errors": sum(r["errors"] for r in results),
        "seconds": seconds,
        "rps": total / seconds if seconds else 0.0,
        "processes": procs,
        "connections": ns.connections,
    }


# --- latency ----------------------------------------------------------------------------------


class _Timed(_Client):
    """A connection that carries one timed request at a time."""

    def __init__(self, done: Callable[[_Timed, int, float], None]) -> None:
        super().__init__(self._finished)
        self._done = done
        self.sent_at = 0.0

    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self.sent_at = time.perf_counter()
        self.transport.write(request)

    def _finished(self, _client: _Client, status: int) -> None:
        self._done(self, status, time.perf_counter() - self.sent_at)


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def _latency(ns: argparse.Namespace) -> dict[str, Any]:
    requests = raw_requests(ns.host, ns.port, ns.keys)
    idle: list[_Timed] = []
    samples: list[float] = []
    recording = {"on": False}
    pending = {"n": 0}
    finished = {"sending": False}
    all_done = asyncio.get_running_loop().create_future()

    def done(conn: _Timed, status: int, elapsed: float) -> None:
        pending["n"] -= 1
        if recording["on"] and 200 <= status < 300:
            samples.append(elapsed)
        idle.append(conn)
        if pending["n"] == 0 and not all_done.done() and finished["sending"]:
            all_done.set_result(None)

    async def new_conn() -> _Timed:
        return cast(_Timed, await _connect(ns.host, ns.port, lambda: _Timed(done)))

    idle.extend([await new_conn() for _ in range(ns.pool)])

    async def fire(count: int) -> int:
        interval = 1.0 / ns.rate
        start = time.perf_counter()
        opened = 0
        for i in range(count):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            conn = idle.pop() if idle else None
            if conn is None or conn.transport is None:
                conn = await new_conn()
                opened += 1
            pending["n"] += 1
            conn.send(requests[i % ns.keys])
        return opened

    await fire(ns.warmup_requests)
    await asyncio.sleep(0.5)
    recording["on"] = True
    started = time.perf_counter()
    opened = await fire(ns.requests)
    finished["sending"] = True
    if pending["n"]:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_done, 10.0)
    elapsed = time.perf_counter() - started
    for conn in idle:
        if conn.transport is not None:
            conn.transport.close()
    samples.sort()
    ms = [s * 1000 for s in samples]
    return {
        "requests": ns.requests,
        "completed": len(samples),
        "errors": ns.requests - len(samples),
        "rate": ns.rate,
        "achieved_rate": len(samples) / elapsed if elapsed else 0.0,
        "p50_ms": _percentile(ms, 0.50),
        "p90_ms": _percentile(ms, 0.90),
        "p99_ms": _percentile(ms, 0.99),
        "max_ms": ms[-1] if ms else float("nan"),
        "mean_ms": sum(ms) / len(ms) if ms else float("nan"),
        "extra_connections": opened,
    }


# --- sse --------------------------------------------------------------------------------------


def _sse_headers(key: int) -> dict[str, str]:
    return {"Content-Type": "application/json", "x-session-id": f"bench-stream-{key}"}


async def _sse(ns: argparse.Namespace) -> dict[str, Any]:
    url = f"http://{ns.host}:{ns.port}{_PATH}"
    body = completion_body(stream=True, max_tokens=ns.tokens)
    counts = {"events": 0, "streams": 0, "errors": 0, "reads": 0}
    window = {"open": False}

    async def one_client(index: int, session: aiohttp.ClientSession) -> None:
        key = index
        while True:
            async with session.post(url, data=body, headers=_sse_headers(key)) as resp:
                if resp.status != 200:
                    counts["errors"] += 1
                    await resp.read()
                    continue
                tail = b""
                async for chunk in resp.content.iter_any():
                    data = tail + chunk
                    if window["open"]:
                        counts["events"] += data.count(b"data:")
                        counts["reads"] += 1
                    tail = data[-4:]
                if window["open"]:
                    counts["streams"] += 1
            key += ns.concurrency

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        tasks = [asyncio.create_task(one_client(i, session)) for i in range(ns.concurrency)]
        try:
            await asyncio.sleep(ns.warmup)
            window["open"] = True
            started = time.perf_counter()
            await asyncio.sleep(ns.seconds)
            window["open"] = False
            elapsed = time.perf_counter() - started
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "events": counts["events"],
        "seconds": elapsed,
        "events_per_s": counts["events"] / elapsed,
        "streams_completed": counts["streams"],
        "reads": counts["reads"],
        "errors": counts["errors"],
        "concurrency": ns.concurrency,
        "tokens_per_stream": ns.tokens,
    }


# --- hold -------------------------------------------------------------------------------------


async def _hold(ns: argparse.Namespace) -> dict[str, Any]:
    url = f"http://{ns.host}:{ns.port}{_PATH}"
    body = completion_body(stream=True, max_tokens=ns.tokens)
    state = {"ready": 0, "errors": 0, "events": 0}
    all_ready = asyncio.Event()

    async def one_stream(index: int, session: aiohttp.ClientSession) -> None:
        async with session.post(url, data=body, headers=_sse_headers(index)) as resp:
            if resp.status != 200:
                state["errors"] += 1
                if state["errors"] == 1:
                    _progress(f"first error: {resp.status} {(await resp.text())[:300]}")
                return
            state["ready"] += 1
            if state["ready"] == ns.streams:
                all_ready.set()
            async for chunk in resp.content.iter_any():
                state["events"] += chunk.count(b"data:")

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        started = time.perf_counter()
        tasks = []
        for i in range(ns.streams):
            tasks.append(asyncio.create_task(one_stream(i, session)))
            await asyncio.sleep(1.0 / ns.ramp_rate)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_ready.wait(), ns.ready_timeout)
            ramp = time.perf_counter() - started
            print(f"ready {state['ready']}", flush=True)
            _progress(f"{state['ready']}/{ns.streams} streams open after {ramp:.1f}s")
            await asyncio.sleep(ns.hold)
            still_open = sum(1 for t in tasks if not t.done())
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "streams": ns.streams,
        "ready": state["ready"],
        "still_open_at_end": still_open,
        "ramp_seconds": ramp,
        "errors": state["errors"],
        "events": state["events"],
    }


# --- entry ------------------------------------------------------------------------------------


def _use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="kvrouter bench load generators")
    parser.add_argument("mode", choices=["rate", "latency", "sse", "hold"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--keys", type=int, default=64, help="rotating x-session-id values")
    parser.add_argument("--connections", type=int, default=64, help="rate: connections")
    parser.add_argument("--procs", type=int, default=1, help="rate: processes")
    parser.add_argument("--seconds", type=float, default=5.0, help="rate/sse: measured time")
    parser.add_argument("--warmup", type=float, default=1.0, help="rate/sse: unmeasured time")
    parser.add_argument("--rate", type=float, default=200.0, help="latency: requests/s")
    parser.add_argument("--requests", type=int, default=2000, help="latency: measured requests")
    parser.add_argument("--warmup-requests", type=int, default=200)
    parser.add_argument("--pool", type=int, default=16, help="latency: pre-opened connections")
    parser.add_argument("--concurrency", type=int, default=8, help="sse: concurrent streams")
    parser.add_argument("--tokens", type=int, default=1000, help="sse/hold: tokens per stream")
    parser.add_argument("--streams", type=int, default=1000, help="hold: streams")
    parser.add_argument("--hold", type=float, default=3.0, help="hold: seconds held open")
    parser.add_argument("--ramp-rate", type=float, default=500.0, help="hold: new streams/s")
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    return parser


def main() -> None:
    ns = build_parser().parse_args()
    if ns.mode == "rate":
        result = run_rate(ns)
    else:
        _use_uvloop()
        runner = {"latency": _latency, "sse": _sse, "hold": _hold}[ns.mode]
        result = asyncio.run(runner(ns))
    print(orjson.dumps({"mode": ns.mode, **result}).decode(), flush=True)


if __name__ == "__main__":
    main()
