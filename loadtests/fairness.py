"""Fair use under saturation: a light tenant's time to first token while a heavy tenant sends
ten times its rate into a saturated fleet, with and without limits and admission control; and
what a rate-limit check costs on Redis.

    python -m loadtests.fairness            # about 8 minutes
    python -m loadtests.fairness --quick    # about 4 minutes

Simulated workers with a batch limit (vLLM's `max_num_seqs`) serve streamed chat requests at
a fixed capacity, measured first (`capacity`: completions a second with the fleet kept full).
Each tenant sends Poisson arrivals at a fixed rate, open loop: `light` at `--light-share` of
capacity, `heavy` at ten times that, past what the fleet can serve. Every request has a new
user message after its tenant's system prompt (so prefix affinity keys each on its own), and
TTFT is measured by the client, from sending to the first content event. Phases, each on the
same fleet with caches emptied, measured after `--warmup` seconds:

- `light alone`: the baseline (admission on, limits on: nothing is saturated);
- `no limits, no admission`: both tenants, the fleet as it is without this feature;
- `limits, no admission`: the heavy tenant's requests per minute limited to `--heavy-limit` x
  capacity, above what the fleet serves, so the fleet stays saturated (a limit counts a
  minute's worth at once, so within a phase it refuses nothing: limits alone do not help);
- `fair admission + limits`: the same limits, with the router's queue served in round robin
  (`limits.admission` as configured by default: the measured target is light's TTFT p99 here
  within 1.5x of its TTFT p99 alone);
- `... + headroom N`: the same with `limits.admission.headroom: N` (`--headroom`).

Then the limiter's cost on Redis: the check alone (`TenantLimiter.check`, one Lua script per
request, against the Redis at 127.0.0.1:6379 or one started for the run), and end to end: two
router processes on the same Redis in front of an instant worker, one with limits and one
without, requests alternating between them. And what admission adds to a request while the
fleet has room (`Balancer.fleet_full` over 64 workers).

Table on stdout; figures and a plot in loadtests/out/fairness.{json,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import random
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import orjson

from loadtests.report import percentile, table
from loadtests.workload import SYSTEM_PROMPTS, word_text
from router.tooling.fleet import LocalFleet, RedisServer

WORKERS = 4
BATCH = 32
DECODE_MS = 40
PREFILL_MS = 0.2
SIM = ("--max-running", str(BATCH), "--decode-ms-per-token", str(DECODE_MS),
       "--prefill-ms-per-token", str(PREFILL_MS), "--time-scale", "1")  # fmt: skip
MAX_TOKENS = 32
PROMPT_WORDS = 100  # the new user message: 100 tokens prefilled from scratch
TARGET = 1.5  # light's TTFT p99 with fair admission, at most this x its TTFT p99 alone
HEAVY_TIMES_LIGHT = 10
FAST_LOAD = {"interval": 0.1, "jitter": 0.1, "timeout": 0.5, "stale_after": 1.0}
ROUTER = {"shutdown_grace": 2, "session": {"tenant_header": "x-tenant"}, "load": FAST_LOAD}
CLIENT_TIMEOUT = 180.0


@dataclass(frozen=True, slots=True)
class Shot:
    """One request as the client saw it; times in seconds since the phase began."""

    tenant: str
    sent: float
    ttft: float | None
    status: int
    code: str = ""
    ended: float = 0.0


@dataclass(slots=True)
class Phase:
    name: str
    rates: dict[str, float]
    limits: dict[str, Any]
    shots: list[Shot] = field(default_factory=list)
    seconds: float = 0.0

    def measured(self, tenant: str, warmup: float, until: float) -> list[Shot]:
        return [s for s in self.shots if s.tenant == tenant and warmup <= s.sent < until]


def prompt(rng: random.Random, tenant: str) -> bytes:
    system = SYSTEM_PROMPTS[0 if tenant == "light" else 1]
    body = {
        "model": "sim-model", "max_tokens": MAX_TOKENS, "stream": True,
        "messages": [{"role": "system", "content": system},
                     {"role": "user", "content": word_text(rng, PROMPT_WORDS)}],
    }  # fmt: skip
    return orjson.dumps(body)


async def send(http: aiohttp.ClientSession, url: str, tenant: str, body: bytes,
               started: float) -> Shot:  # fmt: skip
    sent = time.perf_counter()
    headers = {"x-tenant": tenant, "content-type": "application/json"}
    try:
        async with http.post(url + "/v1/chat/completions", data=body, headers=headers) as resp:
            if resp.status != 200:
                document = orjson.loads(await resp.read())
                code = document.get("error", {}).get("code", "")
                ended = time.perf_counter() - started
                return Shot(tenant, sent - started, None, resp.status, code, ended)
            first = None
            async for line in resp.content:
                if first is None and line.startswith(b"data: {") and b'"content"' in line:
                    first = time.perf_counter() - sent
            return Shot(tenant, sent - started, first, 200, "", time.perf_counter() - started)
    except (aiohttp.ClientError, TimeoutError) as err:
        ended = time.perf_counter() - started
        return Shot(tenant, sent - started, None, 0, type(err).__name__, ended)


async def arrivals(http, url: str, tenant: str, rate: float, seconds: float, started: float,
                   rng: random.Random, shots: list[Shot], pending: set) -> None:  # fmt: skip
    """Poisson arrivals at `rate` a second for `seconds`, open loop."""
    at = rng.expovariate(rate)
    while at < seconds:
        delay = started + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(send(http, url, tenant, prompt(rng, tenant), started))
        task.add_done_callback(lambda t: shots.append(t.result()))
        pending.add(task)
        task.add_done_callback(pending.discard)
        at += rng.expovariate(rate)


async def play(url: str, tenant: str, rate: float, seconds: float, seed: int, label: str,
               start_at: float) -> list[Shot]:  # fmt: skip
    """One tenant's arrivals from `start_at` (wall clock) on, and every answer to them."""
    shots: list[Shot] = []
    pending: set[asyncio.Task[Shot]] = set()
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT, sock_connect=5)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        started = time.perf_counter() + (start_at - time.time())
        await asyncio.sleep(max(0.0, started - time.perf_counter()))
        rng = random.Random(f"{seed}-{tenant}")
        feeder = asyncio.create_task(
            arrivals(http, url, tenant, rate, seconds, started, rng, shots, pending)
        )
        tty = sys.stderr.isatty()
        while not feeder.done() or pending:
            await asyncio.sleep(1.0 if tty else 10.0)
            elapsed = time.perf_counter() - started
            line = f"  {label}, {tenant}: {elapsed:4.0f}s, {len(shots)} answered, " \
                   f"{len(pending)} open"  # fmt: skip
            print("\r" + line if tty else line, end="" if tty else "\n", file=sys.stderr,
                  flush=True)  # fmt: skip
        await feeder
    if tty:
        print(file=sys.stderr)
    return shots


