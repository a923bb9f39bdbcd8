"""Plots: the report's three figures comparing runs, drawn from their summaries (`thinkrl report`).

    fig = accuracy_figure([collect_run(d) for d in dirs])   # a matplotlib Figure (no pyplot, Agg on save)
    paths = write_plots(summaries, "runs/report")            # the PNGs named in PLOTS / FIGURES

Figures: held-out accuracy (avg@k, %) vs training samples consumed, with a dashed line at the baseline's
final accuracy (the first run's, or the mean over its scheme's seeds); the mean solution length of each
round's training rollouts; the share of completion tokens in incorrect thoughts per round. The quantities
are defined in `thinkrl/summary.py`. One line per run; a scheme whose runs differ only by seed is drawn as
thin seed lines, a mean line and a band spanning min..max over seeds (the mean only where every seed has
a point). Each PNG is written to a temporary name, then renamed.

Against the paper: the figures are thinkrl's own comparison of runs, not part of the method (docs/PAPER.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from thinkrl.summary import RunSummary, by_scheme

PLOTS = {"accuracy_vs_samples.png": "held-out accuracy vs training samples consumed",
         "length.png": "mean solution length per round",
         "incorrect_thoughts.png": "share of tokens in incorrect thoughts per round"}


# --------------------------------------------------------------------------------------------- plots

def _seed_group(runs: Sequence[RunSummary]) -> bool:
    """Several runs of a scheme that differ only by seed: drawn as mean ± band."""
    seeds = [r.seed for r in runs]
    return len(runs) > 1 and None not in seeds and len(set(seeds)) == len(seeds)


def _series(points: Iterable[tuple[float, float, float | None]]) -> tuple[np.ndarray, np.ndarray]:
    pts = sorted((k, x, y) for k, x, y in points if x is not None and y is not None)
    return np.array([p[1] for p in pts], dtype=float), np.array([p[2] for p in pts], dtype=float)


def _acc_points(s: RunSummary) -> list[tuple[float, float, float | None]]:
    return [(e.trained_rounds, e.samples_consumed, 100 * e.avg_at_k) for e in s.evals]


def _round_points(attr: str, scale: float):
    def points(s: RunSummary) -> list[tuple[float, float, float | None]]:
        return [(r.round, r.round, None if getattr(r, attr) is None else scale * getattr(r, attr)) for r in s.rounds]
    return points


def _draw(ax, summaries: Sequence[RunSummary], points_of) -> int:
    """One line per run; a scheme whose runs differ only by seed: thin seed lines + mean line + min..max band.
    Returns the number of lines drawn with data."""
    import matplotlib

    colors = matplotlib.colormaps["tab10"].colors
    styles = ["-", "--", "-.", ":"]
    drawn = 0
    for gi, (scheme, runs) in enumerate(by_scheme(summaries)):
        color = colors[gi % len(colors)]
        if _seed_group(runs):
            by_key: dict[float, list[tuple[float, float]]] = {}
            with_data = 0
            for s in runs:
                xs, ys = _series(points_of(s))
                if xs.size:
                    with_data += 1
                    ax.plot(xs, ys, color=color, lw=0.9, alpha=0.5, marker=".", ms=4)
                for k, x, y in points_of(s):
                    if x is not None and y is not None:
                        by_key.setdefault(k, []).append((x, y))
            keys = [k for k in sorted(by_key) if len(by_key[k]) == with_data]  # mean only where every seed got
            if not keys:
                continue
            mx = np.array([np.mean([p[0] for p in by_key[k]]) for k in keys])
            ys = [np.array([p[1] for p in by_key[k]]) for k in keys]
            ax.fill_between(mx, [y.min() for y in ys], [y.max() for y in ys], color=color, alpha=0.18, lw=0)
            ax.plot(mx, [y.mean() for y in ys], color=color, lw=2.2, marker="o", ms=4,
                    label=f"{scheme}: mean of {len(runs)} seeds (band: min–max)")
            drawn += 1
            continue
        for ri, s in enumerate(runs):
            xs, ys = _series(points_of(s))
            if not xs.size:
                continue
            lone = xs.size == 1  # a single point (e.g. judged once): big enough not to hide under another line
            ax.plot(xs, ys, color=color, ls=styles[ri % len(styles)], lw=1.8, marker="s" if lone else "o",
                    ms=8 if lone else 4, zorder=3, label=s.label)
            drawn += 1
    return drawn


def _finish(fig, ax, title: str, xlabel: str, ylabel: str, drawn: int, empty: str) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.set_title(title, fontsize=12)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    if drawn:
        ax.legend(fontsize=8.5, loc="best", framealpha=0.9)
    else:
        ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", va="center", color="0.4")
    fig.tight_layout()


def _figure():
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend (Agg canvas on save)

    fig = Figure(figsize=(8.5, 5.0), dpi=110)
    return fig, fig.add_subplot(1, 1, 1)


def _k_label(summaries: Sequence[RunSummary]) -> str:
    ks = sorted({e.k for s in summaries for e in s.evals})
    return f"avg@{ks[0]}" if len(ks) == 1 else "avg@k"


def accuracy_figure(summaries: Sequence[RunSummary]):
    """Held-out accuracy (avg@k, %) vs training samples consumed; a dashed line at the baseline's final
    accuracy (the first run's, or the mean over its scheme's seeds)."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure()
    drawn = _draw(ax, summaries, _acc_points)
    groups = by_scheme(summaries)
    if groups and drawn:
        base_runs = groups[0][1] if _seed_group(groups[0][1]) else summaries[:1]
        accs = [s.final_accuracy for s in base_runs if s.final_accuracy is not None]
        if accs:
            ax.axhline(100 * float(np.mean(accs)), color="0.35", ls=(0, (4, 3)), lw=1,
                       label=f"baseline final ({groups[0][0]}): {100 * float(np.mean(accs)):.1f}%")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    benches = sorted({b for s in summaries for e in s.evals for b in e.benchmarks})
    where = f" on {', '.join(benches)}" if 0 < len(benches) <= 3 else ""
    _finish(fig, ax, f"Held-out accuracy{where} vs training samples", "training samples consumed (rollouts)",
            f"held-out accuracy, {_k_label(summaries)} (%)", drawn, "no eval points yet")
    return fig


def length_figure(summaries: Sequence[RunSummary]):
    """Mean completion length (tokens) of each round's training rollouts."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure()
    drawn = _draw(ax, summaries, _round_points("mean_tokens", 1.0))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _finish(fig, ax, "Mean solution length of the training rollouts", "round (index)",
            "mean solution length (tokens)", drawn, "no finished rollouts yet")
    return fig


def incorrect_thoughts_figure(summaries: Sequence[RunSummary]):
    """Share (%) of completion tokens inside incorrect thoughts, per round."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure()
    drawn = _draw(ax, summaries, _round_points("incorrect_share", 100.0))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    _finish(fig, ax, "Tokens in incorrect thoughts (judged steps of correct solutions)", "round (index)",
            "share of completion tokens (%)", drawn, "no judged rounds yet")
    return fig


FIGURES = {"accuracy_vs_samples.png": accuracy_figure, "length.png": length_figure,
           "incorrect_thoughts.png": incorrect_thoughts_figure}


def write_plots(summaries: Sequence[RunSummary], out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, make in FIGURES.items():
        fig = make(summaries)
        tmp = out / f".{name}.tmp.png"
        fig.savefig(tmp, format="png")
        tmp.replace(out / name)
        paths.append(out / name)
    return paths
