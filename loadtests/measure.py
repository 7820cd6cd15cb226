"""Run one regime: its fleet of simulated workers (or of real llama.cpp servers), then for each
seed the oracle and every policy behind a router process of its own, on the same planned
workload, caches emptied before each run, the workers' queues sampled while it plays."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import replace

from loadtests.oracle import CacheFigures, replay
from loadtests.player import Player, Record
from loadtests.regimes import Regime
from loadtests.report import RunResult, placements, summarise, ttft_by_turn
from loadtests.sampler import QueueSampler
from router.tooling.fleet import LocalFleet, SimWorker

ROUTER_DEFAULTS = {"shutdown_grace": 2}


def progress(label: str, total: int) -> Callable[[Record], None]:
    """Prints `label: done/total requests` to stderr at most every 2 seconds."""
    state = {"done": 0, "shown": 0.0}

    def on_record(_: Record) -> None:
        state["done"] += 1
        now = time.monotonic()
        if now - state["shown"] > 2 or state["done"] == total:
            state["shown"] = now
            print(f"\r  {label}: {state['done']}/{total} requests", end="", file=sys.stderr,
                  flush=True)  # fmt: skip

    return on_record


def _cache_fill(fleet: LocalFleet) -> float:
    """The fullest simulated worker's prefix cache, as a share of its capacity (NaN for real
    servers, which do not say)."""
    urls = [w.url for w in fleet.workers if isinstance(w, SimWorker)]
    if not urls:
        return float("nan")
    fills = []
    for url in urls:
        with urllib.request.urlopen(url + "/sim/stats", timeout=5) as resp:
            stats = json.load(resp)
        capacity = stats["cache_capacity_blocks"]
        fills.append(stats["cache_blocks"] / capacity if capacity else 0.0)
    return max(fills, default=0.0)


def play_once(
    fleet: LocalFleet, regime: Regime, policy: str, seed: int, users: list, oracle: CacheFigures
) -> RunResult:
    fleet.reset_caches()
    total = sum(len(t.users_text) for u in users for s in u for t in s.turns)
    sections = regime.router_sections(policy, oracle.bytes_per_token)
    with fleet.router_process(**sections) as router:
        label = f"[{regime.name} seed {seed}] {policy}"
        player = Player(router.url, regime.sim.time_scale, on_record=progress(label, total))
        workers = dict(zip(fleet.names, fleet.urls, strict=True))
        with QueueSampler(workers, engine=fleet.engine) as sampler:
            wall = asyncio.run(player.run(users, seed))
    print(file=sys.stderr)
    queued = {name: sampler.queued_share(name) for name in fleet.names}
    result = RunResult(
        policy=policy,
        seed=seed,
        summary=summarise(policy, player.records, fleet.names, wall),
        placed=placements(player.records),
        queued=queued,
        waiting=(),
        peak_kv=sampler.peak("kv_usage"),
        cache_fill=_cache_fill(fleet),
        load_average=os.getloadavg()[0],
        turn_ttft_p50=ttft_by_turn(player.records),
    )
    series = tuple((s.at, s.waiting) for s in sampler.samples if s.worker == result.hottest)
    return replace(result, waiting=series)


def sim_fleet(regime: Regime) -> LocalFleet:
    """The regime's simulated workers (not started)."""
    flags = [*regime.sim.flags(), "--max-running", str(regime.max_running)]
    return LocalFleet(regime.workers, flags, router_defaults=ROUTER_DEFAULTS)


def measure(
    regime: Regime,
    seeds: Sequence[int],
    policies: Sequence[str],
    on_run: Callable[[RunResult], None] | None = None,
    fleet: LocalFleet | None = None,
) -> tuple[dict[int, CacheFigures], dict[int, dict[str, RunResult]]]:
    """Every policy on every seed's workload: (oracle per seed, run per seed and policy), on
    `fleet` (default: the regime's simulated workers)."""
    oracles: dict[int, CacheFigures] = {}
    results: dict[int, dict[str, RunResult]] = {}
    with fleet or sim_fleet(regime) as fleet:
        for seed in seeds:
            users = regime.plan(seed)
            oracles[seed] = replay(users, regime.workers, regime.sim.cache_tokens)
            results[seed] = {}
            for policy in policies:
                run = play_once(fleet, regime, policy, seed, users, oracles[seed])
                results[seed][policy] = run
                if on_run is not None:
                    on_run(run)
    return oracles, results
