"""PNG plots of the regimes under loadtests/out/: one figure per regime."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import mean

from loadtests.oracle import CacheFigures
from loadtests.regimes import Regime
from loadtests.report import RunResult

OUT = Path(__file__).resolve().parent / "out"
_COLOURS = {"consistent_hash": "tab:blue", "cost_aware": "tab:green",
            "least_loaded": "tab:orange", "round_robin": "tab:gray"}  # fmt: skip


def _runs(results: Mapping[int, Mapping[str, RunResult]], policy: str) -> list[RunResult]:
    return [runs[policy] for _, runs in sorted(results.items()) if policy in runs]


def _bars(ax, policies: Sequence[str], values: Sequence[Sequence[float]], offset: float = 0.0,
          width: float = 0.6, label: str | None = None, colour: str | None = None,
          fmt: str = "{:.0f}") -> None:  # fmt: skip
    """A bar at the mean of each policy's runs, labelled with it, and a black dot per run."""
    xs = [i + offset for i in range(len(policies))]
    colours = colour or [_COLOURS.get(p, "tab:purple") for p in policies]
    means = [mean(v) for v in values]
    bars = ax.bar(xs, means, width=width, color=colours, alpha=0.8, label=label)
    ax.bar_label(bars, [fmt.format(m) for m in means], fontsize=8, padding=2)
    for x, runs in zip(xs, values, strict=True):
        ax.plot([x] * len(runs), runs, "o", color="black", markersize=3)


def plot_regime(
    regime: Regime,
    oracles: Mapping[int, CacheFigures],
    results: Mapping[int, Mapping[str, RunResult]],
    policies: Sequence[str],
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    scale = regime.sim.time_scale
    fig = plt.figure(figsize=(15, 8.5))
    grid = fig.add_gridspec(2, 3, height_ratios=(1.1, 1.0))
    hits, ttft, queued = (fig.add_subplot(grid[0, i]) for i in range(3))
    series = fig.add_subplot(grid[1, :])
    runs = {p: _runs(results, p) for p in policies}

    _bars(hits, policies, [[r.summary.hit_ratio * 100 for r in runs[p]] for p in policies],
          fmt="{:.1f}")  # fmt: skip
    oracle = [o.hit_ratio * 100 for o in oracles.values()]
    hits.axhspan(min(oracle) - 0.1, max(oracle) + 0.1, color="black", alpha=0.25)
    hits.axhline(mean(oracle), color="black", linestyle="--", label="oracle")
    hits.set_ylim(max(0, min(min(oracle), *(min(r.summary.hit_ratio * 100 for r in v)
                                           for v in runs.values())) - 10), 100)  # fmt: skip
    hits.set_title("prefix-cache hit ratio (%)")
    hits.legend(loc="lower left")

    p50 = [[r.summary.ttft_p50 / scale * 1e3 for r in runs[p]] for p in policies]
    p99 = [[r.summary.ttft_p99 / scale * 1e3 for r in runs[p]] for p in policies]
    _bars(ttft, policies, p50, -0.2, 0.4, "p50", "tab:cyan")
    _bars(ttft, policies, p99, 0.2, 0.4, "p99", "tab:red")
    ttft.set_yscale("log")
    ttft.set_ylim(min(min(v) for v in p50) / 2, max(max(v) for v in p99) * 3)
    ttft.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ttft.yaxis.set_minor_formatter(ticker.NullFormatter())
    ttft.set_title("TTFT (simulated ms, log scale)")
    ttft.legend(loc="upper left")

    _bars(queued, policies, [[r.hottest_queued * 100 for r in runs[p]] for p in policies])
    queued.axhline(50, color="black", linestyle=":", linewidth=1)
    queued.set_ylim(0, 105)
    queued.set_title("hottest worker: samples with requests waiting (%)")
    for ax in (hits, ttft, queued):
        ax.set_xticks(range(len(policies)), [p.replace("_", "_\n") for p in policies])

    first = min(results)
    for policy in policies:
        run = results[first].get(policy)
        if run is None or not run.waiting:
            continue
        ts = [t / scale for t, _ in run.waiting]
        series.step(ts, [w for _, w in run.waiting], where="post", linewidth=1.2,
                    color=_COLOURS.get(policy), label=f"{policy} ({run.hottest})")  # fmt: skip
    series.set_ylim(bottom=-0.1, top=max(1.0, series.get_ylim()[1]))
    series.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    series.set_xlabel("simulated seconds since the start of the run")
    series.set_ylabel("requests waiting")
    series.set_title(f"requests held by the batch limit (--max-running {regime.max_running}) "
                     f"on each policy's hottest worker, seed {first}")  # fmt: skip
    series.legend(loc="upper right")

    fig.suptitle(f"{regime.title}: {len(oracles)} run(s), bars = mean, dots = each run",
                 fontsize=13)  # fmt: skip
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"regime-{regime.name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_engine(
    regime: Regime, results: Mapping[int, Mapping[str, RunResult]], policies: Sequence[str]
) -> Path:
    """`make bench-engine`: cached-token ratio, TTFT p50/p99 and each turn's TTFT p50 per
    policy on real llama.cpp servers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {p: _runs(results, p) for p in policies}
    fig, (hits, ttft, turns) = plt.subplots(1, 3, figsize=(15, 5))
    _bars(hits, policies, [[r.summary.hit_ratio * 100 for r in runs[p]] for p in policies],
          fmt="{:.1f}")  # fmt: skip
    hits.set_ylim(0, 100)
    hits.set_title("cached prompt tokens (%)")
    p50 = [[r.summary.ttft_p50 * 1e3 for r in runs[p]] for p in policies]
    p99 = [[r.summary.ttft_p99 * 1e3 for r in runs[p]] for p in policies]
    _bars(ttft, policies, p50, -0.2, 0.4, "p50", "tab:cyan")
    _bars(ttft, policies, p99, 0.2, 0.4, "p99", "tab:red")
    ttft.set_title("TTFT (ms)")
    ttft.legend(loc="upper left")
    for ax in (hits, ttft):
        ax.set_xticks(range(len(policies)), [p.replace("_", "_\n") for p in policies])
    count = regime.compared_turns
    for policy in policies:
        medians = [sorted(r.turn_ttft_p50[t] * 1e3 for r in runs[policy])[len(runs[policy]) // 2]
                   for t in range(count)]  # fmt: skip
        turns.plot(range(1, count + 1), medians, "o-", color=_COLOURS.get(policy), label=policy)
    turns.set_xticks(range(1, count + 1))
    turns.set_ylim(bottom=0)
    turns.set_xlabel("turn of the session")
    turns.set_title("TTFT p50 by turn (ms; median over runs)")
    turns.legend(loc="upper left")
    fig.suptitle(f"{regime.workers} llama.cpp servers (tiny random model, CPU): {len(results)} "
                 "run(s), bars = mean, dots = each run", fontsize=12)  # fmt: skip
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "engine.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
