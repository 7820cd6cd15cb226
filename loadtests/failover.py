"""The failover run: the same chat workload, one worker killed (SIGKILL) mid-run and restarted.

    python -m loadtests.failover            # about 4 minutes
    python -m loadtests.failover --quick    # about 1.5 minutes

Runs once per way of going home after a move (`routing.pins.return_home`), and once without
pins, and prints two tables. The first: client-visible errors (requests that got no stream),
TTFT and hit ratio before the kill (its second half, once caches are warm), during the outage
and after the restart, and how long the hit ratio took to come back within 5 points of its
level before the kill.

The second is about the streams the kill cut mid-answer, which the router continues on another
worker (`retries.mid_stream`):

- **streams cut**: streams the client saw end without a complete answer (an `event: error`, no
  `[DONE]`, or a broken connection); with healthy workers left the target is 0.
- **resumed**: the router's `kvrouter_stream_resumes_total{outcome="resumed"}`, and client side
  the streams the victim had started (`x-kvrouter-worker`) that were under way at the kill and
  still completed.
- **pause**: per resumed stream, from the last event it received before the kill to the first
  after it (the player keeps event arrival times for the streams under way at the kill); the
  router's `kvrouter_stream_resume_pause_seconds` count is printed beside it as a cross-check.
- **control TTFT**: one control request per stream the victim had under way, sent at the
  moment of the kill: fresh text (nothing of it in any cache) as long as what that stream's
  continuation prefills (its prompt plus the text it had received), answering one token,
  through the router under a fresh session id whose ring home is the survivor that continued
  the stream (the router's word, `/admin/sessions`: the pin a resume moves, or without pins
  where it places the session; else the next worker on the stream's ring walk). Through the
  router rather than to the workers' URLs so a control takes the path a continuation takes
  (placement, the router's upstream connection, the relay back) and lands where it did.
  Target: pause p99 at most 1.2 x control TTFT p99, printed PASS or MISS.

The controls go in a *control run* (`--controls run`, the default): right after each failover
run, the same workload again on emptied caches up to the moment of the kill, with no kill; the
burst goes then and the run stops once it has answered. A simulated worker prefills one request
at a time in arrival order, so controls sent in the failover run itself would queue behind the
continuations or they behind the controls: `--controls kill` does that, and its ratio says
mostly which reached the survivors first (about 0.5 when the continuations did, about 2 when
the controls did, and the pauses are then those behind the controls). In the control run the
burst meets the survivors as the continuations did: the same workload before it, the same
prefill arriving together, nothing of the outage after it. `--controls none` skips it.

Stream by stream (prefills, cached tokens, where each continued, pauses, controls):
loadtests/out/failover.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from loadtests.measure import ROUTER_DEFAULTS, progress
from loadtests.player import Player, Record, Stream
from loadtests.report import percentile, table
from loadtests.workload import PROFILES, SessionPlan, TurnPlan, plan_users, word_text
from router.config import RoutingSettings, SessionSettings
from router.placement.policies.ring import Ring
from router.placement.session import RoutingKey
from router.sim.template import render_chat
from router.sim.tokens import split_tokens
from router.tooling.fleet import LocalFleet, RouterProcess, SimSettings

OUT_NAME = "failover"
VICTIM = 1
PAUSE_TARGET = 1.2  # pause p99 at most this many times the control TTFT p99
CONTROL_MAX_TOKENS = 1  # a control is there for its TTFT
ADMIN_TOKEN = "failover-bench-admin"  # to ask the router where sessions are homed and placed


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


@dataclass(slots=True)
class ControlBurst:
    """Control requests sent together: `intended` maps each one's session to the survivor it
    is homed on; `records` on the controls' own clock (only their TTFT counts)."""

    name: str
    users: list[list[SessionPlan]] = field(default_factory=list)
    intended: dict[str, str] = field(default_factory=dict)
    sent_at: float | None = None  # the clock of the run it went in
    records: list[Record] = field(default_factory=list)

    @property
    def ttfts(self) -> list[float]:
        return [r.ttft for r in self.records if r.ok and r.ttft is not None]

    @property
    def failed(self) -> int:
        return sum(1 for r in self.records if not r.ok)

    @property
    def away(self) -> int:
        """Controls served by another worker than the one they were homed on."""
        return sum(1 for r in self.records if r.ok and self.intended.get(r.session) != r.worker)