def play_tenant(url: str, tenant: str, rate: float, seconds: float, seed: int, label: str,
                start_at: float) -> list[dict[str, Any]]:  # fmt: skip
    """`play` in a process of its own (each tenant is a client of its own, so one client's
    load never delays another's measurements)."""
    shots = asyncio.run(play(url, tenant, rate, seconds, seed, label, start_at))
    return [asdict(s) for s in shots]


def tenant_limits(rpm_heavy: float | None) -> dict[str, Any]:
    if rpm_heavy is None:
        return {}
    return {"named": {"heavy": {"requests_per_minute": math.ceil(rpm_heavy)}}}


def run_phase(fleet: LocalFleet, phase: Phase, seconds: float, seed: int,
              admission: dict[str, Any]) -> None:  # fmt: skip
    fleet.reset_caches()
    limits = {"tenants": phase.limits, "admission": admission}
    with fleet.router_process(limits=limits) as router:
        start_at = time.time() + 2.0  # first load scrapes; the clients' processes start
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(len(phase.rates), mp_context=spawn) as pool:
            runs = [
                pool.submit(play_tenant, router.url, tenant, rate, seconds, seed, phase.name,
                            start_at)
                for tenant, rate in phase.rates.items()
            ]  # fmt: skip
            phase.shots = [Shot(**shot) for run in runs for shot in run.result()]
        phase.seconds = time.time() - start_at


def capacity(fleet: LocalFleet, seconds: float, warm: float = 5.0) -> float:
    """Completions a second with the fleet kept full (a closed loop of twice the batch
    places), counted over `seconds` once `warm` seconds have filled it."""
    fleet.reset_caches()

    async def closed_loop(url: str) -> int:
        done = 0
        rng = random.Random("capacity")
        started = time.perf_counter()
        start, end = started + warm, started + warm + seconds
        timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout,
                                         connector=aiohttp.TCPConnector(limit=0)) as http:

            async def user() -> None:
                nonlocal done
                while time.perf_counter() < end:
                    shot = await send(http, url, "heavy", prompt(rng, "heavy"), started)
                    done += shot.status == 200 and start <= started + shot.ended < end

            await asyncio.gather(*(user() for _ in range(2 * WORKERS * BATCH)))
        return done

    with fleet.router_process(limits={"admission": {"enabled": False}}) as router:
        print("  capacity: closed loop", file=sys.stderr, flush=True)
        done = asyncio.run(closed_loop(router.url))
    return done / seconds


