"""The paired comparison of two reward schemes over seeds (issue 17): per-run metrics, paired bootstrap
intervals and a sign-flip test, and the mechanism shares of a round's advantages.

    pts = curve(summary)                           # [(samples, accuracy)], eval points in sample order
    samples_to_target(pts, 0.50)                   # 150.0 on (0,.40),(100,.45),(200,.55): linear interpolation
    auc(pts, 200), efficiency(0.4806, 0.5010, 5600)  # mean accuracy over [0, 200]; 36.43 (the paper's 1.5B TP-GRPO)
    paired_difference(a, b, n_boot=10_000, seed=0)   # Paired(estimate, low, high, ...): mean(a - b), 95% bootstrap
    paired_ratio(a, b), sign_flip_p(a, b)            # mean(a) / mean(b) with its interval; two-sided p of mean(a - b)
    compare(tp_runs, grpo_runs, target=None)         # dict of every metric above, runs paired by seed
    advantage_shares(read_table(d, "advantages"), read_table(d, "thoughts", allow_empty=True))

Per-run metrics, from a run's eval points (samples consumed, held-out accuracy as a fraction; `curve`):
- samples to target (`samples_to_target`): where the accuracy curve first reaches the target, linearly
  interpolated between the last point below it and the first at or above it (the discrete rule, the samples of
  that first point, stays in `RunSummary.samples_to_reach` for the report). A first point already at target:
  its samples. Never reached: None. A later dip below target does not undo the first crossing.
- area under the curve (`auc`): trapezoid of accuracy over samples on [0, max_samples], divided by
  max_samples: the mean accuracy over the budget, in the units of the accuracy. The curve must start at 0
  samples (the `eval-initial` point) and reach max_samples; a max_samples between two points ends the
  area at the interpolated value. A curve that stops before max_samples is refused (ValueError), never held at
  its last value: holding would credit a run that stopped early with accuracy it never showed. `compare`
  takes the common budget, the smallest last-point samples over all its runs.
- final accuracy: the last point's; best accuracy: the largest of any point.
- efficiency (`efficiency`), the paper's: (final − start accuracy) in percentage points per training solution,
  times 1e5: points gained per 100K solutions. The paper's 1.5B figures fix the formula: TP-GRPO 36.43 =
  (50.10 − 48.06) / 5.6K · 1e5 and GRPO 4.65 = (49.64 − 48.06) / 34K · 1e5 share the start 48.06 (the
  base model's average, implied by both). Which solutions the paper counts is not stated; `compare` gives it
  per sampled training rollout (`samples_consumed`) and, where every round has the count, per rollout kept
  for training (`kept_rollouts`, those with a non-zero advantage: the paper keeps only those).

Paired statistics over seeds: a[i] and b[i] are one figure of schemes A and B under seed i (same seed, same
data order and initial evaluation; `compare` pairs runs by `RunSummary.seed`).
- `paired_difference`: mean(a − b); `paired_ratio`: mean(a) / mean(b) (a ratio of means, not a mean of
  ratios: one seed's near-zero denominator cannot dominate). Each with a 95% percentile bootstrap over seeds:
  n_boot resamples of the seed indices with replacement (numpy `default_rng(seed)`), the SAME indices for a
  and b, which is the pairing: seed-to-seed variation shared by both schemes cancels. Interval: the 2.5% and
  97.5% quantiles (numpy's linear rule) of the statistic over the resamples. With ~8+ seeds; with 2-5 the
  report's t-intervals (`thinkrl/intervals.py`) are the better tool: a percentile bootstrap cannot leave the
  range of the values and is too narrow with few seeds.
- `sign_flip_p`: the two-sided paired permutation test of mean(a − b) = 0: under the null each seed's
  difference is as likely negated, so p = share of the 2^n sign patterns whose |mean| reaches the observed
  one (identity included; patterns that tie with it in exact arithmetic, as differences of accuracies on one
  problem set often do, count, through a 1e-12 relative tolerance). Exact enumeration up to 2^16 patterns, else n_perm random patterns with
  p = (1 + hits) / (1 + n_perm). Its smallest possible p is 2 / 2^n: with 5 seeds or fewer, p < 0.05 cannot
  happen whatever the data.
- runs that never reach the target (`compare`): censored at their budget (their last eval point's samples),
  so a value is a lower bound on the true samples; the counts are reported, and `fewer_samples`
  (mean B / mean A) is then a bound itself: a lower bound when only B runs are censored (B needed even more),
  an upper bound when only A runs are, no bound when both are ("mixed").

Mechanism (`advantage_shares`): from one round's thoughts artifact (tables `advantages`, per trained rollout,
and `thoughts`, per thought with its token span and label), the share of completion tokens whose advantage
differs from GRPO's (the row's `outcome_advantage`, r̂), split by where the token lies: an `incorrect` thought
of a correct rollout (Proposition 1: pushed down by α·acc), an `unmatched` thought of a wrong rollout
(Proposition 2: set to 0), elsewhere (the `step` scheme's return-to-go changes correct steps too). The
denominator is the completion tokens of the advantages table: the rollouts trained on. Rollouts dropped for
all-zero advantages are not in that table (their thoughts are); they carry no gradient under the scheme.

Behaviour (`rollout_behaviour`, `round_behaviour`): from one round's rollouts, read by the ArithChain oracle
(thinkrl.tasks.arith.oracle_label, whatever judge the run trained with, so every arm is measured alike): the
reflection rate (the share of rollouts with at least one step the oracle reads as a reflection, the warm-start
corpus's `Wait, ..., not X.`), the step error rate (the share of steps holding an equation, reflections too,
whose arithmetic is wrong,
result != lhs op rhs: the oracle's reading of a wrong step; a right step on a value an earlier error made wrong
is not counted again), and the mean completion length in tokens. Rollouts whose question is no ArithChain problem
are left out and counted.

Against the paper: reporting, not part of the method (docs/PAPER.md); the paper reports single runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from thinkrl.intervals import LEVEL
from thinkrl.summary import RunSummary

Point = tuple[float, float]  # (samples consumed, accuracy as a fraction)
_EPS = 1e-9                  # accuracy tolerance of "at or above target" (as RunSummary.samples_to_reach)
MAX_EXACT = 2 ** 16          # sign patterns enumerated exactly up to this many


# --------------------------------------------------------------------------------------------- per run
def curve(s: RunSummary | Sequence[Point]) -> list[Point]:
    """The eval points of a run as (samples, accuracy), in sample order (points without a sample count left
    out); a sequence of points is sorted and returned as floats."""
    pts = ([(e.samples_consumed, e.avg_at_k) for e in s.evals if e.samples_consumed is not None]
           if isinstance(s, RunSummary) else list(s))
    return sorted((float(x), float(y)) for x, y in pts)


def samples_to_target(points: Sequence[Point], target: float) -> float | None:
    """Samples at which accuracy first reaches `target`, linear between the bracketing points; None if never."""
    pts = curve(points)
    for i, (x1, y1) in enumerate(pts):
        if y1 >= target - _EPS:
            if i == 0:
                return x1
            x0, y0 = pts[i - 1]
            frac = min(max((target - y0) / (y1 - y0), 0.0), 1.0)
            return x0 + frac * (x1 - x0)
    return None


def auc(points: Sequence[Point], max_samples: float) -> float:
    """Mean accuracy over [0, max_samples]: trapezoid area / max_samples (see the module doc for the ends)."""
    pts = curve(points)
    if max_samples <= 0:
        raise ValueError(f"auc needs max_samples > 0 (got {max_samples})")
    if not pts or pts[0][0] != 0:
        raise ValueError("auc needs an eval point at 0 samples (eval-initial): "
                         f"the curve starts at {pts[0][0] if pts else 'nothing'}")
    if pts[-1][0] < max_samples:
        raise ValueError(f"auc over [0, {max_samples:g}]: the curve stops at {pts[-1][0]:g} samples "
                         "(a run that stopped early is not extended)")
    x = np.array([p[0] for p in pts])  # (P,)
    y = np.array([p[1] for p in pts])  # (P,)
    keep = x < max_samples
    xs = np.append(x[keep], max_samples)
    ys = np.append(y[keep], np.interp(max_samples, x, y))
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2) / max_samples)


def efficiency(start_accuracy: float, final_accuracy: float, solutions: float) -> float:
    """The paper's efficiency: accuracy gained in percentage points per training solution, times 1e5
    (accuracies as fractions: (0.4806, 0.5010, 5600) -> 36.43)."""
    if solutions <= 0:
        raise ValueError(f"efficiency needs a positive number of training solutions (got {solutions})")
    return 100 * (final_accuracy - start_accuracy) / solutions * 1e5


def kept_solutions(s: RunSummary) -> int | None:
    """Rollouts kept for training (non-zero advantages) over the rounds behind the last eval point; None when a
    round lacks the count."""
    if not s.evals:
        return None
    rounds = [r for r in s.rounds if r.round < s.evals[-1].trained_rounds]
    counts = [r.kept_rollouts for r in rounds]
    return int(sum(counts)) if rounds and None not in counts else None


def run_metrics(s: RunSummary, target: float | None = None, max_samples: float | None = None) -> dict:
    """The per-run figures of the module doc (accuracies as fractions; None where not defined)."""
    pts = curve(s)
    if not pts:
        raise ValueError(f"{s.name}: no eval point with a sample count")
    (x0, start), (budget, final) = pts[0], pts[-1]
    kept = kept_solutions(s)
    gained = x0 == 0 and budget > 0
    return {
        "final_acc": final, "best_acc": max(y for _, y in pts), "start_acc": start if x0 == 0 else None,
        "budget": budget,
        "samples_to_target": samples_to_target(pts, target) if target is not None else None,
        "auc": auc(pts, max_samples) if max_samples is not None and x0 == 0 else None,  # no eval-initial: none
        "efficiency": efficiency(start, final, budget) if gained else None,
        "efficiency_kept": efficiency(start, final, kept) if gained and kept else None,
    }


# --------------------------------------------------------------------------------------------- paired statistics
@dataclass(frozen=True)
class Paired:
    """A paired statistic over n seeds: its estimate and the percentile bootstrap interval [low, high]."""
    estimate: float
    low: float
    high: float
    n: int
    level: float = LEVEL
    n_boot: int = 10_000


def _pairs(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.shape != xb.shape or xa.ndim != 1 or xa.size < 2:
        raise ValueError(f"paired statistics need two equal-length lists of >= 2 values (got {xa.shape}, {xb.shape})")
    if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(xb))):
        raise ValueError("paired statistics need finite values (censor runs that never reached a target first)")
    return xa, xb


def paired_bootstrap(a: Sequence[float], b: Sequence[float], stat: Callable[[np.ndarray, np.ndarray], np.ndarray],
                     n_boot: int = 10_000, seed: int = 0, level: float = LEVEL) -> Paired:
    """stat(a, b) and its percentile interval over n_boot resamples of the seed indices, the same for a and b.
    `stat` maps (R, n) arrays to (R,) statistics (row-wise)."""
    xa, xb = _pairs(a, b)
    idx = np.random.default_rng(seed).integers(0, xa.size, size=(n_boot, xa.size))  # (n_boot, n)
    boot = stat(xa[idx], xb[idx])  # (n_boot,)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return Paired(float(stat(xa[None], xb[None])[0]), float(lo), float(hi), int(xa.size), level, n_boot)


def _mean_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a - b).mean(axis=-1)


def _mean_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.mean(axis=-1) / b.mean(axis=-1)


def paired_difference(a: Sequence[float], b: Sequence[float], n_boot: int = 10_000, seed: int = 0,
                      level: float = LEVEL) -> Paired:
    """mean(a − b) over seeds with its paired percentile bootstrap interval."""
    return paired_bootstrap(a, b, _mean_difference, n_boot, seed, level)


def paired_ratio(a: Sequence[float], b: Sequence[float], n_boot: int = 10_000, seed: int = 0,
                 level: float = LEVEL) -> Paired:
    """mean(a) / mean(b) over seeds with its paired percentile bootstrap interval (values must be > 0)."""
    xa, xb = _pairs(a, b)
    if np.any(xa <= 0) or np.any(xb <= 0):
        raise ValueError("paired_ratio needs positive values (a run at its target from 0 samples has no ratio)")
    return paired_bootstrap(xa, xb, _mean_ratio, n_boot, seed, level)


def sign_flip_p(a: Sequence[float], b: Sequence[float], n_perm: int = 10_000, seed: int = 0) -> float:
    """Two-sided paired permutation p-value of mean(a − b) = 0 (exact up to MAX_EXACT sign patterns)."""
    xa, xb = _pairs(a, b)
    d = xa - xb  # (n,)
    if 2 ** d.size <= MAX_EXACT:
        bits = (np.arange(2 ** d.size)[:, None] >> np.arange(d.size)) & 1  # (2^n, n) every sign pattern
        signs, plus_one = 1 - 2 * bits, 0
    else:
        signs, plus_one = np.random.default_rng(seed).choice([-1, 1], size=(n_perm, d.size)), 1
    observed = abs(d.mean())  # patterns that tie with it in exact arithmetic count: a relative tolerance
    hits = int(np.sum(np.abs((signs * d).mean(axis=1)) >= observed - 1e-12 * np.abs(d).max()))
    return (hits + plus_one) / (len(signs) + plus_one)


# --------------------------------------------------------------------------------------------- two schemes
def _by_seed(runs: Sequence[RunSummary], side: str) -> dict[int, RunSummary]:
    out: dict[int, RunSummary] = {}
    for r in runs:
        if r.seed is None or r.seed in out:
            raise ValueError(f"compare: every run of {side} needs its own seed ({r.name}: seed {r.seed})")
        out[r.seed] = r
    return out


def _bound(censored_a: int, censored_b: int) -> str | None:
    return {(False, False): None, (False, True): "lower", (True, False): "upper"}.get(
        (censored_a > 0, censored_b > 0), "mixed")


def compare(runs_a: Sequence[RunSummary], runs_b: Sequence[RunSummary], target: float | None = None,
            n_boot: int = 10_000, seed: int = 0) -> dict:
    """Scheme A (e.g. thought) against baseline B (e.g. outcome), runs paired by seed. Target: B's mean final
    accuracy unless given. Differences are A − B; `fewer_samples` is B's samples to target over A's."""
    a, b = _by_seed(runs_a, "A"), _by_seed(runs_b, "B")
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        raise ValueError(f"compare needs >= 2 seeds run by both schemes (shared: {seeds})")
    budget = min(c[-1][0] for c in (curve(r[s]) for r in (a, b) for s in seeds) if c)  # common to the paired runs
    if target is None:
        target = float(np.mean([curve(b[s])[-1][1] for s in seeds]))
    ma = [run_metrics(a[s], target, budget) for s in seeds]
    mb = [run_metrics(b[s], target, budget) for s in seeds]
    out: dict = {"seeds": seeds, "unpaired_seeds": sorted(set(a) ^ set(b)), "target": target, "auc_budget": budget}
    for key in ("final_acc", "best_acc", "auc", "efficiency", "efficiency_kept"):
        va, vb = [m[key] for m in ma], [m[key] for m in mb]
        if None in va or None in vb:
            out[key] = None
            continue
        out[key] = {"a": va, "b": vb, "difference": paired_difference(va, vb, n_boot, seed),
                    "p": sign_flip_p(va, vb, seed=seed)}
    reach_a = [m["samples_to_target"] if m["samples_to_target"] is not None else m["budget"] for m in ma]
    reach_b = [m["samples_to_target"] if m["samples_to_target"] is not None else m["budget"] for m in mb]
    cens_a, cens_b = sum(m["samples_to_target"] is None for m in ma), sum(m["samples_to_target"] is None for m in mb)
    positive = min(reach_a + reach_b) > 0
    out["samples_to_target"] = {
        "a": reach_a, "b": reach_b, "censored_a": cens_a, "censored_b": cens_b, "bound": _bound(cens_a, cens_b),
        "difference": paired_difference(reach_a, reach_b, n_boot, seed), "p": sign_flip_p(reach_a, reach_b, seed=seed),
        "fewer_samples": paired_ratio(reach_b, reach_a, n_boot, seed) if positive else None,
    }
    return out


# --------------------------------------------------------------------------------------------- mechanism
def advantage_shares(advantages, thoughts, atol: float = 1e-6) -> dict:
    """Tokens whose advantage differs from the outcome advantage (|adv − r̂| > atol), as counts and shares of
    the completion tokens of `advantages`, split by the thought a token lies in (module doc). Both tables are
    polars frames as `read_table(thoughts_dir, "advantages" / "thoughts")` returns them."""
    import polars as pl

    tok = (advantages.select("rollout_id", "correct", "outcome_advantage", "advantages")
           .with_columns(token=pl.int_ranges(0, pl.col("advantages").list.len()))
           .explode("advantages", "token")
           .drop_nulls("advantages"))  # a rollout with no completion tokens gives one null row
    spans = (thoughts.select("rollout_id", "label", token=pl.int_ranges("token_start", "token_end"))
             .explode("token").drop_nulls("token"))
    tok = tok.join(spans, on=["rollout_id", "token"], how="left")
    changed = (pl.col("advantages") - pl.col("outcome_advantage")).abs() > atol
    error = pl.col("correct") & (pl.col("label") == "incorrect")
    unmatched = ~pl.col("correct") & (pl.col("label") == "unmatched")
    c = tok.select(
        tokens=pl.len(), changed=changed.sum(),
        error_tokens=error.fill_null(False).sum(), unmatched_tokens=unmatched.fill_null(False).sum(),
        changed_error=(changed & error).fill_null(False).sum(),
        changed_unmatched=(changed & unmatched).fill_null(False).sum(),
    ).row(0, named=True)
    c = {k: int(v) for k, v in c.items()}
    c["changed_other"] = c["changed"] - c["changed_error"] - c["changed_unmatched"]
    share = lambda k: c[k] / c["tokens"] if c["tokens"] else None  # noqa: E731
    return {**c, **{f"share_{k}": share(k) for k in ("changed", "changed_error", "changed_unmatched", "changed_other")}}


def round_shares(thoughts_dir) -> dict:
    """`advantage_shares` of one round's thoughts artifact (e.g. runs/tp-s0/round-003/thoughts)."""
    from thinkrl.artifacts import read_table

    return advantage_shares(read_table(thoughts_dir, "advantages", allow_empty=True),
                            read_table(thoughts_dir, "thoughts", allow_empty=True))


