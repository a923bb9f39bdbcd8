"""Reports: tables and plots comparing training runs, read only from their artifacts (`thinkrl report`).

    s = collect_run("runs/grpo-s0")                   # RunSummary: per round + per eval point
    path = write_report(["runs/grpo-s0", "runs/tp-s0"], "runs/report")   # report.md + 3 PNGs
    rows = comparison_table([collect_run(d) for d in dirs])               # one dict per run
    print(markdown_table(aggregate_by_scheme(summaries)))                 # mean ± std over seeds

A run directory (written by `thinkrl run`, `thinkrl/experiment.py`) holds `config.toml`, `eval-initial/`
and `round-NNN/{rollouts,judgments,thoughts,train,eval}/`. Everything here comes from manifests and
tables read through `artifacts.read_manifest` / `read_table`; logs are never parsed. A run still in
progress (later rounds missing, a stage without its manifest) is summarised as far as it got, and each
summary lists what is missing.

Definitions (the report repeats them under its table):
- samples consumed after round r: rollouts sampled for training in rounds 0..r (rows of rollouts.parquet,
  the `rollouts` metric of the sample stage). The eval of `round-r/eval` (of `round-r/train/policy`) is placed at
  the samples of rounds 0..r; `eval-initial` (of the start policy, whatever it is) at 0.
- held-out accuracy: avg@k (mean pass@1 over k samples), macro-averaged over the benchmarks evaluated.
- samples to reach the baseline: the samples consumed at the first eval point whose accuracy is at least
  the baseline's final accuracy (the first run given is the baseline, e.g. plain GRPO). Eval points are
  discrete: no interpolation between them. `x fewer samples` = the baseline's own samples-to-reach over
  this run's.
- incorrect-thought share: tokens of `incorrect` steps (in correct rollouts, from the judgments table) over
  all completion tokens of the round: the same definition for every scheme, so GRPO runs that were judged
  (for measurement only) compare with TP runs. Without judgments, the segment stage's
  `incorrect_thought_token_share` (thought spans include the separators after each step) is used.
- spreads over seeds: sample standard deviation (ddof=1); plot bands span min..max over seeds.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from thinkrl import runs as layout
from thinkrl.artifacts import read_manifest, read_table
from thinkrl.errors import ThinkrlError

try:  # Python >= 3.11
    import tomllib
except ImportError:  # pragma: no cover - 3.10: config.toml is skipped, manifests still give scheme and seed
    tomllib = None

STAGES = layout.ROUND_STAGES
PLOTS = {"accuracy_vs_samples.png": "held-out accuracy vs training samples consumed",
         "length.png": "mean solution length per round",
         "incorrect_thoughts.png": "share of tokens in incorrect thoughts per round"}
_EPS = 1e-9


# --------------------------------------------------------------------------------------------- summaries
@dataclass
class RoundSummary:
    round: int
    rollouts: int | None = None                 # training samples sampled this round
    samples_consumed: int | None = None         # cumulative over rounds 0..round
    accuracy: float | None = None               # train-time sampled accuracy (fraction)
    mean_tokens: float | None = None            # mean completion tokens of the round's rollouts
    truncation_rate: float | None = None
    incorrect_share: float | None = None        # see module doc (fraction of completion tokens)
    incorrect_share_source: str | None = None   # "judgments" or "thoughts"
    incorrect_thought_token_share: float | None = None  # the segment stage's metric, None for `outcome`
    error_thoughts: int | None = None
    flipped_error_thoughts: int | None = None
    dropped_rollouts: int | None = None
    kept_rollouts: int | None = None
    scheme: str | None = None                   # from the thoughts manifest
    train_steps: int | None = None
    skipped_steps: int | None = None
    mean_loss: float | None = None              # means over the round's non-skipped optimizer steps
    clip_frac: float | None = None
    kl: float | None = None
    grad_norm: float | None = None
    seconds_per_step: float | None = None       # over all steps
    mfu: float | None = None
    carried_forward: bool = False               # nothing to learn this round: policy copied forward
    missing: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.train_steps is not None and self.rollouts is not None


@dataclass
class EvalPoint:
    where: str                                  # "eval-initial" or "round-NNN/eval"
    trained_rounds: int                         # rounds of training behind the policy (0 for the start policy)
    samples_consumed: int | None
    avg_at_k: float                             # macro mean over benchmarks (fraction)
    pass_at_k: float
    maj_at_k: float
    mean_tokens: float
    k: int
    problems: int
    benchmarks: dict[str, dict] = field(default_factory=dict)


@dataclass
class RunSummary:
    name: str
    path: str
    scheme: str | None
    seed: int | None
    rounds: list[RoundSummary]
    evals: list[EvalPoint]
    expected_rounds: int | None = None
    config: dict = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        parts = [self.name] + ([self.scheme] if self.scheme and self.scheme not in self.name else [])
        return " · ".join(parts) + (f" · seed {self.seed}" if self.seed is not None and
                                    f"s{self.seed}" not in self.name and f"seed{self.seed}" not in self.name else "")

    @property
    def final_eval(self) -> EvalPoint | None:
        return self.evals[-1] if self.evals else None

    @property
    def final_accuracy(self) -> float | None:
        return self.evals[-1].avg_at_k if self.evals else None

    @property
    def best_accuracy(self) -> float | None:
        return max(e.avg_at_k for e in self.evals) if self.evals else None

    @property
    def samples_consumed(self) -> int:
        """Samples the policy has been trained on: cumulative up to the last round whose training finished."""
        known = [r.samples_consumed for r in self.rounds if r.samples_consumed is not None and r.complete]
        return known[-1] if known else 0

    @property
    def finished_rounds(self) -> int:
        return sum(r.complete for r in self.rounds)

    def last(self, attr: str) -> Any:
        """The latest value of a round field: from the last round that has it, looking back past rounds still in
        progress but not past a finished round without it (not measured there: None, never a stale value)."""
        for r in reversed(self.rounds):
            if getattr(r, attr) is not None:
                return getattr(r, attr)
            if r.complete:
                return None
        return None

    def samples_to_reach(self, target: float | None) -> int | None:
        """Samples consumed at the first eval point with accuracy >= target (None if never reached)."""
        if target is None:
            return None
        for e in sorted(self.evals, key=lambda e: (e.trained_rounds, e.samples_consumed or 0)):
            if e.samples_consumed is not None and e.avg_at_k >= target - _EPS:
                return e.samples_consumed
        return None

    @property
    def status(self) -> str:
        if self.missing:
            return f"in progress: {self.finished_rounds}/{self.expected_rounds or len(self.rounds)} rounds trained"
        return "complete"

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------- collecting
def _read_toml(path: Path) -> dict:
    if tomllib is None or not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ThinkrlError(f"{path}: not valid TOML ({e})") from None


def _find_key(cfg: dict, key: str) -> Any:
    """`key` at the top level of a TOML document, else in its first-level tables."""
    if key in cfg and not isinstance(cfg[key], dict):
        return cfg[key]
    for v in cfg.values():
        if isinstance(v, dict) and key in v and not isinstance(v[key], dict):
            return v[key]
    return None


def _manifest(path: Path, missing: list[str], label: str) -> dict | None:
    """The manifest, or None with a line added to `missing` (stage not finished or damaged)."""
    try:
        return read_manifest(path)
    except ThinkrlError as e:
        unfinished = "no manifest" in str(e) or "no such artifact" in str(e)
        missing.append(f"{label}: not finished (no manifest.json)" if unfinished else f"{label}: {e}")
        return None


def _num(metrics: dict, key: str) -> Any:
    v = metrics.get(key)
    return v if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) else None


def _incorrect_step_share(judgments_dir: Path, total_tokens: float) -> float | None:
    j = read_table(judgments_dir, "judgments", allow_empty=True)
    if total_tokens <= 0:
        return None
    bad = j.filter(j["label"] == "incorrect")
    return float((bad["token_end"] - bad["token_start"]).clip(lower_bound=0).sum()) / total_tokens


def _uses_judgments(scheme: str | None) -> bool:
    """Whether a run's scheme uses step labels (unknown or missing: assume it does)."""
    from thinkrl.thoughts import SCHEMES

    return scheme not in SCHEMES or SCHEMES[scheme].uses_judgments


