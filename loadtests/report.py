"""Figures of one run from its request records: cache hit ratio, TTFT, throughput, load spread,
where each turn was placed; and how to print figures of several runs as ranges."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from loadtests.player import Record


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(frozen=True, slots=True)
class LoadSpread:
    """`peak_over_mean`: the busiest worker's time-averaged in-flight count over the mean of
    all workers'. `instant`: the same ratio at each instant, averaged over time."""

    peak_over_mean: float
    instant: float
    mean_inflight: float


def load_spread(records: Sequence[Record], workers: Sequence[str], window: tuple[float, float]):
    """In-flight requests per worker, integrated over `window` from request start/end times."""
    start, end = window
    events: list[tuple[float, int, str]] = []
    for r in records:
        if r.worker and r.ended > start and r.started < end:
            events.append((max(r.started, start), 1, r.worker))
            events.append((min(r.ended, end), -1, r.worker))
    events.sort()
    inflight = dict.fromkeys(workers, 0)
    area = dict.fromkeys(workers, 0.0)
    instant_area = busy_time = 0.0
    last = start
    for at, delta, worker in events:
        span = at - last
        if span > 0:
            total = sum(inflight.values())
            for name, count in inflight.items():
                area[name] += count * span
            if total:
                instant_area += max(inflight.values()) / (total / len(workers)) * span
                busy_time += span
            last = at
        inflight[worker] = inflight.get(worker, 0) + delta
    duration = max(end - start, 1e-9)
    means = [a / duration for a in area.values()]
    overall = sum(means) / len(means) if means else 0.0
    return LoadSpread(
        max(means) / overall if overall else float("nan"),
        instant_area / busy_time if busy_time else float("nan"),
        overall,
    )


def steady_window(records: Sequence[Record]) -> tuple[float, float]:
    """From the moment every user has started until the first user finished: the part of the
    run where the whole population is active. The whole run when that is empty."""
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    for r in records:
        first[r.user] = min(first.get(r.user, r.started), r.started)
        last[r.user] = max(last.get(r.user, r.ended), r.ended)
    if not first:
        return 0.0, 0.0
    start, end = max(first.values()), min(last.values())
    if end - start < 1.0:
        return min(first.values()), max(last.values())
    return start, end