def rollout_behaviour(rollouts) -> dict:
    """Reflection rate, step error rate and mean completion tokens of a rollouts table (module doc), by the oracle."""
    from thinkrl.tasks.arith import oracle_label, problem_from_question

    rollouts_n = reflecting = steps = wrong = skipped = 0
    tokens = []
    for row in rollouts.select("question", "completion", "completion_ids").iter_rows(named=True):
        problem = problem_from_question(row["question"])
        if problem is None:
            skipped += 1
            continue
        labels = oracle_label(problem, row["completion"])
        equations = [st for st in labels.steps if st.arith_ok is not None]
        rollouts_n += 1
        reflecting += any(st.kind == "reflection" for st in labels.steps)
        steps += len(equations)
        wrong += sum(st.arith_ok is False for st in equations)
        tokens.append(len(row["completion_ids"]))
    return {"rollouts": rollouts_n, "not_arith": skipped,
            "reflection_rate": reflecting / rollouts_n if rollouts_n else None,
            "step_error_rate": wrong / steps if steps else None, "equation_steps": steps,
            "mean_tokens": float(np.mean(tokens)) if tokens else None}


def round_behaviour(rollouts_dir) -> dict:
    """`rollout_behaviour` of one round's rollouts artifact (e.g. runs/tp-s0/round-003/rollouts)."""
    from thinkrl.artifacts import read_table

    return rollout_behaviour(read_table(rollouts_dir, "rollouts"))