def _collect_round(d: Path, r: int, scheme_hint: str | None) -> RoundSummary:
    rs = RoundSummary(round=r)
    tag = d.name
    ro = _manifest(d / layout.ROLLOUTS, rs.missing, f"{tag}/rollouts")
    if ro is not None:
        m = ro.get("metrics") or {}
        rows = _num(m, "rollouts")
        rs.rollouts = int(rows if rows is not None else ro["outputs"].get("rollouts", {}).get("rows", 0))
        rs.accuracy, rs.mean_tokens = _num(m, "accuracy"), _num(m, "mean_tokens")
        rs.truncation_rate = _num(m, "truncation_rate")
    th_missing: list[str] = []
    th = _manifest(d / layout.THOUGHTS, th_missing, f"{tag}/thoughts")
    if th is not None:
        m = th.get("metrics") or {}
        rs.scheme = m.get("scheme") or (th.get("config") or {}).get("scheme")
        rs.dropped_rollouts, rs.kept_rollouts = _num(m, "dropped_rollouts"), _num(m, "kept_rollouts")
        rs.error_thoughts, rs.flipped_error_thoughts = _num(m, "error_thoughts"), _num(m, "flipped_error_thoughts")
        if _uses_judgments(rs.scheme):  # the outcome scheme makes no thoughts: its share is 0 by construction
            rs.incorrect_thought_token_share = _num(m, "incorrect_thought_token_share")
    scheme = rs.scheme or scheme_hint
    if (d / layout.JUDGMENTS).exists() or _uses_judgments(scheme):  # plain GRPO needs no judge: not "missing"
        jm = _manifest(d / layout.JUDGMENTS, rs.missing, f"{tag}/judgments")
        if jm is not None and rs.rollouts and rs.mean_tokens is not None:
            try:
                rs.incorrect_share = _incorrect_step_share(d / layout.JUDGMENTS, rs.rollouts * rs.mean_tokens)
                rs.incorrect_share_source = "judgments"
            except ThinkrlError as e:
                rs.missing.append(f"{tag}/judgments: {e}")
    if rs.incorrect_share is None and rs.incorrect_thought_token_share is not None:
        rs.incorrect_share, rs.incorrect_share_source = rs.incorrect_thought_token_share, "thoughts"
    rs.missing += th_missing
    tr = _manifest(d / layout.TRAIN, rs.missing, f"{tag}/train")
    if tr is not None:
        rs.carried_forward = bool((tr.get("metrics") or {}).get("carried_forward"))
        try:
            _train_metrics(d / layout.TRAIN, rs)
        except ThinkrlError as e:
            rs.missing.append(f"{tag}/train: {e}")
    return rs


