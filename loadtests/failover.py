"""The failover run: the same chat workload, one worker killed (SIGKILL) mid-run and restarted.

    python -m loadtests.failover            # about 2.5 minutes
    python -m loadtests.failover --quick    # about a minute

Runs once per way of going home after a move (`routing.pins.return_home`), and once without
pins, and prints: client-visible errors (streams cut by the kill are counted apart: they were
mid-reply on the killed worker and no router can resume them), TTFT and hit ratio before the
kill (its second half, once caches are warm), during the outage and after the restart, and how
long the hit ratio took to come back within 5 points of its level before the kill.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from loadtests.measure import ROUTER_DEFAULTS
from loadtests.player import Player, Record
from loadtests.report import percentile, table
from loadtests.workload import PROFILES, plan_users
from router.tooling.fleet import LocalFleet, SimSettings

OUT_NAME = "failover"
VICTIM = 1


@dataclass(frozen=True, slots=True)
class Timeline:
    """Wall-clock seconds from the start of the run."""

    kill: float
    restart: float


@dataclass(frozen=True, slots=True)
class Phase:
    requests: int
    hit_ratio: float
    ttft_p50: float
    ttft_p99: float


@dataclass(frozen=True, slots=True)
class FailoverResult:
    label: str
    records: tuple[Record, ...]
    timeline: Timeline
    errors: int
    cut_streams: int
    before: Phase
    outage: Phase
    after: Phase
    recovery_after_kill: float | None
    recovery_after_restart: float | None
    victim_share_after: float


VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("pins, return home on_expiry", {"pins": {"return_home": "on_expiry"}}),
    ("pins, return home when_healthy", {"pins": {"return_home": "when_healthy"}}),
    ("no pins", {"pins": {"enabled": False}}),
)


def phase(records: Sequence[Record], start: float, end: float) -> Phase:
    chosen = [r for r in records if r.ok and start <= r.started < end]
    prompt = sum(r.prompt_tokens for r in chosen)
    ttfts = [r.ttft for r in chosen if r.ttft is not None]
    return Phase(
        len(chosen),
        sum(r.cached_tokens for r in chosen) / prompt if prompt else float("nan"),
        percentile(ttfts, 0.5),
        percentile(ttfts, 0.99),
    )


def rolling_hits(records: Sequence[Record], width: float) -> list[tuple[float, float]]:
    """(time, hit ratio of requests started in the `width` seconds before it), per second."""
    ok = sorted((r for r in records if r.ok), key=lambda r: r.started)
    end = max((r.started for r in ok), default=0.0)
    points = []
    t = width
    while t <= end:
        window = [r for r in ok if t - width <= r.started < t]
        prompt = sum(r.prompt_tokens for r in window)
        if prompt:
            points.append((t, sum(r.cached_tokens for r in window) / prompt))
        t += 0.5
    return points


def recovery(
    points: Sequence[tuple[float, float]], since: float, baseline: float, width: float
) -> float | None:
    """Seconds after `since` until the rolling hit ratio is back within 5 points of
    `baseline` (measured on requests that all started after `since`); None if never."""
    for t, ratio in points:
        if t - width >= since and ratio >= baseline - 0.05:
            return t - width - since
    return None


def judge(label: str, records: Sequence[Record], timeline: Timeline, victim: str, width: float):
    cut = [
        r for r in records
        if not r.ok and r.worker == victim and r.started < timeline.kill and r.first_token
    ]  # fmt: skip
    errors = [r for r in records if not r.ok and r not in cut]
    before = phase(records, timeline.kill / 2, timeline.kill)
    points = rolling_hits(records, width)
    after_restart = [r for r in records if r.ok and r.started >= timeline.restart]
    return FailoverResult(
        label=label,
        records=tuple(records),
        timeline=timeline,
        errors=len(errors),
        cut_streams=len(cut),
        before=before,
        outage=phase(records, timeline.kill, timeline.restart),
        after=phase(records, timeline.restart, float("inf")),
        recovery_after_kill=recovery(points, timeline.kill, before.hit_ratio, width),
        recovery_after_restart=recovery(points, timeline.restart, before.hit_ratio, width),
        victim_share_after=(
            sum(1 for r in after_restart if r.worker == victim) / len(after_restart)
            if after_restart else 0.0
        ),
    )  # fmt: skip


async def play_with_failure(
    fleet: LocalFleet, url: str, users: list, scale: float, timeline: Timeline, seed: int
) -> list[Record]:
    player = Player(url, scale)

    async def chaos() -> None:
        await asyncio.sleep(timeline.kill)
        print(f"    killing {fleet.names[VICTIM]} (SIGKILL)", file=sys.stderr, flush=True)
        fleet.kill(VICTIM)
        await asyncio.sleep(timeline.restart - timeline.kill)
        print(f"    restarting {fleet.names[VICTIM]}", file=sys.stderr, flush=True)
        await asyncio.to_thread(fleet.restart, VICTIM)

    chaos_task = asyncio.create_task(chaos())
    await player.run(users, seed)
    await chaos_task
    return player.records


def render(results: Sequence[FailoverResult], scale: float) -> str:
    def ms(value: float) -> str:
        return f"{value / scale * 1e3:.0f}"

    def secs(value: float | None) -> str:
        return "never" if value is None else f"{value:.1f} s"

    header = ["variant", "errors", "cut streams", "hit before/outage/after",
              "TTFT p50 before/outage/after (ms)", "TTFT p99 outage/after (ms)",
              "recovery after kill", "after restart", "victim share after"]  # fmt: skip
    rows = [
        [
            r.label, str(r.errors), str(r.cut_streams),
            f"{r.before.hit_ratio:.1%} / {r.outage.hit_ratio:.1%} / {r.after.hit_ratio:.1%}",
            f"{ms(r.before.ttft_p50)} / {ms(r.outage.ttft_p50)} / {ms(r.after.ttft_p50)}",
            f"{ms(r.outage.ttft_p99)} / {ms(r.after.ttft_p99)}",
            secs(r.recovery_after_kill), secs(r.recovery_after_restart),
            f"{r.victim_share_after:.0%}",
        ]
        for r in results
    ]  # fmt: skip
    return table(rows, header)


def plot(results: Sequence[FailoverResult], width: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from loadtests.plots import OUT

    fig, (hits, ttft) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    for r in results:
        points = rolling_hits(r.records, width)
        hits.plot([t for t, _ in points], [v for _, v in points], label=r.label)
        ok = sorted((x for x in r.records if x.ok and x.ttft is not None), key=lambda x: x.started)
        ttft.plot([x.started for x in ok], [x.ttft for x in ok], ".", markersize=2, label=r.label)
    for ax in (hits, ttft):
        ax.axvline(results[0].timeline.kill, color="red", linestyle="--")
        ax.axvline(results[0].timeline.restart, color="green", linestyle="--")
    hits.set_ylabel(f"hit ratio ({width:.0f} s window)")
    ttft.set_ylabel("TTFT (wall s)")
    ttft.set_yscale("log")
    ttft.set_xlabel("wall seconds (red: kill -9, green: restart)")
    hits.legend()
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{OUT_NAME}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=2)
    ns = parser.parse_args(argv)
    profile = replace(PROFILES["uniform"], turns_per_user=20)
    sim = SimSettings(cache_tokens=40_000)
    timeline, width = Timeline(kill=12.0, restart=24.0), 3.0
    if ns.quick:
        profile = replace(profile, users=32, turns_per_user=8)
        sim = replace(sim, cache_tokens=20_000)
        timeline = Timeline(kill=6.0, restart=12.0)
    users = plan_users(profile, ns.seed)
    routing_base = {"policy": "bounded_load", "slow_start": {"window": 30 * sim.time_scale}}
    started = time.monotonic()
    results = []
    with LocalFleet(4, sim.flags(), router_defaults=ROUTER_DEFAULTS) as fleet:
        for label, routing in VARIANTS:
            print(f"[failover] {label}", file=sys.stderr, flush=True)
            if not fleet.workers[VICTIM].running:
                fleet.restart(VICTIM)
            fleet.reset_caches()
            with fleet.router_process(routing={**routing_base, **routing}) as router:
                records = asyncio.run(
                    play_with_failure(fleet, router.url, users, sim.time_scale, timeline, ns.seed)
                )
            results.append(judge(label, records, timeline, fleet.names[VICTIM], width))
    print(render(results, sim.time_scale))
    print(f"plot: {plot(results, width)}")
    print(f"TTFT in simulated ms (wall / {sim.time_scale}); recovery times in wall seconds; "
          f"whole run {time.monotonic() - started:.0f} s")  # fmt: skip
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