@dataclass(frozen=True, slots=True)
class Summary:
    label: str
    requests: int
    errors: int
    prompt_tokens: int
    cached_tokens: int
    ttft_p50: float
    ttft_p99: float
    throughput: float
    wall: float
    spread: LoadSpread
    routes: Counter[str] = field(default_factory=Counter)
    rehomed: Counter[str] = field(default_factory=Counter)
    one_worker: float = float("nan")
    spill_prompt_tokens: int = 0
    spill_cached_tokens: int = 0
    spill_first_turns: int = 0

    @property
    def hit_ratio(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def spills(self) -> int:
        """Requests sent away from a saturated (or full) cache holder."""
        return self.routes.get("spill", 0)

    @property
    def spill_uncached(self) -> float:
        """The spilled requests' uncached prompt tokens, in points of hit ratio (an upper
        bound of what the moves cost: a first turn had nothing but shared prefixes cached
        anywhere)."""
        uncached = self.spill_prompt_tokens - self.spill_cached_tokens
        return 100 * uncached / self.prompt_tokens if self.prompt_tokens else 0.0

    def prefill_busy(self, workers: int, prefill_ms_per_token: float, scale: float) -> float:
        """Share of the workers' time spent prefilling uncached tokens (1.0 = saturated)."""
        uncached = self.prompt_tokens - self.cached_tokens
        simulated = self.wall / scale if scale else 0.0
        return uncached * prefill_ms_per_token / 1000 / (workers * simulated) if simulated else 0.0


def summarise(
    label: str, records: Sequence[Record], workers: Sequence[str], wall: float
) -> Summary:
    ok = [r for r in records if r.ok]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    return Summary(
        label=label,
        requests=len(records),
        errors=len(records) - len(ok),
        prompt_tokens=sum(r.prompt_tokens for r in ok),
        cached_tokens=sum(r.cached_tokens for r in ok),
        ttft_p50=percentile(ttfts, 0.5),
        ttft_p99=percentile(ttfts, 0.99),
        throughput=len(ok) / wall if wall else 0.0,
        wall=wall,
        spread=load_spread(records, workers, steady_window(records)),
        routes=Counter(r.route for r in records),
        rehomed=Counter(r.rehomed for r in records if r.rehomed),
        one_worker=sessions_on_one_worker(records),
        spill_prompt_tokens=sum(r.prompt_tokens for r in ok if r.route == "spill"),
        spill_cached_tokens=sum(r.cached_tokens for r in ok if r.route == "spill"),
        spill_first_turns=sum(1 for r in ok if r.route == "spill" and r.turn == 1),
    )


def ttft_by_turn(records: Sequence[Record], turns: int = 12) -> tuple[float, ...]:
    """TTFT p50 of the successful requests of each turn number 1..`turns` (NaN where none)."""
    by_turn: defaultdict[int, list[float]] = defaultdict(list)
    for r in records:
        if r.ok and r.ttft is not None:
            by_turn[r.turn].append(r.ttft)
    return tuple(percentile(by_turn.get(t, []), 0.5) for t in range(1, turns + 1))


def sessions_on_one_worker(records: Sequence[Record]) -> float:
    """Share of the sessions with at least two successful requests that were all served by
    one worker."""
    seen: defaultdict[str, set[str]] = defaultdict(set)
    count: Counter[str] = Counter()
    for r in records:
        if r.ok:
            seen[r.session].add(r.worker)
            count[r.session] += 1
    several = [s for s, n in count.items() if n >= 2]
    return sum(1 for s in several if len(seen[s]) == 1) / len(several) if several else float("nan")


def placements(records: Sequence[Record]) -> dict[tuple[str, int], str]:
    """(session, turn) -> the worker that served it, for every successful request (the first
    one of a turn that fanned out)."""
    placed: dict[tuple[str, int], str] = {}
    for r in sorted(records, key=lambda r: r.started):
        if r.ok:
            placed.setdefault((r.session, r.turn), r.worker)
    return placed


def same_placement(a: dict[tuple[str, int], str], b: dict[tuple[str, int], str]) -> float:
    """Share of the turns served in both runs that went to the same worker in both."""
    common = a.keys() & b.keys()
    return sum(1 for k in common if a[k] == b[k]) / len(common) if common else float("nan")


def span(values: Sequence[float], fmt: str = "{:.1%}") -> str:
    """`min` to `max` of `values` in `fmt`, joined by an en dash (one value when they print
    the same)."""
    if not values:
        return ""
    low, high = fmt.format(min(values)), fmt.format(max(values))
    return low if low == high else f"{low}\u2013{high}"


def per_worker(records: Sequence[Record]) -> dict[str, int]:
    counts: defaultdict[str, int] = defaultdict(int)
    for r in records:
        counts[r.worker] += 1
    return dict(counts)


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    line = "  ".join("-" * w for w in widths)

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True)))  # fmt: skip

    return "\n".join([fmt(header), line, *(fmt(r) for r in rows)])


@dataclass(frozen=True, slots=True)
class RunResult:
    """One policy on one seeded workload: its figures, where each turn went, and what the
    workers said about their queues while it ran (see `loadtests.sampler`)."""

    policy: str
    seed: int
    summary: Summary
    placed: dict[tuple[str, int], str]
    queued: dict[str, float]
    waiting: tuple[tuple[float, float], ...]
    peak_kv: float
    cache_fill: float
    load_average: float
    turn_ttft_p50: tuple[float, ...] = ()

    @property
    def hottest(self) -> str:
        """The worker whose queue was non-empty in the largest share of samples."""
        return max(self.queued, key=lambda w: (self.queued[w], w)) if self.queued else ""

    @property
    def hottest_queued(self) -> float:
        return self.queued.get(self.hottest, float("nan"))