def ttft_ms(shots: Sequence[Shot], q: float) -> float:
    values = [s.ttft for s in shots if s.ttft is not None]
    return percentile(values, q) * 1000 if values else float("nan")


def phase_rows(phases: Sequence[Phase], warmup: float, seconds: float) -> list[list[str]]:
    rows = []
    for phase in phases:
        light = phase.measured("light", warmup, seconds)
        heavy = phase.measured("heavy", warmup, seconds)
        span = seconds - warmup
        served = sum(s.status == 200 and warmup <= s.ended < seconds for s in phase.shots)
        codes = [s.code or str(s.status) for s in phase.shots if s.status != 200]
        rows.append([
            phase.name,
            f"{ttft_ms(light, 0.5):.0f} / {ttft_ms(light, 0.99):.0f}",
            f"{ttft_ms(heavy, 0.5):.0f} / {ttft_ms(heavy, 0.99):.0f}" if heavy else "-",
            f"{served / span:.1f}",
            ", ".join(f"{c} {codes.count(c)}" for c in sorted(set(codes))) or "none",
        ])  # fmt: skip
    return rows


# --- the limiter's cost on Redis -----------------------------------------------------------


@contextmanager
def redis_url() -> Iterator[str]:
    import redis

    url = "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.3).ping()
    except redis.RedisError:
        server = RedisServer().start()
        try:
            yield server.url
        finally:
            server.stop()
        return
    yield url