@dataclass(slots=True)
class Kill:
    """The kill as the client saw it (the player's clock): when the signal went and when the
    victim was reaped; for each of its streams then under way (by session), the tokens its
    continuation prefills, the next survivor on its ring walk and the worker the router says
    continued it; and the control bursts."""

    at: float | None = None
    reaped: float | None = None
    prefills: dict[str, int] = field(default_factory=dict)
    ring: dict[str, str] = field(default_factory=dict)
    continued_on: dict[str, str] = field(default_factory=dict)
    bursts: list[ControlBurst] = field(default_factory=list)

    def burst(self, name: str) -> ControlBurst | None:
        return next((b for b in self.bursts if b.name == name), None)

    def targets(self, homes: ControlHomes) -> dict[str, str]:
        """Where each stream continued: the router's word, else its ring walk's survivor."""
        spares = homes.spares()
        return {
            session: self.continued_on[session]
            if self.continued_on.get(session) in spares else ring
            for session, ring in self.ring.items()
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class RouterResumes:
    """The router's own counts, from its /metrics at the end of a run."""

    outcomes: Counter[str]
    pauses: int
    pause_buckets: tuple[tuple[float, float], ...]  # (upper bound in s, cumulative count)

    def pause_quantile(self, q: float) -> float:
        """The upper bound of the bucket holding quantile `q` (nan without pauses)."""
        for bound, count in self.pause_buckets:
            if self.pauses and count >= q * self.pauses:
                return bound
        return float("nan")


@dataclass(frozen=True, slots=True)
class Resumes:
    """The victim's streams under way at the kill, and how they ended, client side."""

    under_way: int
    resumed: int
    pauses: tuple[float, ...]

    @property
    def pause_p50(self) -> float:
        return percentile(self.pauses, 0.5)

    @property
    def pause_p99(self) -> float:
        return percentile(self.pauses, 0.99)


def pause_ratio(pauses: Sequence[float], controls: Sequence[float]) -> float:
    """Pause p99 over control TTFT p99 (nan when either is missing)."""
    if not pauses or not controls:
        return float("nan")
    return percentile(pauses, 0.99) / percentile(controls, 0.99)


def verdict(ratio: float) -> str:
    if ratio != ratio:
        return "n/a"
    return "PASS" if ratio <= PAUSE_TARGET else "MISS"


@dataclass(frozen=True, slots=True)
class FailoverResult:
    label: str
    records: tuple[Record, ...]
    timeline: Timeline
    kill: Kill
    errors: int
    cut_streams: int
    resumes: Resumes
    router: RouterResumes
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


def resume_pause(events: Sequence[float], at: float) -> float | None:
    """The pause a stream cut at `at` and resumed showed its client, from its event arrival
    times (ascending): the largest gap from the last event at or before `at` onwards. That is
    the gap from the last event before the cut to the first of the continuation, also when a
    few events the dead worker sent before `at` are read just after it. None without events on
    both sides of `at`."""
    start = None
    for i, t in enumerate(events):
        if t > at:
            break
        start = i
    if start is None or start + 1 >= len(events):
        return None
    return max(b - a for a, b in zip(events[start:], events[start + 1 :], strict=False))


def under_way(records: Iterable[Record], victim: str, at: float) -> list[Record]:
    """The streams `victim` had started (its name in `x-kvrouter-worker`) and that were under
    way at `at`: their head came before it and they had not ended (those whose last event
    came before it and that ended well are not: only their record came later)."""
    return [
        r for r in records
        if r.worker == victim and r.events and r.events[0] <= at < r.ended
        and not (r.ok and r.events[-1] <= at)
    ]  # fmt: skip


def prompt_tokens(messages: Sequence[tuple[str, str]], generation_prompt: bool = True) -> int:
    """Tokens of `messages` rendered as the simulated worker renders them."""
    return len(split_tokens(render_chat(messages, generation_prompt)))


def continuation_tokens(messages: Sequence[tuple[str, str]], received: str) -> int:
    """What a continuation of a stream with `received` so far prefills: the messages plus an
    assistant message holding that text, without a new assistant cue."""
    return prompt_tokens([*messages, ("assistant", received)], generation_prompt=False)


_USER_FRAME = prompt_tokens([("user", "")])


def control_text(rng: random.Random, tokens: int) -> str:
    """A user message of fresh random words whose prompt is `tokens` tokens (at least the
    template's own plus one word)."""
    return word_text(rng, max(1, tokens - _USER_FRAME))


class ControlHomes:
    """Fresh session ids whose ring home is each worker but the victim, and the survivor each
    victim session continues on: the router's own ring (same names, vnodes and tenant)."""

    def __init__(self, names: Sequence[str], victim: str, tag: str) -> None:
        nodes = [_Node(name) for name in names]
        self._ring = Ring(nodes, RoutingSettings().vnodes)  # duck-typed: name and weight
        self._victim = victim
        self._tag = tag
        self._next = 0
        self._spare: dict[str, list[str]] = {n: [] for n in names if n != victim}

    @staticmethod
    def key(session: str) -> str:
        return RoutingKey(SessionSettings().default_tenant, session).hash_key or ""

    def home(self, session: str) -> str:
        worker = self._ring.home(self.key(session))
        return worker.name if worker is not None else ""

    def survivor(self, session: str) -> str:
        """The first worker after the victim on the session's ring walk."""
        return next(w.name for w in self._ring.walk(self.key(session)) if w.name != self._victim)

    def fill(self, per_worker: int) -> None:
        while min(len(ids) for ids in self._spare.values()) < per_worker:
            session = f"control-{self._tag}-{self._next}"
            self._next += 1
            home = self.home(session)
            if home in self._spare:
                self._spare[home].append(session)

    def spares(self) -> dict[str, list[str]]:
        return self._spare

    def take(self, worker: str) -> str:
        if not self._spare[worker]:
            self.fill(len(self._spare[worker]) + 1)
        return self._spare[worker].pop()


@dataclass(frozen=True, slots=True)
class _Node:
    name: str
    weight: float = 1.0


def check_homes(url: str, homes: ControlHomes, sample: int = 4) -> None:
    """Ask the router (/admin/sessions) where a few control sessions are homed; raise if the
    ring computed here says otherwise."""
    for worker, sessions in homes.spares().items():
        for session in sessions[:sample]:
            request = urllib.request.Request(
                f"{url}/admin/sessions/{session}",
                headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
            )
            with urllib.request.urlopen(request, timeout=5) as resp:
                said = json.load(resp)["home"]
            if said != worker:
                raise RuntimeError(f"the router homes {session} on {said}, not on {worker}")


async def placed_now(url: str, sessions: Sequence[str]) -> list[str]:
    """Where the router has each session now (/admin/sessions): its pin, which a resume
    moves to the worker that continued it, else where it would place it ("" for neither)."""
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:

        async def one(session: str) -> str:
            async with http.get(f"{url}/admin/sessions/{session}") as resp:
                found = await resp.json()
            return found.get("pinned") or found.get("worker") or ""

        return list(await asyncio.gather(*(one(s) for s in sessions)))


def read_router_resumes(text: str) -> RouterResumes:
    """Resume outcomes and the pause histogram from a router's /metrics text."""
    outcomes: Counter[str] = Counter()
    pauses = 0
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text):
        if family.name == "kvrouter_stream_resumes":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    outcomes[sample.labels["outcome"]] += int(sample.value)
        elif family.name == "kvrouter_stream_resume_pause_seconds":
            for sample in family.samples:
                if sample.name.endswith("_count"):
                    pauses = int(sample.value)
                elif sample.name.endswith("_bucket"):
                    buckets.append((float(sample.labels["le"]), sample.value))
    return RouterResumes(outcomes, pauses, tuple(sorted(buckets)))


