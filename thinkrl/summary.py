"""Run summaries: one run directory read back from its artifacts, per round and per eval point.

    s = collect_run("runs/grpo-s0")          # RunSummary: rounds (RoundSummary), evals (EvalPoint), missing
    s.final_accuracy, s.samples_consumed, s.samples_to_reach(0.42), s.last("mean_tokens")
    groups = seed_groups([collect_run(d) for d in dirs])  # [(label, [RunSummary, ...])] in order of appearance
    s.steps["loss"], s.steps["step"]         # per optimizer step, every numeric train_metrics column

A run directory (written by `thinkrl run`, `thinkrl/rounds.py`; its layout in `thinkrl/runs.py`) holds
`config.toml`, `eval-initial/` and `round-NNN/{rollouts,judgments,thoughts,train,eval}/`. Everything here
comes from manifests and tables read through `artifacts.read_manifest` / `read_table`; logs are never
parsed. A run still in progress (later rounds missing, a stage without its manifest) is summarised as far
as it got, and each summary lists what is missing. The tables and the report are in `thinkrl/report.py`,
the figures in `thinkrl/plots.py`.

Definitions (the report repeats them under its table):
- samples consumed after round r: rollouts sampled for training in rounds 0..r (rows of rollouts.parquet,
  the `rollouts` metric of the sample stage). The eval of `round-r/eval` (of `round-r/train/policy`) is placed at
  the samples of rounds 0..r; `eval-initial` (of the start policy, whatever it is) at 0.
- held-out accuracy: avg@k (mean pass@1 over k samples), macro-averaged over the benchmarks evaluated.
- samples to reach an accuracy (`RunSummary.samples_to_reach`): the samples consumed at the first eval point
  whose accuracy is at least the target. Eval points are discrete: no interpolation between them.
- per-step figures (`RunSummary.steps`): every numeric column of the rounds' train_metrics tables (global
  `step`, loss, kl, clip_frac, grad_norm, ... and whatever a newer trainer logs), steps skipped for a
  non-finite loss left out, in step order.
- seeds of one experiment (`seed_groups`): runs of one scheme whose config.toml match in every key except
  `seed` and the keys in NOT_COMPARED (they change no number: names, threads, concurrency, how often to save).
  A group of several runs always holds distinct seeds: matching runs in which a seed repeats (the same run
  given twice, a copy) are not averaged, each stands alone.
- incorrect-thought share: tokens of `incorrect` steps (in correct rollouts, from the judgments table) over
  all completion tokens of the round: the same definition for every scheme, so GRPO runs that were judged
  (for measurement only) compare with TP runs. Without judgments, the segment stage's
  `incorrect_thought_token_share` (thought spans include the separators after each step) is used.

Against the paper: these are thinkrl's own measurements of a run, not part of the method (docs/PAPER.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from thinkrl import runs as layout
from thinkrl.artifacts import read_manifest, read_table
from thinkrl.errors import ThinkrlError

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
    steps: dict[str, list[float | None]] = field(default_factory=dict, repr=False)  # column -> one value a step

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
        """Plain data for summary.json: rounds and eval points (the per-step figures stay in train_metrics)."""
        return {k: v for k, v in asdict(self).items() if k != "steps"}

    @classmethod
    def from_dict(cls, d: dict) -> RunSummary:
        """The summary `to_dict` wrote (summary.json, or a record kept after its run directory is gone)."""
        return cls(**{**d, "rounds": [RoundSummary(**r) for r in d["rounds"]],
                      "evals": [EvalPoint(**e) for e in d["evals"]]})


# --------------------------------------------------------------------------------------------- collecting
def _read_toml(path: Path) -> dict:
    """A run's config.toml as written (keys of older versions kept: a report reads old runs too); {} if none."""
    from thinkrl.settings import load_toml

    return load_toml(path) if path.is_file() else {}


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
        missing.append(f"{label}: not finished (no _manifest.json)" if unfinished else f"{label}: {e}")
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


def _collect_round(d: Path, r: int, scheme_hint: str | None, step_tables: list) -> RoundSummary:
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
            step_tables.append(_train_metrics(d / layout.TRAIN, rs))
        except ThinkrlError as e:
            rs.missing.append(f"{tag}/train: {e}")
    return rs


