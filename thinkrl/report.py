"""Reports: tables comparing training runs and the markdown report with its plots (`thinkrl report`).

    path = write_report(["runs/grpo-s0", "runs/tp-s0"], "runs/report")   # report.md + 4 PNGs
    rows = comparison_table([collect_run(d) for d in dirs])               # one dict per run
    print(markdown_table(aggregate_by_group(summaries)))                  # mean ± 95% interval over seeds

Runs are read back by `thinkrl/summary.py` (`collect_run`: manifests and tables only, runs in progress as
far as they got) and drawn by `thinkrl/plots.py`; here are the tables (raw values, formatted for people by
`format_value` / `format_rows` / `markdown_table`) and report.md.

Definitions (the report repeats them under its table; samples consumed, accuracy and incorrect-thought share
are defined in `thinkrl/summary.py`):
- samples to reach the baseline: the samples consumed at the first eval point whose accuracy is at least
  the baseline's final accuracy (the first run given is the baseline, e.g. plain GRPO). Eval points are
  discrete: no interpolation between them. `x fewer samples` = the baseline's own samples-to-reach over
  this run's.
- seeds: runs whose configs differ only in `seed` are one group (`summary.seed_groups`); a group of >= 2 seeds
  is shown as mean ± the half-width of the 95% Student-t interval of the mean over its seeds
  (`thinkrl/intervals.py`: t_{0.975,n-1} · s/√n, s the sample std), in the tables and as bands in the plots.

Against the paper: the report is thinkrl's own comparison of runs, not part of the method (docs/PAPER.md);
its spread over seeds uses the sample std, unlike the population std of the advantages.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thinkrl.errors import ThinkrlError
from thinkrl.intervals import LEVEL, t_half_width
from thinkrl.plots import PLOTS, write_plots
from thinkrl.summary import RunSummary, collect_run, seed_groups


# --------------------------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class Spread:
    """Mean over seeds ± `ci`, the half-width of its 95% t-interval; sample std, min, max and how many values
    went in (`n` of `of`: a run that never reached a target has no value)."""
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    n: int
    of: int
    ci: float | None = None

    @staticmethod
    def of_values(values: Iterable[float | None]) -> Spread:
        vals = list(values)
        xs = np.array([v for v in vals if v is not None], dtype=np.float64)
        if xs.size == 0:
            return Spread(None, None, None, None, 0, len(vals))
        std = float(xs.std(ddof=1)) if xs.size > 1 else None
        ci = t_half_width(std, int(xs.size), LEVEL) if std is not None else None
        return Spread(float(xs.mean()), std, float(xs.min()), float(xs.max()), int(xs.size), len(vals), ci)


def comparison_table(summaries: Sequence[RunSummary]) -> list[dict]:
    """One row per run (raw numbers; accuracies and shares as fractions). The first run is the baseline."""
    if not summaries:
        return []
    base = summaries[0]
    target = base.final_accuracy
    base_reach = base.samples_to_reach(target)
    rows = []
    for s in summaries:
        reach = s.samples_to_reach(target)
        rows.append({
            "run": s.name, "scheme": s.scheme, "seed": s.seed,
            "rounds": s.finished_rounds, "samples": s.samples_consumed,
            "final_acc": s.final_accuracy, "best_acc": s.best_accuracy,
            "samples_to_baseline": reach,
            "fewer_samples": base_reach / reach if reach and base_reach else None,
            "mean_length": s.last("mean_tokens"),
            "eval_tokens": s.final_eval.mean_tokens if s.final_eval else None,
            "incorrect_share": s.last("incorrect_share"),
            "status": s.status,
        })
    return rows


def aggregate_by_group(summaries: Sequence[RunSummary]) -> list[dict]:
    """Mean ± 95% interval over the seeds of each group (`seed_groups`: runs differing only by seed), in order
    of first appearance. The baseline's accuracy is the mean final accuracy of the first run's group."""
    groups = seed_groups(summaries)
    if not groups:
        return []
    base_accs = [s.final_accuracy for s in groups[0][1] if s.final_accuracy is not None]
    target = float(np.mean(base_accs)) if base_accs else None
    rows = []
    for scheme, runs in groups:
        rows.append({
            "scheme": scheme, "seeds": [s.seed for s in runs],
            "final_acc": Spread.of_values(s.final_accuracy for s in runs),
            "best_acc": Spread.of_values(s.best_accuracy for s in runs),
            "samples": Spread.of_values(s.samples_consumed for s in runs),
            "samples_to_baseline": Spread.of_values(s.samples_to_reach(target) for s in runs),
            "mean_length": Spread.of_values(s.last("mean_tokens") for s in runs),
            "incorrect_share": Spread.of_values(s.last("incorrect_share") for s in runs),
        })
    return rows


HEADERS = {
    "run": "run", "scheme": "scheme", "seed": "seed", "seeds": "seeds", "rounds": "rounds",
    "samples": "samples", "final_acc": "final acc", "best_acc": "best acc",
    "samples_to_baseline": "samples to baseline acc", "fewer_samples": "x fewer samples",
    "mean_length": "length (tok)", "eval_tokens": "eval length (tok)", "incorrect_share": "incorrect-thought share",
    "status": "status",
    # round tables
    "round": "round", "rollouts": "rollouts", "samples_consumed": "samples", "accuracy": "train acc",
    "mean_tokens": "length (tok)", "flipped_error_thoughts": "flipped", "dropped_rollouts": "dropped",
    "train_steps": "steps", "mean_loss": "loss", "clip_frac": "clip frac", "kl": "kl",
    "seconds_per_step": "s/step", "mfu": "MFU",
    # eval tables
    "where": "eval", "avg_at_k": "avg@k", "pass_at_k": "pass@k", "maj_at_k": "maj@k",
}
_PERCENT = {"final_acc", "best_acc", "incorrect_share", "accuracy", "avg_at_k", "pass_at_k", "maj_at_k", "clip_frac",
            "mfu"}
_TEXT = {"run", "scheme", "seeds", "status", "where", "benchmarks"}
_DECIMAL1 = {"mean_length", "eval_tokens", "mean_tokens"}
_INT = {"samples", "samples_to_baseline", "rollouts", "samples_consumed", "rounds", "train_steps",
        "dropped_rollouts", "flipped_error_thoughts", "problems", "k"}


def format_value(key: str, v: Any) -> str:
    """A cell for people: percentages for accuracies and shares, thousands separators for counts."""
    if isinstance(v, Spread):
        if v.mean is None:
            return "–"
        cell = format_value(key, v.mean) + (f" ± {format_value(key, v.ci) if key not in _INT else f'{v.ci:,.0f}'}"
                                            if v.ci is not None else "")
        return cell + (f" ({v.n}/{v.of})" if v.n < v.of else "")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if key in _PERCENT and isinstance(v, (int, float)):
        return f"{100 * v:.2f}%" if key in ("mfu", "incorrect_share") else f"{100 * v:.1f}%"
    if key in _DECIMAL1 and isinstance(v, (int, float)):
        return f"{v:,.1f}"
    if key in _INT and isinstance(v, (int, float)):
        return f"{v:,.0f}"
    if key == "fewer_samples":
        return f"{v:.2f}x"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return str(v)


def format_rows(rows: Sequence[dict]) -> list[dict[str, str]]:
    """Rows of raw values -> rows of display strings keyed by human headers (for rich and markdown)."""
    return [{HEADERS.get(k, k): format_value(k, v) for k, v in r.items()} for r in rows]


def markdown_table(rows: Sequence[dict]) -> str:
    """A GitHub markdown table of rows (raw values are formatted by `format_value`)."""
    if not rows:
        return "_(no rows)_\n"
    cells = format_rows(rows)
    heads = list(cells[0])
    numeric = [k not in _TEXT for k in rows[0]]
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in heads) + " |",
             "|" + "|".join("---:" if num else "---" for num in numeric) + "|"]
    lines += ["| " + " | ".join(esc(c.get(h, "")) for h in heads) + " |" for c in cells]
    return "\n".join(lines) + "\n"


def round_rows(s: RunSummary) -> list[dict]:
    keys = ("round", "rollouts", "samples_consumed", "accuracy", "mean_tokens", "incorrect_share",
            "flipped_error_thoughts", "dropped_rollouts", "train_steps", "mean_loss", "clip_frac", "kl",
            "seconds_per_step", "mfu")
    return [{k: getattr(r, k) for k in keys} for r in s.rounds]


def eval_rows(s: RunSummary) -> list[dict]:
    return [{"where": e.where, "samples_consumed": e.samples_consumed, "avg_at_k": e.avg_at_k,
             "pass_at_k": e.pass_at_k, "maj_at_k": e.maj_at_k, "mean_tokens": e.mean_tokens, "k": e.k,
             "problems": e.problems, "benchmarks": ", ".join(e.benchmarks)} for e in s.evals]


# --------------------------------------------------------------------------------------------- report
POWERED = "docs/EXPERIMENTS.md (protocol P1), its result in docs/BENCHMARKS.md (`just bench schemes-powered`)"


def seed_caveat(summaries: Sequence[RunSummary]) -> str | None:
    """What runs of one seed per scheme can and cannot show (None when every scheme has several seeds)."""
    groups = seed_groups(summaries)
    if len(groups) < 2 or all(len(runs) > 1 for _, runs in groups):
        return None
    return ("One seed per scheme: this shows that each scheme trains and how its runs behave (accuracy, length and "
            "incorrect-thought curves), not which scheme is better. A single run's held-out accuracy moves by "
            "about ±3 points with sampling and eval noise alone (DESIGN §5), as much as the gaps between schemes "
            "measured here so far; telling a 1.3x saving from none takes paired runs over several seeds with a "
            f"shared eval seed: {POWERED}.")


def report_markdown(summaries: Sequence[RunSummary], title: str = "thinkrl report") -> str:
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    base = summaries[0]
    lines = [f"# {title}", "", f"Generated {now} by `thinkrl report` from the runs' manifests and tables.", ""]
    lines += [f"- `{s.path}`: {s.label}, {s.finished_rounds} rounds finished"
              + (f" of {s.expected_rounds}" if s.expected_rounds else "") + f", {len(s.evals)} eval points"
              for s in summaries]
    lines += ["", "## Comparison", "", markdown_table(comparison_table(summaries))]
    target = base.final_accuracy
    lines += [f"Baseline: the first run, `{base.name}` ({base.scheme}), final held-out accuracy "
              + (f"{100 * target:.1f}%." if target is not None else "unknown (no eval yet)."),
              "`samples to baseline acc`: training samples consumed when a run's held-out accuracy first reached "
              "the baseline's final accuracy (at eval points; – = not reached). `x fewer samples`: the baseline's "
              "own samples-to-reach divided by the run's. Accuracy: avg@k, mean over the benchmarks evaluated. "
              "Length and incorrect-thought share: the last round's training rollouts.", ""]
    caveat = seed_caveat(summaries)
    if caveat:
        lines += [f"**{caveat}**", ""]
    if any(len(runs) > 1 for _, runs in seed_groups(summaries)):
        lines += ["## By scheme (mean ± 95% interval over seeds)", "", markdown_table(aggregate_by_group(summaries)),
                  "Runs whose configs differ only in `seed` are one row. Cells: mean over the seeds ± the half-width "
                  "of the 95% Student-t interval of that mean (t_0.975,n-1 · s/√n, s the sample std over seeds; "
                  "none for one seed). Samples to baseline acc: target = mean final accuracy of the first group; "
                  "(n/m) = runs that reached it or had the value. Plot bands: the same interval at each x.", ""]
    lines += ["## Plots", ""]
    for name, what in PLOTS.items():
        lines += [f"![{what}]({name})", ""]
    lines += ["## Runs", ""]
    for s in summaries:
        lines += [f"### {s.name}", "", f"Path `{s.path}`; scheme {s.scheme or '?'}; seed "
                  f"{s.seed if s.seed is not None else '?'}; {s.samples_consumed:,} training samples.", ""]
        if s.missing:
            lines += ["Missing (run in progress or stage not finished):", ""] + [f"- {m}" for m in s.missing] + [""]
        lines += ["Held-out evaluation:", "", markdown_table(eval_rows(s)) if s.evals else "_(no eval yet)_\n"]
        lines += ["Rounds:", "", markdown_table(round_rows(s)) if s.rounds else "_(no rounds yet)_\n"]
        carried = [str(r.round) for r in s.rounds if r.carried_forward]
        if carried:
            lines += [f"Rounds with nothing to learn (every advantage zero; policy carried forward): "
                      f"{', '.join(carried)}.", ""]
    return "\n".join(lines)


def write_report(run_dirs: Sequence[str | Path | RunSummary], out_dir: str | Path,
                 title: str = "thinkrl report") -> Path:
    """Collect every run (or take summaries already collected), write `out_dir/report.md` and the PNGs of
    `plots.FIGURES` beside it; returns the report path."""
    if not run_dirs:
        raise ThinkrlError("report: give at least one run directory")
    summaries = [d if isinstance(d, RunSummary) else collect_run(d) for d in run_dirs]
    out = Path(out_dir)
    write_plots(summaries, out)
    path = out / "report.md"
    tmp = out / ".report.md.tmp"
    tmp.write_text(report_markdown(summaries, title), encoding="utf-8")
    tmp.replace(path)
    return path