def scrape_router(url: str) -> RouterResumes:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        return read_router_resumes(resp.read().decode())


def judge_resumes(records: Sequence[Record], kill: Kill, victim: str) -> tuple[int, Resumes]:
    """(streams cut, the victim's streams under way at the kill)."""
    cut = sum(1 for r in records if r.status == 200 and not r.ok)
    at = kill.at if kill.at is not None else float("inf")
    streams = under_way(records, victim, at)
    resumed = [r for r in streams if r.ok]
    pauses = [p for p in (resume_pause(r.events, at) for r in resumed) if p is not None]
    return cut, Resumes(len(streams), len(resumed), tuple(pauses))


def judge(
    label: str,
    records: Sequence[Record],
    timeline: Timeline,
    victim: str,
    width: float,
    kill: Kill,
    router: RouterResumes,
) -> FailoverResult:
    cut, resumes = judge_resumes(records, kill, victim)
    before = phase(records, timeline.kill / 2, timeline.kill)
    points = rolling_hits(records, width)
    after_restart = [r for r in records if r.ok and r.started >= timeline.restart]
    return FailoverResult(
        label=label,
        records=tuple(records),
        timeline=timeline,
        kill=kill,
        errors=sum(1 for r in records if not r.ok and r.status != 200),
        cut_streams=cut,
        resumes=resumes,
        router=router,
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


def control_burst(
    name: str,
    prefills: Mapping[str, int],
    targets: Mapping[str, str],
    homes: ControlHomes,
    seed: str,
) -> ControlBurst:
    """One control per stream (by session): a fresh session homed on that stream's target
    worker, of one turn of fresh text as long as the stream's prefill, sent at once."""
    rng = random.Random(f"{seed}-{name}")
    burst = ControlBurst(name)
    for stream, tokens in prefills.items():
        session = homes.take(targets[stream])
        burst.intended[session] = targets[stream]
        turn = TurnPlan((control_text(rng, tokens),), CONTROL_MAX_TOKENS, 0.0, at=0.0)
        burst.users.append([SessionPlan(session, "", (turn,))])
    return burst


def resumed_all(streams: Sequence[Stream], since: float) -> bool:
    """Every stream has ended or received an event after `since`."""
    return all(s.ended is not None or (s.events and s.events[-1] > since) for s in streams)


async def play_with_failure(
    fleet: LocalFleet,
    url: str,
    users: list,
    scale: float,
    timeline: Timeline,
    seed: int,
    homes: ControlHomes,
    label: str,
    at_kill: bool,
) -> tuple[list[Record], Kill]:
    """The workload with the victim killed and restarted; `at_kill`: a control burst sent
    the moment it is killed (targets from the ring walk)."""
    victim = fleet.names[VICTIM]
    kill = Kill()

    def watch(started: float, ended: float) -> bool:  # under way at the kill
        return kill.at is not None and started <= kill.at < ended

    total = sum(len(t.users_text) for u in users for s in u for t in s.turns)
    player = Player(url, scale, on_record=progress(label, total), watch=watch)

    async def chaos() -> None:
        await asyncio.sleep(timeline.kill)
        # What each stream's continuation will prefill, as it stands when the victim dies.
        streams = [s for s in player.in_flight() if s.worker == victim]
        for stream in streams:
            kill.prefills[stream.session] = continuation_tokens(stream.messages, stream.received)
            kill.ring[stream.session] = homes.survivor(stream.session)
        if at_kill:
            burst = control_burst("kill", kill.prefills, kill.ring, homes, f"{seed}-{label}")
            kill.bursts.append(burst)
        kill.at = player.now()
        # Reaped off the loop, so the events still arriving keep their own arrival times.
        killed = asyncio.create_task(asyncio.to_thread(fleet.kill, VICTIM))
        sending = [asyncio.create_task(send_burst(url, scale, b, player.now)) for b in kill.bursts]
        await killed
        kill.reaped = player.now()
        sent = "; control burst sent" if sending else ""
        print(f"\n    killed {victim} (SIGKILL) with {len(streams)} streams under way on it{sent}",
              file=sys.stderr, flush=True)  # fmt: skip
        if streams:  # ask the router where it continued them, once they all have
            until = kill.at + (timeline.restart - timeline.kill) / 2
            while player.now() < until:
                if resumed_all(streams, kill.reaped):
                    break
                await asyncio.sleep(0.005)
            placed = await placed_now(url, [s.session for s in streams])
            kill.continued_on = {s.session: w for s, w in zip(streams, placed, strict=True) if w}
        await asyncio.sleep(max(0.0, timeline.restart - player.now()))
        print(f"\n    restarting {victim}", file=sys.stderr, flush=True)
        await asyncio.to_thread(fleet.restart, VICTIM)
        await asyncio.gather(*sending)

    chaos_task = asyncio.create_task(chaos())
    await player.run(users, seed)
    await chaos_task
    print(file=sys.stderr)
    return player.records, kill


async def send_burst(url: str, scale: float, burst: ControlBurst, clock) -> None:
    """Send every control of `burst` at once and keep their records."""
    burst.sent_at = clock()
    control = Player(url, scale)
    await control.run(burst.users)
    burst.records = control.records


async def play_control_run(
    url: str,
    users: list,
    scale: float,
    timeline: Timeline,
    seed: int,
    homes: ControlHomes,
    label: str,
    kill: Kill,
) -> ControlBurst:
    """The same workload again up to the kill, with no kill: at its moment, one control per
    stream the victim had under way in the failover run, as long as what its continuation
    prefilled, homed on the survivor that continued it. The workload stops once they answer."""
    total = sum(len(t.users_text) for u in users for s in u for t in s.turns)
    player = Player(url, scale, on_record=progress(f"{label}, control run", total))
    burst = control_burst("twin", kill.prefills, kill.targets(homes), homes, f"{seed}-{label}")
    playing = asyncio.create_task(player.run(users, seed))
    await asyncio.sleep(timeline.kill)
    await send_burst(url, scale, burst, player.now)
    playing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await playing
    print(f"\n    control burst: {len(burst.records)} requests at the kill's moment, no kill",
          file=sys.stderr, flush=True)  # fmt: skip
    return burst


def render(results: Sequence[FailoverResult], scale: float) -> str:
    def ms(value: float) -> str:
        return f"{value / scale * 1e3:.0f}"

    def secs(value: float | None) -> str:
        return "never" if value is None else f"{value:.1f} s"

    header = ["variant", "errors", "hit before/outage/after",
              "TTFT p50 before/outage/after (ms)", "TTFT p99 outage/after (ms)",
              "recovery after kill", "after restart", "victim share after"]  # fmt: skip
    rows = [
        [
            r.label, str(r.errors),
            f"{r.before.hit_ratio:.1%} / {r.outage.hit_ratio:.1%} / {r.after.hit_ratio:.1%}",
            f"{ms(r.before.ttft_p50)} / {ms(r.outage.ttft_p50)} / {ms(r.after.ttft_p50)}",
            f"{ms(r.outage.ttft_p99)} / {ms(r.after.ttft_p99)}",
            secs(r.recovery_after_kill), secs(r.recovery_after_restart),
            f"{r.victim_share_after:.0%}",
        ]
        for r in results
    ]  # fmt: skip
    return table(rows, header)


BURSTS = (("twin", "(control run)"), ("kill", "(at the kill)"))


def render_resumes(results: Sequence[FailoverResult], scale: float) -> str:
    def ms(value: float) -> str:
        return "-" if value != value else f"{value / scale * 1e3:.0f}"

    names = [(name, title) for name, title in BURSTS if any(r.kill.burst(name) for r in results)]
    header = ["variant", "streams cut", "under way on victim", "resumed router / client",
              "router pauses (p99 bucket)", "pause p50 / p99 (ms)"]  # fmt: skip
    for _, title in names:
        header += [f"control TTFT p99 {title} (ms)", f"pause/control {title}"]
    rows = []
    for r in results:
        x, router = r.resumes, r.router
        row = [
            r.label, str(r.cut_streams), str(x.under_way),
            f"{router.outcomes.get('resumed', 0)} / {x.resumed}",
            f"{router.pauses} (<= {ms(router.pause_quantile(0.99))})",
            f"{ms(x.pause_p50)} / {ms(x.pause_p99)} (n={len(x.pauses)})",
        ]  # fmt: skip
        for name, _ in names:
            burst = r.kill.burst(name)
            ttfts = burst.ttfts if burst is not None else []
            failed = f", {burst.failed} failed" if burst is not None and burst.failed else ""
            ratio = pause_ratio(x.pauses, ttfts)
            row += [f"{ms(percentile(ttfts, 0.99))} (n={len(ttfts)}{failed})",
                    "-" if ratio != ratio else f"{ratio:.2f} {verdict(ratio)}"]  # fmt: skip
        rows.append(row)
    return table(rows, header)


def notes(results: Sequence[FailoverResult]) -> list[str]:
    """What the tables leave out: other resume outcomes, controls away from their worker."""
    lines = []
    for r in results:
        other = {k: v for k, v in r.router.outcomes.items() if k != "resumed" and v}
        if other:
            lines.append(f"  {r.label}: router resume outcomes besides resumed: {other}")
        for burst in r.kill.bursts:
            if burst.away:
                lines.append(f"  {r.label}: {burst.away} of {len(burst.records)} controls "
                             f"({burst.name}) served away from their ring home")  # fmt: skip
        missing = len(r.kill.prefills) - len(r.kill.continued_on)
        if missing:
            lines.append(f"  {r.label}: the router named no worker for {missing} resumed "
                         "streams; their controls were homed by the ring walk")  # fmt: skip
    return lines


def save_json(results: Sequence[FailoverResult], victim: str, scale: float):
    """Each variant's kill, stream by stream: the victim's streams under way then (the tokens
    their continuation prefilled, the cached tokens reported, the pause) and the control
    requests (where they were meant to go and went, their prompt, their TTFT). Seconds."""
    from loadtests.plots import OUT

    doc: dict[str, Any] = {"time_scale": scale, "victim": victim, "variants": []}
    for r in results:
        at = r.kill.at if r.kill.at is not None else float("inf")
        streams = [
            {"session": x.session, "ok": x.ok, "error": x.error,
             "continuation_prompt_tokens": r.kill.prefills.get(x.session),
             "continued_on": r.kill.continued_on.get(x.session),
             "cached_tokens": x.cached_tokens, "pause": resume_pause(x.events, at),
             "events_before_kill": sum(1 for t in x.events if t <= at)}
            for x in under_way(r.records, victim, at)
        ]  # fmt: skip
        bursts = [
            {"name": b.name, "sent_at": b.sent_at, "controls": [
                {"session": c.session, "intended": b.intended.get(c.session),
                 "worker": c.worker, "prompt_tokens": c.prompt_tokens,
                 "cached_tokens": c.cached_tokens, "ttft": c.ttft, "error": c.error}
                for c in b.records
            ]}
            for b in r.kill.bursts
        ]  # fmt: skip
        doc["variants"].append({
            "label": r.label, "kill_at": r.kill.at, "reaped_at": r.kill.reaped,
            "streams_cut": r.cut_streams, "router_resumes": dict(r.router.outcomes),
            "router_pauses": r.router.pauses, "streams": streams, "bursts": bursts,
        })  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{OUT_NAME}.json"
    path.write_text(json.dumps(doc, indent=2))
    return path


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
        dots = ttft.plot([x.started for x in ok], [x.ttft for x in ok], ".", markersize=2,
                         label=r.label)  # fmt: skip
        colour = dots[0].get_color()
        at = r.kill.at if r.kill.at is not None else r.timeline.kill
        ttft.plot([at] * len(r.resumes.pauses), r.resumes.pauses, "x", color=colour,
                  markersize=8)  # fmt: skip
        for burst in r.kill.bursts:
            sent = burst.sent_at if burst.sent_at is not None else at
            marker = "_" if burst.name == "kill" else "+"
            ttft.plot([sent] * len(burst.ttfts), burst.ttfts, marker, color=colour,
                      markersize=10)  # fmt: skip
    for ax in (hits, ttft):
        ax.axvline(results[0].timeline.kill, color="red", linestyle="--")
        ax.axvline(results[0].timeline.restart, color="green", linestyle="--")
    hits.set_ylabel(f"hit ratio ({width:.0f} s window)")
    ttft.set_ylabel("TTFT (wall s)")
    ttft.set_yscale("log")
    ttft.set_xlabel("wall seconds (red: kill -9, green: restart); x: resume pauses; "
                    "control TTFTs: - at the kill, + in the control run")  # fmt: skip
    hits.legend()
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{OUT_NAME}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@contextlib.contextmanager
def fresh_router(fleet: LocalFleet, sections: dict[str, Any]) -> Iterator[RouterProcess]:
    """Every worker up with an empty cache, and a router of its own in front of them."""
    if not fleet.workers[VICTIM].running:
        fleet.restart(VICTIM)
    fleet.reset_caches()
    with fleet.router_process(**sections) as router:
        yield router


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--controls", choices=("run", "kill", "none"), default="run",
                        help="the control burst: in a control run (default), at the kill in "
                        "the failover run itself, or none")  # fmt: skip
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
        victim = fleet.names[VICTIM]
        for number, (label, routing) in enumerate(VARIANTS):
            print(f"[failover] {label}", file=sys.stderr, flush=True)
            homes = ControlHomes(fleet.names, victim, f"{ns.seed}-{number}")
            homes.fill(len(users))
            sections = {"routing": {**routing_base, **routing}, "admin": {"token": ADMIN_TOKEN}}
            with fresh_router(fleet, sections) as router:
                check_homes(router.url, homes)
                records, kill = asyncio.run(play_with_failure(
                    fleet, router.url, users, sim.time_scale, timeline, ns.seed, homes, label,
                    at_kill=ns.controls == "kill",
                ))  # fmt: skip
                counted = scrape_router(router.url)
            if ns.controls == "run" and kill.prefills:
                with fresh_router(fleet, sections) as router:
                    kill.bursts.append(asyncio.run(play_control_run(
                        router.url, users, sim.time_scale, timeline, ns.seed, homes, label, kill,
                    )))  # fmt: skip
            results.append(judge(label, records, timeline, victim, width, kill, counted))
    print(render(results, sim.time_scale))
    print()
    print(render_resumes(results, sim.time_scale))
    for line in notes(results):
        print(line)
    print(f"plot: {plot(results, width)}; stream by stream: "
          f"{save_json(results, victim, sim.time_scale)}")  # fmt: skip
    print(f"TTFT and pauses in simulated ms (wall / {sim.time_scale}); recovery times in wall "
          f"seconds; pause/control: pause p99 over control TTFT p99, target <= {PAUSE_TARGET}; "
          f"whole run {time.monotonic() - started:.0f} s")  # fmt: skip
    return 1 if any(r.errors or r.cut_streams for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
