"""Plots: the report's figures comparing runs, drawn from their summaries (`thinkrl report`).

    fig = accuracy_figure([collect_run(d) for d in dirs])   # a matplotlib Figure (no pyplot, Agg on save)
    paths = write_plots(summaries, "runs/report")            # the PNGs named in PLOTS / FIGURES

Figures: held-out accuracy (avg@k, %) vs training samples consumed, with a dashed line at the baseline's
final accuracy (the first run's, or the mean over its group's seeds); the mean solution length of each
round's training rollouts; the share of completion tokens in incorrect thoughts per round; and `curves.png`,
a grid of per-optimizer-step curves from the runs' train_metrics (CURVES: loss, KL, clip fraction, grad norm,
and reward and response length where the trainer logged them: a panel is drawn when some run has its
column). The quantities are defined in `thinkrl/summary.py`.

One line per run; runs whose configs differ only in `seed` (`summary.seed_groups`) are drawn as thin seed
lines, a mean line and a band: the 95% Student-t interval of the mean over the seeds at each x
(`thinkrl/intervals.py`). Alignment (`align`): the seeds' curves are put on one x grid, the union of their x
values inside the range every seed covers, each curve linearly interpolated onto it; where the seeds share
their x values (samples consumed per round and optimizer steps are set by the config, so seeds of one config
do) this is exact and interpolates nothing. Beyond the shortest seed (a run still in progress) no mean is
drawn. Each PNG is written to a temporary name, then renamed.

Against the paper: the figures are thinkrl's own comparison of runs, not part of the method (docs/PAPER.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thinkrl.intervals import LEVEL, t_half_width
from thinkrl.summary import RunSummary, seed_groups

PLOTS = {"accuracy_vs_samples.png": "held-out accuracy vs training samples consumed",
         "length.png": "mean solution length per round",
         "incorrect_thoughts.png": "share of tokens in incorrect thoughts per round",
         "curves.png": "training curves per optimizer step (loss, KL, clip fraction, grad norm; reward and length "
                       "where logged)"}

Series = tuple[np.ndarray, np.ndarray]  # x (P,) increasing, y (P,)


@dataclass(frozen=True)
class Curve:
    """One panel of curves.png: a train_metrics column (the first of `columns` a run has) against the step."""
    title: str
    ylabel: str
    columns: tuple[str, ...]
    scale: float = 1.0


CURVES = (
    Curve("Loss", "loss", ("loss",)),
    Curve("KL to the reference (k3)", "KL (nats/token)", ("kl",)),
    Curve("Clipped tokens", "clip fraction (%)", ("clip_frac",), 100.0),
    Curve("Gradient norm before clipping", "grad norm", ("grad_norm",)),
    Curve("Outcome reward of the step's rollouts", "mean reward", ("reward_mean", "reward")),
    Curve("Response length of the step's rollouts", "mean length (tokens)",
          ("response_len_mean", "response_length_mean", "length_mean")),
)


# --------------------------------------------------------------------------------------------- series
def _series(points: Iterable[tuple[float, float | None, float | None]]) -> Series:
    """(order key, x, y) points -> x, y sorted by key; missing or non-finite values dropped; one y per x (the
    last)."""
    pts = sorted((k, x, y) for k, x, y in points
                 if x is not None and y is not None and math.isfinite(x) and math.isfinite(y))
    last = {x: y for _, x, y in pts}
    xs = np.array(sorted(last), dtype=float)
    return xs, np.array([last[x] for x in xs], dtype=float)


def _acc_series(s: RunSummary) -> Series:
    return _series((e.trained_rounds, e.samples_consumed, 100 * e.avg_at_k) for e in s.evals)


def _round_series(attr: str, scale: float) -> Callable[[RunSummary], Series]:
    def series(s: RunSummary) -> Series:
        return _series((r.round, r.round, None if getattr(r, attr) is None else scale * getattr(r, attr))
                       for r in s.rounds)
    return series


def _curve_column(s: RunSummary, curve: Curve) -> str | None:
    return next((c for c in curve.columns if any(v is not None and math.isfinite(v) for v in s.steps.get(c, ()))),
                None)


def _step_series(curve: Curve) -> Callable[[RunSummary], Series]:
    def series(s: RunSummary) -> Series:
        col = _curve_column(s, curve)
        if col is None:
            return np.empty(0), np.empty(0)
        values = zip(s.steps["step"], s.steps[col], strict=True)
        return _series((x, x, None if v is None else curve.scale * v) for x, v in values)
    return series


def align(series: Sequence[Series]) -> tuple[np.ndarray, np.ndarray]:
    """Several seeds' curves on one x grid (see the module doc): (grid (X,), values (S, X)) over the seeds
    with data; an empty grid when their x ranges do not overlap."""
    series = [(x, y) for x, y in series if x.size]
    if not series:
        return np.empty(0), np.empty((0, 0))
    lo, hi = max(x[0] for x, _ in series), min(x[-1] for x, _ in series)
    if lo > hi:
        return np.empty(0), np.empty((len(series), 0))
    grid = np.unique(np.concatenate([x[(x >= lo) & (x <= hi)] for x, _ in series]))
    return grid, np.stack([np.interp(grid, x, y) for x, y in series])


def seed_band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """values (S, X) -> mean (X,), half-width of the 95% t-interval (X,) (None for one seed)."""
    mean = values.mean(axis=0)
    if values.shape[0] < 2:
        return mean, None
    return mean, np.array([t_half_width(float(sd), values.shape[0], LEVEL) for sd in values.std(axis=0, ddof=1)])


# --------------------------------------------------------------------------------------------- plots
def _draw(ax, summaries: Sequence[RunSummary], series_of: Callable[[RunSummary], Series],
          markers: bool = True) -> int:
    """One line per run; a group of seeds: thin seed lines + mean line + 95% t-interval band. Returns the
    number of lines drawn with data."""
    import matplotlib

    colors = matplotlib.colormaps["tab10"].colors
    styles = ["-", "--", "-.", ":"]
    drawn = 0
    for gi, (label, runs) in enumerate(seed_groups(summaries)):
        color = colors[gi % len(colors)]
        if len(runs) > 1:
            curves = [series_of(s) for s in runs]
            for xs, ys in curves:
                if xs.size:
                    ax.plot(xs, ys, color=color, lw=0.9, alpha=0.45, marker="." if markers else "", ms=4)
            grid, values = align(curves)
            if not grid.size:
                continue
            mean, half = seed_band(values)
            if half is not None:
                ax.fill_between(grid, mean - half, mean + half, color=color, alpha=0.18, lw=0)
            n = values.shape[0]
            band = " (band: 95% t-interval)" if half is not None else ""
            ax.plot(grid, mean, color=color, lw=2.2, marker="o" if markers else "", ms=4,
                    label=f"{label}: mean of {n} seed{'s' if n > 1 else ''}{band}")
            drawn += 1
            continue
        for ri, s in enumerate(runs):
            xs, ys = series_of(s)
            if not xs.size:
                continue
            lone = xs.size == 1  # a single point (e.g. judged once): big enough not to hide under another line
            ax.plot(xs, ys, color=color, ls=styles[ri % len(styles)], lw=1.8 if markers else 1.3,
                    marker="s" if lone else ("o" if markers else ""), ms=8 if lone else 4, zorder=3, label=s.label)
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
    accuracy (the first run's, or the mean over its group's seeds)."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure()
    drawn = _draw(ax, summaries, _acc_series)
    groups = seed_groups(summaries)
    if groups and drawn:
        base_runs = groups[0][1]
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
    drawn = _draw(ax, summaries, _round_series("mean_tokens", 1.0))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _finish(fig, ax, "Mean solution length of the training rollouts", "round (index)",
            "mean solution length (tokens)", drawn, "no finished rollouts yet")
    return fig


def incorrect_thoughts_figure(summaries: Sequence[RunSummary]):
    """Share (%) of completion tokens inside incorrect thoughts, per round."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure()
    drawn = _draw(ax, summaries, _round_series("incorrect_share", 100.0))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    _finish(fig, ax, "Tokens in incorrect thoughts (judged steps of correct solutions)", "round (index)",
            "share of completion tokens (%)", drawn, "no judged rounds yet")
    return fig


