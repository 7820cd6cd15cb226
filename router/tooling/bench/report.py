"""The table `kvrouter bench` prints: one row per metric against its target, and notes on how
the figures were taken."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from router.tooling.bench.measure import RSS_RAMP_RATE
from router.tooling.bench.phases import RSS_CONNECT_TIMEOUT, Results, Setup
from router.tooling.bench.targets import DIRECT, NAIVE, ROUTER, RUST

TARGETS = {"throughput_vs_rust": 1.0, "added_p50_ms": 1.0, "added_p99_ms": 5.0,
           "sse_chunks_per_s": 20_000.0, "rss_mb": 300.0}  # fmt: skip


@dataclass(frozen=True)
class Row:
    metric: str
    router: float | None
    direct: float | None
    rust: float | None
    naive: float | None
    ratio: str
    target: str
    met: bool | None


def _ratio(a: float | None, b: float | None, label: str) -> str:
    return f"{a / b:.2f}x {label}" if a is not None and b else "-"


def _added(results: Results, name: str, key: str) -> float | None:
    if name not in results.latency or DIRECT not in results.latency:
        return None
    return results.latency[name][key] - results.latency[DIRECT][key]


def _throughput_row(results: Results) -> Row:
    router, rust = results.best_rps(ROUTER), results.best_rps(RUST)
    met = router / rust >= TARGETS["throughput_vs_rust"] if router and rust else None
    return Row(
        "throughput, 1 core (req/s)", router, results.best_rps(DIRECT), rust,
        results.best_rps(NAIVE), _ratio(router, rust, "rust"), ">= 1.00x rust", met,
    )  # fmt: skip


def _cpu_row(results: Results) -> Row:
    router, rust = results.least_cpu(ROUTER), results.least_cpu(RUST)
    return Row(
        "proxy CPU per request (us)", router, None, rust, results.least_cpu(NAIVE),
        _ratio(router, rust, "rust"), "(informational)", None,
    )  # fmt: skip


def _latency_row(results: Results, key: str, limit: float) -> Row:
    router = _added(results, ROUTER, key)
    return Row(
        f"added latency {key[:3]} @200/s (ms)", router, results.latency.get(DIRECT, {}).get(key),
        _added(results, RUST, key), _added(results, NAIVE, key), "-", f"<= {limit:g} ms",
        None if router is None else router <= limit,
    )  # fmt: skip


def _sse_row(results: Results) -> Row:
    rate = {name: r["events_per_s"] for name, r in results.sse.items()}
    router, floor = rate.get(ROUTER), TARGETS["sse_chunks_per_s"]
    return Row(
        "SSE chunks/s through 1 process", router, rate.get(DIRECT), rate.get(RUST), None,
        _ratio(router, rate.get(RUST), "rust"), f">= {floor:,.0f}/s",
        None if router is None else router >= floor,
    )  # fmt: skip


def _rss_row(results: Results) -> Row:
    held = {name: r["held_mb"] for name, r in results.rss.items()}
    router, limit = held.get(ROUTER), TARGETS["rss_mb"]
    streams = results.rss.get(ROUTER, {}).get("ready", 0)
    met = None if router is None else router <= limit and streams >= 1000
    return Row(
        f"RSS with {streams} open streams (MB)", router, None, held.get(RUST), None,
        _ratio(router, held.get(RUST), "rust"), f"<= {limit:g} MB", met,
    )  # fmt: skip


def build_rows(results: Results) -> list[Row]:
    rows = []
    if results.throughput:
        rows.append(_throughput_row(results))
        rows.append(_cpu_row(results))
    if results.latency:
        rows.append(_latency_row(results, "p50_ms", TARGETS["added_p50_ms"]))
        rows.append(_latency_row(results, "p99_ms", TARGETS["added_p99_ms"]))
    if results.sse:
        rows.append(_sse_row(results))
    if results.rss:
        rows.append(_rss_row(results))
    return rows


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def format_table(rows: Sequence[Row]) -> str:
    head = ("metric", ROUTER, DIRECT, RUST, NAIVE, "ratio", "target", "met?")
    body = [
        (r.metric, _cell(r.router), _cell(r.direct), _cell(r.rust), _cell(r.naive), r.ratio,
         r.target, "-" if r.met is None else ("yes" if r.met else "NO"))
        for r in rows
    ]  # fmt: skip
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    lines = []
    for i, line in enumerate([head, *body]):
        cells = [line[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(line[1:5], widths[1:5], strict=True)]
        cells += [c.ljust(w) for c, w in zip(line[5:], widths[5:], strict=True)]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def notes(results: Results, setup: Setup) -> list[str]:
    meta = results.meta
    out = [
        f"mode: {meta['mode']}; {setup.cores.describe()}",
        f"load generator: {meta['loadgen_detail']}",
        "upstreams: throughput + latency use fast_upstream.py (2 processes; the sim "
        "tops out near 4k req/s on a shared core); SSE and RSS use the simulated worker "
        "(--time-scale 0 for SSE; 100 ms/token decode for RSS, where kvrouter gets "
        f"timeouts.connect: {RSS_CONNECT_TIMEOUT:g}; streams open at {RSS_RAMP_RATE}/s)",
        "direct column: the upstream without a proxy (latency rows: absolute, not added)",
    ]
    spread = []
    for name, runs in results.throughput.items():
        rates = [r["rps"] for r in runs]
        if len(rates) > 1:
            spread.append(f"{name} {min(rates):,.0f}-{max(rates):,.0f}")
    if spread:
        out.append(f"throughput is the best of {setup.plan.rounds} rounds; range: "
                   + ", ".join(spread))  # fmt: skip
    router, naive = results.best_rps(ROUTER), results.best_rps(NAIVE)
    rust = results.best_rps(RUST)
    if router and naive:
        out.append(f"kvrouter/naive {router / naive:.2f}x"
                   + (f"; naive/rust {naive / rust:.2f}x" if rust else ""))  # fmt: skip
    rust_line = meta.get("rust_command") or meta["rust_missing"]
    out.append(f"vllm-router: {rust_line}")
    out.append(f"wall time {meta['wall_seconds']:.0f}s; results in {meta['out']}")
    return out