async def check_cost(url: str, count: int) -> dict[str, float]:
    """`TenantLimiter.check` alone, sequential, on Redis and in memory (µs p50/p99)."""
    from router.config import StoreSettings, TenantLimitSettings
    from router.limits.limiter import TenantLimiter
    from router.metrics import Metrics
    from router.store import make_store

    tenants = TenantLimitSettings(default={"requests_per_minute": 10_000_000,
                                           "tokens_per_minute": 10_000_000})  # fmt: skip
    found: dict[str, float] = {}
    prefix = f"kvrbench-{random.randrange(1 << 30):x}"
    for name, settings in (("redis", StoreSettings(url=url, key_prefix=prefix)),
                           ("memory", StoreSettings())):  # fmt: skip
        store = make_store(settings)
        limiter = TenantLimiter(tenants, store, Metrics(), 4.2)
        samples = []
        for i in range(count + count // 10):
            started = time.perf_counter()
            await limiter.check(f"tenant-{i % 50}")
            samples.append(time.perf_counter() - started)
        samples = samples[count // 10:]
        found[f"{name}_p50_us"] = percentile(samples, 0.5) * 1e6
        found[f"{name}_p99_us"] = percentile(samples, 0.99) * 1e6
        await limiter.close()
        await store.close()
    return found


async def end_to_end(limited: str, plain: str, count: int) -> dict[str, float]:
    """Sequential requests alternating between the two routers (ms p50/p99 of each)."""
    body = orjson.dumps({"model": "sim-model", "max_tokens": 1,
                         "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    times: dict[str, list[float]] = {"limited": [], "plain": []}
    headers = {"x-tenant": "bench", "content-type": "application/json"}
    async with aiohttp.ClientSession() as http:
        for i in range(count + count // 10):
            for name, url in (("limited", limited), ("plain", plain))[:: 1 if i % 2 else -1]:
                started = time.perf_counter()
                async with http.post(url + "/v1/chat/completions", data=body,
                                     headers=headers) as resp:  # fmt: skip
                    await resp.read()
                    assert resp.status == 200, resp.status
                if i >= count // 10:
                    times[name].append(time.perf_counter() - started)
    found = {}
    for name, values in times.items():
        found[f"{name}_p50_ms"] = percentile(values, 0.5) * 1000
        found[f"{name}_p99_ms"] = percentile(values, 0.99) * 1000
    return found


def admission_check_cost(count: int, workers: int = 64) -> dict[str, float]:
    """What admission adds to a request while the fleet has room: `Balancer.fleet_full` over
    `workers` workers with fresh figures, none full (µs p50/p99)."""
    from router.config import RoutingSettings
    from router.fleet.engines import LoadReading
    from router.fleet.workers import Worker, WorkerPool
    from router.placement.place import Balancer

    pool = WorkerPool(Worker(f"w{i}", f"http://w{i}") for i in range(workers))
    balancer = Balancer(pool, RoutingSettings())
    for worker in pool:
        balancer.loads.record(worker, LoadReading(running=8, waiting=1, kv_usage=0.5))
        balancer.loads.record(worker, LoadReading(running=4, waiting=0, kv_usage=0.5))
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        assert not balancer.fleet_full()
        samples.append(time.perf_counter() - started)
    return {"admission_p50_us": percentile(samples, 0.5) * 1e6,
            "admission_p99_us": percentile(samples, 0.99) * 1e6}  # fmt: skip


def limiter_cost(count: int) -> dict[str, float]:
    with redis_url() as url:
        print("  limiter: the check alone", file=sys.stderr, flush=True)
        found = asyncio.run(check_cost(url, count))
        prefix = f"kvrbench-{random.randrange(1 << 30):x}"
        store = {"url": url, "key_prefix": prefix}
        limits = {"tenants": {"default": {"requests_per_minute": 10_000_000,
                                          "tokens_per_minute": 10_000_000}}}  # fmt: skip
        with LocalFleet(1, ("--time-scale", "0"), router_defaults=ROUTER) as fleet:
            with fleet.router_process(store=store, limits=limits) as one, \
                    fleet.router_process(store=store) as two:  # fmt: skip
                print("  limiter: end to end", file=sys.stderr, flush=True)
                found.update(asyncio.run(end_to_end(one.url, two.url, count // 2)))
    return found


def plot(phases: Sequence[Phase], warmup: float, seconds: float, alone_p99: float) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from loadtests.plots import OUT

    fig, (bars, series) = plt.subplots(1, 2, figsize=(14, 5), width_ratios=(1, 1.6))
    names = [p.name for p in phases]
    for offset, tenant, colour in ((-0.2, "light", "tab:green"), (0.2, "heavy", "tab:red")):
        values = [ttft_ms(p.measured(tenant, warmup, seconds), 0.99) for p in phases]
        drawn = bars.bar([i + offset for i in range(len(phases))], values, width=0.4,
                         color=colour, label=f"{tenant} TTFT p99")  # fmt: skip
        bars.bar_label(drawn, [f"{v:.0f}" if v == v else "" for v in values], fontsize=7)
    bars.axhline(alone_p99 * TARGET, color="black", linestyle="--",
                 label=f"target: {TARGET}x light alone")  # fmt: skip
    bars.set_yscale("log")
    bars.set_xticks(range(len(phases)), names, rotation=20, ha="right", fontsize=8)
    bars.set_ylabel("ms (log)")
    bars.legend(fontsize=8)
    for phase in phases[1:]:
        shots = sorted((s for s in phase.shots if s.tenant == "light" and s.ttft is not None),
                       key=lambda s: s.sent)  # fmt: skip
        series.plot([s.sent for s in shots], [s.ttft * 1000 for s in shots], ".", markersize=3,
                    label=phase.name)  # fmt: skip
    series.axvline(warmup, color="grey", linestyle=":")
    series.set_yscale("log")
    series.set_xlabel("seconds into the phase")
    series.set_ylabel("light tenant TTFT, ms (log)")
    series.legend(fontsize=8)
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "fairness.png"
    fig.savefig(path, dpi=110)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter phases, fewer samples")
    parser.add_argument("--seconds", type=float, default=0.0, help="arrivals per phase")
    parser.add_argument("--warmup", type=float, default=0.0)
    parser.add_argument("--light-share", type=float, default=0.12,
                        help="light's rate, a share of capacity (heavy: 10x it)")
    parser.add_argument("--heavy-limit", type=float, default=1.1,
                        help="heavy's requests per minute limit, x capacity")
    parser.add_argument("--headroom", type=int, default=2,
                        help="limits.admission.headroom of the last phase")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-limiter", action="store_true")
    args = parser.parse_args(argv)
    seconds = args.seconds or (30.0 if args.quick else 60.0)
    warmup = args.warmup or (8.0 if args.quick else 12.0)

    with LocalFleet(WORKERS, SIM, router_defaults=ROUTER) as fleet:
        served = capacity(fleet, 10.0 if args.quick else 20.0)
        light_rate = args.light_share * served
        heavy_rate = HEAVY_TIMES_LIGHT * light_rate
        both = {"light": light_rate, "heavy": heavy_rate}
        limited = tenant_limits(args.heavy_limit * served * 60)
        off, fair = {"enabled": False}, {"enabled": True, "headroom": 0}
        spare = {"enabled": True, "headroom": args.headroom}
        phases = [
            (Phase("light alone", {"light": light_rate}, limited), fair),
            (Phase("no limits, no admission", both, {}), off),
            (Phase("limits, no admission", both, limited), off),
            (Phase("fair admission + limits", both, limited), fair),
            (Phase(f"... + headroom {args.headroom}", both, limited), spare),
        ]
        for phase, admission in phases:
            run_phase(fleet, phase, seconds, args.seed, admission)
    runs = [p for p, _ in phases]
    cost = {} if args.skip_limiter else limiter_cost(2000 if args.quick else 10_000)
    check = admission_check_cost(2000 if args.quick else 10_000)

    print()
    print(f"fleet: {WORKERS} simulated workers, batch limit {BATCH} (--max-running), "
          f"{MAX_TOKENS} tokens a reply at {DECODE_MS} ms each (+2 % per other request in the "
          f"batch), {PROMPT_WORDS} new prompt tokens after a cached system prompt at "
          f"{PREFILL_MS} ms each; capacity {served:.1f} completions/s")  # fmt: skip
    print(f"rates: light {light_rate:.2f}/s, heavy {heavy_rate:.2f}/s "
          f"({heavy_rate / served:.2f}x capacity); heavy's limit "
          f"{math.ceil(args.heavy_limit * served * 60)} requests/min "
          f"({args.heavy_limit:g}x capacity); {seconds:g}s of arrivals per phase, "
          f"measured after {warmup:g}s")  # fmt: skip
    print()
    header = ["phase", "light TTFT p50 / p99 ms", "heavy TTFT p50 / p99 ms", "served/s",
              "refused"]  # fmt: skip
    print(table(phase_rows(runs, warmup, seconds), header))
    alone = ttft_ms(runs[0].measured("light", warmup, seconds), 0.99)
    print()
    for run in runs[3:]:
        fair = ttft_ms(run.measured("light", warmup, seconds), 0.99)
        verdict = "met" if fair <= TARGET * alone else "MISSED"
        print(f"light TTFT p99, {run.name}: {fair:.0f} ms = {fair / alone:.2f}x its p99 alone "
              f"({alone:.0f} ms); target <= {TARGET}x: {verdict}")  # fmt: skip
    if cost:
        print()
        print(table([
            ["rate-limit check alone (Redis, one Lua script)",
             f"{cost['redis_p50_us']:.0f} µs", f"{cost['redis_p99_us']:.0f} µs"],
            ["rate-limit check alone (in memory)",
             f"{cost['memory_p50_us']:.0f} µs", f"{cost['memory_p99_us']:.0f} µs"],
            ["request through a router with limits on Redis",
             f"{cost['limited_p50_ms']:.2f} ms", f"{cost['limited_p99_ms']:.2f} ms"],
            ["request through a router without limits",
             f"{cost['plain_p50_ms']:.2f} ms", f"{cost['plain_p99_ms']:.2f} ms"],
            ["added by the limiter, end to end",
             f"{cost['limited_p50_ms'] - cost['plain_p50_ms']:+.2f} ms",
             f"{cost['limited_p99_ms'] - cost['plain_p99_ms']:+.2f} ms"],
        ], ["limiter cost", "p50", "p99"]))  # fmt: skip
    print(f"\nadmission check per request while the fleet has room (64 workers): "
          f"{check['admission_p50_us']:.1f} µs p50, {check['admission_p99_us']:.1f} µs p99")
    path = plot(runs, warmup, seconds, alone)
    from loadtests.plots import OUT

    document = {
        "capacity": served, "rates": {"light": light_rate, "heavy": heavy_rate},
        "seconds": seconds, "warmup": warmup, "limiter": cost, "admission_check": check,
        "phases": [{"name": p.name, "limits": p.limits, "shots": [asdict(s) for s in p.shots]}
                   for p in runs],
    }  # fmt: skip
    (OUT / "fairness.json").write_text(json.dumps(document))
    print(f"\nplot: {path}; figures: {OUT / 'fairness.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