def _train_metrics(train_dir: Path, rs: RoundSummary):
    """Fill the round's training means into `rs`; returns the train_metrics table (its per-step figures)."""
    tm = read_table(train_dir, "train_metrics", allow_empty=True)
    rs.train_steps = tm.height
    rs.skipped_steps = int(tm["skipped"].sum()) if tm.height else 0
    ok = tm.filter(~tm["skipped"])
    mean = lambda df, c: float(df[c].mean()) if df.height else None  # noqa: E731
    rs.mean_loss, rs.clip_frac, rs.kl, rs.grad_norm = (mean(ok, c) for c in ("loss", "clip_frac", "kl", "grad_norm"))
    rs.seconds_per_step, rs.mfu = mean(tm, "seconds"), mean(tm, "mfu")
    if rs.dropped_rollouts is None and tm.height:
        rs.dropped_rollouts = int(tm["dropped_rollouts"][-1])
    return tm


def _step_columns(tables: list) -> dict[str, list[float | None]]:
    """The numeric columns of the rounds' train_metrics, non-skipped steps in step order (nulls as None)."""
    import polars as pl

    tables = [t for t in tables if t.height]
    if not tables:
        return {}
    tm = pl.concat(tables, how="diagonal_relaxed").filter(~pl.col("skipped")).sort("step")
    return {c: tm[c].cast(pl.Float64).to_list() for c, dt in tm.schema.items()
            if dt.is_numeric()}


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
    missing: list[str] = [] if cfg else ["config.toml: missing (scheme and seed from manifests)"]
    rounds: list[RoundSummary] = []
    cum: dict[int, int | None] = {}
    total: int | None = 0
    step_tables: list = []
    for r, rd in round_dirs:
        rs = _collect_round(rd, r, scheme, step_tables)
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
                      expected_rounds=expected if isinstance(expected, int) else None, config=cfg, missing=missing,
                      steps=_step_columns(step_tables))


# --------------------------------------------------------------------------------------------- grouping
# config keys that tell runs of one experiment apart without changing any figure it measures
NOT_COMPARED = ("seed", "name", "threads", "gpu_memory_utilization", "judge_concurrency", "judge_api_key_env",
                "save_every")


def _flat(cfg: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def compared_config(s: RunSummary) -> dict[str, Any]:
    """The config keys that make an experiment (flattened: `table.key` for older nested files)."""
    return {k: v for k, v in _flat(s.config).items() if k.rsplit(".", 1)[-1] not in NOT_COMPARED}


def _short(v: Any) -> str:
    text = str(v)
    return text if len(text) <= 24 else "…" + text[-23:]


def seed_groups(summaries: Sequence[RunSummary]) -> list[tuple[str, list[RunSummary]]]:
    """[(label, runs)] in order of first appearance: runs of one scheme whose configs differ only in `seed`
    (and NOT_COMPARED) form one group; a group of several runs always has distinct seeds. The label is the
    scheme, with the keys that set it apart where several groups share a scheme (`thought (lr=0.0003)`)."""
    keyed: dict[tuple, list[RunSummary]] = {}
    for s in summaries:
        key = (s.scheme or "?", tuple(sorted((k, repr(v)) for k, v in compared_config(s).items())))
        keyed.setdefault(key, []).append(s)
    groups: list[list[RunSummary]] = []
    for runs in keyed.values():
        seeds = [r.seed for r in runs]
        distinct = None not in seeds and len(set(seeds)) == len(seeds)
        groups += [runs] if distinct or len(runs) == 1 else [[r] for r in runs]
    groups.sort(key=lambda g: summaries.index(g[0]))
    by_scheme: dict[str, list[list[RunSummary]]] = {}
    for g in groups:
        by_scheme.setdefault(g[0].scheme or "?", []).append(g)
    labels: dict[int, str] = {}
    for scheme, gs in by_scheme.items():
        cfgs = [compared_config(g[0]) for g in gs]
        keys = sorted({k for c in cfgs for k in c if len({repr(x.get(k)) for x in cfgs}) > 1})
        for g, c in zip(gs, cfgs, strict=True):
            parts = [f"{k}={_short(c.get(k))}" for k in keys[:3]] + (["…"] if len(keys) > 3 else [])
            if len(gs) > 1 and not parts:  # same config, a repeated seed: name the run
                parts = [g[0].name]
            labels[id(g)] = f"{scheme} ({', '.join(parts)})" if len(gs) > 1 else scheme
    return [(labels[id(g)], g) for g in groups]