def _train_metrics(train_dir: Path, rs: RoundSummary) -> None:
    tm = read_table(train_dir, "train_metrics", allow_empty=True)
    rs.train_steps = tm.height
    rs.skipped_steps = int(tm["skipped"].sum()) if tm.height else 0
    ok = tm.filter(~tm["skipped"])
    mean = lambda df, c: float(df[c].mean()) if df.height else None  # noqa: E731
    rs.mean_loss, rs.clip_frac, rs.kl, rs.grad_norm = (mean(ok, c) for c in ("loss", "clip_frac", "kl", "grad_norm"))
    rs.seconds_per_step, rs.mfu = mean(tm, "seconds"), mean(tm, "mfu")
    if rs.dropped_rollouts is None and tm.height:
        rs.dropped_rollouts = int(tm["dropped_rollouts"][-1])


def _eval_point(d: Path, where: str, trained: int, cum: dict[int, int | None],
                missing: list[str]) -> EvalPoint | None:
    m = _manifest(d, missing, where)
    if m is None:
        return None
    try:
        summary = read_table(d, "eval_summary")
    except ThinkrlError as e:
        missing.append(f"{where}: {e}")
        return None
    samples = 0 if trained == 0 else cum.get(trained - 1)
    rows = summary.to_dicts()
    mean = lambda k: float(np.mean([r[k] for r in rows]))  # noqa: E731
    return EvalPoint(where=where, trained_rounds=trained, samples_consumed=samples, avg_at_k=mean("avg_at_k"),
                     pass_at_k=mean("pass_at_k"), maj_at_k=mean("maj_at_k"), mean_tokens=mean("mean_tokens"),
                     k=int(max(r["k"] for r in rows)), problems=int(sum(r["problems"] for r in rows)),
                     benchmarks={r["benchmark"]: {k: v for k, v in r.items() if k != "benchmark"} for r in rows})