def curves_figure(summaries: Sequence[RunSummary]):
    """A grid of per-step curves (CURVES whose column some run has) against the global optimizer step; the
    legend on the first panel (the same runs in every panel)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    panels = [c for c in CURVES if any(_curve_column(s, c) for s in summaries)]
    ncols = 1 if len(panels) <= 1 else 2 if len(panels) <= 4 else 3
    nrows = max(1, -(-len(panels) // ncols))
    fig = Figure(figsize=(8.5 if ncols == 1 else 5.2 * ncols, 5.0 if nrows == 1 else 3.5 * nrows + 0.5), dpi=110)
    if not panels:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no training steps yet", transform=ax.transAxes, ha="center", va="center", color="0.4")
        ax.set_axis_off()
    legend = False
    for i, c in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        drawn = _draw(ax, summaries, _step_series(c), markers=False)
        ax.set_title(c.title, fontsize=10.5)
        ax.set_xlabel("optimizer step (global)", fontsize=9)
        ax.set_ylabel(c.ylabel, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        if drawn and not legend:
            ax.legend(fontsize=7.5, loc="best", framealpha=0.9)
            legend = True
    fig.suptitle("Training curves per optimizer step", fontsize=12)
    fig.tight_layout()
    return fig


FIGURES = {"accuracy_vs_samples.png": accuracy_figure, "length.png": length_figure,
           "incorrect_thoughts.png": incorrect_thoughts_figure, "curves.png": curves_figure}


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