def collect_run(run_dir: str | Path) -> RunSummary:
    """Summarise one run directory from its manifests and metrics/eval tables (see the module doc)."""
    d = Path(run_dir)
    if not d.is_dir():
        raise ThinkrlError(f"{d}: no such run directory (expected config.toml, eval-initial/, round-NNN/)")
    round_dirs = layout.round_dirs(d)
    if not round_dirs and not (d / layout.INITIAL_EVAL).is_dir() and not (d / layout.CONFIG).is_file():
        raise ThinkrlError(f"{d}: not a run directory (no config.toml, eval-initial/ or round-NNN/ inside)")
    cfg = _read_toml(d / layout.CONFIG)
    scheme, seed = _find_key(cfg, "scheme"), _find_key(cfg, "seed")
    expected = _find_key(cfg, "rounds")
    if isinstance(expected, int):  # rounds left over from an earlier, longer setting are not part of the run
        round_dirs = [(r, p) for r, p in round_dirs if r < expected]
    missing: list[str] = [] if cfg or tomllib is None else ["config.toml: missing (scheme and seed from manifests)"]
    rounds: list[RoundSummary] = []
    cum: dict[int, int | None] = {}
    total: int | None = 0
    for r, rd in round_dirs:
        rs = _collect_round(rd, r, scheme)
        total = total + rs.rollouts if total is not None and rs.rollouts is not None else None
        rs.samples_consumed = cum[r] = total
        rounds.append(rs)
        missing += rs.missing
    if scheme is None:
        scheme = next((r.scheme for r in rounds if r.scheme), None)
    if seed is None:
        for _, rd in round_dirs:
            try:
                seed = (read_manifest(rd / layout.ROLLOUTS).get("config") or {}).get("seed")
                break
            except ThinkrlError:
                continue
    evals = []
    if (d / layout.INITIAL_EVAL).exists():
        evals.append(_eval_point(d / layout.INITIAL_EVAL, layout.INITIAL_EVAL, 0, cum, missing))
    elif _find_key(cfg, "eval_initial") is not False and _find_key(cfg, "eval_every") != 0:
        missing.append("eval-initial: not run (no accuracy at 0 samples)")
    for r, rd in round_dirs:
        if (rd / layout.EVAL).exists():
            evals.append(_eval_point(rd / layout.EVAL, f"{rd.name}/{layout.EVAL}", r + 1, cum, missing))
    evals = sorted((e for e in evals if e is not None), key=lambda e: e.trained_rounds)
    if isinstance(expected, int) and expected > len(round_dirs):
        missing.append(f"rounds {len(round_dirs)}..{expected - 1} of {expected}: not started")
    return RunSummary(name=str(_find_key(cfg, "name") or d.name), path=str(d), scheme=scheme,
                      seed=int(seed) if isinstance(seed, (int, float)) else None, rounds=rounds, evals=evals,
                      expected_rounds=expected if isinstance(expected, int) else None, config=cfg, missing=missing)


# --------------------------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class Spread:
    """Mean ± sample std over seeds, with min, max and how many values went in."""
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    n: int
    of: int

    @staticmethod
    def of_values(values: Iterable[float | None]) -> Spread:
        vals = list(values)
        xs = np.array([v for v in vals if v is not None], dtype=np.float64)
        if xs.size == 0:
            return Spread(None, None, None, None, 0, len(vals))
        std = float(xs.std(ddof=1)) if xs.size > 1 else None
        return Spread(float(xs.mean()), std, float(xs.min()), float(xs.max()), int(xs.size), len(vals))


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


def aggregate_by_scheme(summaries: Sequence[RunSummary]) -> list[dict]:
    """Mean ± spread over the runs (seeds) of each scheme, in order of first appearance. The baseline's
    accuracy is the mean final accuracy of the first run's scheme."""
    groups = by_scheme(summaries)
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
        cell = format_value(key, v.mean) + (f" ± {format_value(key, v.std) if key not in _INT else f'{v.std:,.0f}'}"
                                            if v.std is not None else "")
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


# --------------------------------------------------------------------------------------------- plots
def by_scheme(summaries: Sequence[RunSummary]) -> list[tuple[str, list[RunSummary]]]:
    groups: dict[str, list[RunSummary]] = {}
    for s in summaries:
        groups.setdefault(s.scheme or "?", []).append(s)
    return list(groups.items())


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


# --------------------------------------------------------------------------------------------- report
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
    if any(len(runs) > 1 for _, runs in by_scheme(summaries)):
        lines += ["## By scheme (mean ± std over seeds)", "", markdown_table(aggregate_by_scheme(summaries)),
                  "Samples to baseline acc: target = mean final accuracy of the first scheme; (n/m) = runs that "
                  "reached it or had the value.", ""]
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
    """Collect every run (or take summaries already collected), write `out_dir/report.md` and the three
    PNGs beside it; returns the report path."""
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
