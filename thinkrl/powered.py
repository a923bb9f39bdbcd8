"""Protocol P1 of docs/EXPERIMENTS.md as code: its arms, regimes, run configs, run order and analysis.

    arms = p1_runs(start, data_dir, seeds=range(6))      # [P1Run(arm, regime, seed, cfg)], in the protocol's order
    result = analyse_regime(summaries_by_arm, "A")        # the hypotheses answered as the protocol defines

The protocol (written and committed before any run) is the authority; this module only encodes it, so that
`just bench schemes-powered` runs exactly it. Everything an arm sets is the demo's (DESIGN §5: lr 1e-4,
5 prompts x G = 8 per step, α = 1, T = 1) except its scheme and judge; the held-out eval is 500 problems x k = 4
at T = 1 with one eval seed for every run (`EVAL_SEED`), so the arms of a seed share their eval noise.

Regime B's problems are artifacts made by `thinkrl data prepare arith --min-ops 5 --max-ops 8` (training and
held-out with different generator seeds; `regime_b_problems` drops any training problem whose question is held
out).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from thinkrl.experiment import ExperimentConfig

EVAL_SEED = 1234
SEEDS = tuple(range(6))
TARGET_POINTS, FALLBACK_POINTS = 0.15, 0.075   # target: start accuracy + 15 points (fallback + 7.5)
MIN_GRPO_REACHING = 4                           # of 6 grpo runs reach the target, else the fallback
N_BOOT, BOOT_SEED = 10_000, 0
AUC_MARGIN = 0.01                               # H2/H3: "at least as good" = AUC difference interval above -1 pt


@dataclass(frozen=True)
class Arm:
    name: str
    scheme: str
    judge: str
    regimes: tuple[str, ...]
    priority: int          # run order: 1 first (the primary question), then 2, 3, 4


ARMS: tuple[Arm, ...] = (
    Arm("grpo", "outcome", "rule", ("A", "B"), 1),
    Arm("tp", "thought", "rule", ("A", "B"), 1),
    Arm("tp-oracle", "thought", "oracle", ("A", "B"), 2),
    Arm("tp-static", "thought-static", "rule", ("A",), 3),
    Arm("step", "step", "rule", ("A",), 3),
    Arm("tp-noisy10", "thought", "noisy:0.1", ("A",), 4),
    Arm("tp-noisy30", "thought", "noisy:0.3", ("A",), 4),
)
ARM = {a.name: a for a in ARMS}


@dataclass(frozen=True)
class Regime:
    name: str
    doc: str
    max_tokens: int
    min_ops: int | None = None       # None: today's ArithChain (`problems = "arith"`, the held-out arith set)
    max_ops: int | None = None


REGIMES = {
    "A": Regime("A", "today's ArithChain (2-6 operations)", 160),
    "B": Regime("B", "longer chains: ArithChain of 5-8 operations, a lower start accuracy", 224, 5, 8),
}
TRAIN_PROBLEMS_B, EVAL_PROBLEMS_B = (800, 501), (500, 502)   # (count, generator seed) of regime B's artifacts


@dataclass(frozen=True)
class P1Run:
    arm: str
    regime: str
    seed: int
    cfg: ExperimentConfig

    @property
    def name(self) -> str:
        return f"{self.regime}-{self.arm}-s{self.seed}"


def base_config(start: str | Path, regime: Regime, problems: str = "arith", eval_bench: str = "arith") -> ExperimentConfig:
    """The settings every arm of a regime shares (the demo's, with the protocol's eval)."""
    return ExperimentConfig(policy=str(start), rounds=8, prompts_per_round=100, n=8, prompts_per_step=5, lr=1e-4,
                            max_tokens=regime.max_tokens, part_size=8, problems=problems, eval_bench=eval_bench,
                            eval_every=1, eval_initial=True, eval_problems=500, eval_k=4, eval_temperature=1.0,
                            eval_top_p=1.0, eval_seed=EVAL_SEED, threads=1, report_to="none")


def p1_runs(start: str | Path, problems: Mapping[str, tuple[str, str]] | None = None,
            seeds: Iterable[int] = SEEDS) -> list[P1Run]:
    """Every run of P1 in the protocol's order: priority groups, within each the regimes A then B, the seeds, the
    arms. problems: regime -> (training problems, held-out set) (default: arith for A; B needs its artifacts)."""
    problems = {"A": ("arith", "arith"), **(problems or {})}
    seeds = tuple(seeds)
    out = []
    for priority in sorted({a.priority for a in ARMS}):
        for regime in REGIMES.values():
            if regime.name not in problems:
                continue
            base = base_config(start, regime, *problems[regime.name])
            for seed in seeds:
                for arm in ARMS:
                    if arm.priority == priority and regime.name in arm.regimes:
                        out.append(P1Run(arm.name, regime.name, seed,
                                         replace(base, scheme=arm.scheme, judge=arm.judge, seed=seed)))
    return out


def target_for(start_accuracy: float, grpo_runs: Sequence) -> tuple[float, bool]:
    """The protocol's target of a regime, from its start accuracy and its grpo runs alone: (target, fallback?)."""
    from thinkrl.comparison import curve, samples_to_target

    target = start_accuracy + TARGET_POINTS
    reaching = sum(samples_to_target(curve(s), target) is not None for s in grpo_runs)
    if reaching >= MIN_GRPO_REACHING:
        return target, False
    return start_accuracy + FALLBACK_POINTS, True


def verdict(low: float, high: float, threshold: float) -> str:
    """`supported` when the interval lies above the threshold, `contradicted` below it, else `not shown`."""
    if low > threshold:
        return "supported"
    if high < threshold:
        return "contradicted"
    return "not shown"


def analyse_regime(runs: Mapping[str, Sequence], regime: str) -> dict:
    """The protocol's analysis of one regime: runs = arm name -> RunSummary of each seed. Needs grpo and tp;
    answers each hypothesis whose arms ran."""
    from thinkrl.comparison import compare, curve

    grpo = runs["grpo"]
    start = curve(grpo[0])[0][1]
    target, fallback = target_for(start, grpo)
    out = {"regime": regime, "start_accuracy": start, "target": target, "fallback_target": fallback, "arms": {},
           "waiting": {}}

    def paired(a, b) -> bool:   # a comparison needs at least 2 seeds run by both
        return len({s.seed for s in a} & {s.seed for s in b}) >= 2

    for name, arm_runs in runs.items():
        if name != "grpo" and arm_runs:
            if paired(arm_runs, grpo):
                out["arms"][name] = compare(arm_runs, grpo, target=target, n_boot=N_BOOT, seed=BOOT_SEED)
            else:
                out["waiting"][name] = len(arm_runs)   # runs finished, fewer than 2 paired seeds
    h = {}
    if "tp" in out["arms"]:
        r = out["arms"]["tp"]["samples_to_target"]["fewer_samples"]   # grpo's samples over tp's: > 1 favours tp
        h["H1"] = None if r is None else verdict(r.low, r.high, 1.0)
    for key, other in (("H2", "tp-static"), ("H3", "step")):
        if runs.get("tp") and runs.get(other) and paired(runs["tp"], runs[other]):
            d = compare(runs["tp"], runs[other], target=target, n_boot=N_BOOT, seed=BOOT_SEED)["auc"]
            h[key] = None if d is None else verdict(d["difference"].low, d["difference"].high, -AUC_MARGIN)
    judged = ("tp-oracle", "tp", "tp-noisy10", "tp-noisy30")   # best judge to worst
    if all(out["arms"].get(a) and out["arms"][a]["auc"] for a in judged):
        d = [out["arms"][a]["auc"]["difference"] for a in judged]   # AUC(arm) - AUC(grpo)
        est = [x.estimate for x in d]
        if est[3] >= est[0]:
            h["H4"] = "contradicted"
        elif est == sorted(est, reverse=True) and d[0].low > est[3]:
            h["H4"] = "supported"
        else:
            h["H4"] = "not shown"
    out["hypotheses"] = h
    return out


def run_record(run: P1Run, run_dir: str | Path) -> dict:
    """What the analysis needs of one finished run, as plain data small enough to keep in the repository once its
    run directory is gone: the arm, regime and seed, the run's summary, and per round the mechanism figures
    (`comparison.round_shares` of its thoughts, `comparison.round_behaviour` of its rollouts, by the oracle)."""
    from thinkrl import runs as layout
    from thinkrl.comparison import round_behaviour, round_shares
    from thinkrl.summary import collect_run

    d = Path(run_dir)
    mechanism = []
    for r, rd in layout.round_dirs(d):
        m = {"round": r, "behaviour": round_behaviour(rd / layout.ROLLOUTS)}
        m["shares"] = round_shares(rd / layout.THOUGHTS) if (rd / layout.THOUGHTS / "_manifest.json").is_file() \
            else None
        mechanism.append(m)
    s = collect_run(d)
    summary = {**s.to_dict(), "path": run.name, "steps": s.steps}   # steps: the report's per-step training curves
    return {"name": run.name, "arm": run.arm, "regime": run.regime, "seed": run.seed, "summary": summary,
            "mechanism": mechanism}


def record_summary(record: Mapping):
    """The RunSummary of a `run_record`."""
    from thinkrl.summary import RunSummary

    return RunSummary.from_dict(record["summary"])


def mechanism_table(records: Sequence[Mapping]) -> dict[str, dict]:
    """Per arm, means over its runs of each run's mean over rounds: the share of completion tokens whose advantage
    differs from GRPO's (all, in error thoughts of correct rollouts, in unmatched thoughts of wrong rollouts),
    and the oracle's reflection rate, step error rate and mean tokens in the first and the last round."""
    import numpy as np

    def mean(xs):
        xs = [x for x in xs if x is not None]
        return float(np.mean(xs)) if xs else None

    out: dict[str, dict] = {}
    for arm in dict.fromkeys(r["arm"] for r in records):
        runs = [r for r in records if r["arm"] == arm]
        row = {"runs": len(runs)}
        for k in ("share_changed", "share_changed_error", "share_changed_unmatched"):
            row[k] = mean([mean([(m["shares"] or {}).get(k, 0.0) for m in r["mechanism"]]) for r in runs])
        for k in ("reflection_rate", "step_error_rate", "mean_tokens"):
            row[k + "_first"] = mean([r["mechanism"][0]["behaviour"][k] for r in runs if r["mechanism"]])
            row[k + "_last"] = mean([r["mechanism"][-1]["behaviour"][k] for r in runs if r["mechanism"]])
        out[arm] = row
    return out


def start_fingerprint(start: str | Path) -> str:
    """sha256 over a start policy's weights (its *.safetensors): runs pair only over one start policy, and a
    rebuilt warm start can differ in its float bits (its thread count follows the machine's load)."""
    import hashlib

    start, h = Path(start), hashlib.sha256()
    for f in sorted(start.rglob("*.safetensors")):
        h.update(f.relative_to(start).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def powered_records(runs: Sequence[P1Run], out: str | Path, kept: str | Path, start: str | Path
                    ) -> tuple[dict[str, dict], int]:
    """The record of every finished run: made from its run directory out/NAME when that has finished (and kept as
    kept/NAME.json, replacing an older one), else the one kept there earlier. Each record is tagged with the
    fingerprint of the start policy its own run used; only those from `start` are returned, with the count of
    records set aside for another start policy."""
    import json
    from functools import cache

    out, kept = Path(out), Path(kept)
    kept.mkdir(parents=True, exist_ok=True)
    fingerprint_of = cache(start_fingerprint)   # every run of a start policy reads its weights once
    fingerprint, records, other = fingerprint_of(str(start)), {}, 0
    for r in runs:
        path = kept / f"{r.name}.json"
        if (out / r.name / "summary.json").is_file():
            rec = run_record(r, out / r.name)
            used = rec["summary"]["config"].get("policy")   # the run's own start policy
            rec["start_policy"] = fingerprint_of(str(used)) if used and Path(used).is_dir() else None
            path.write_text(json.dumps(rec, sort_keys=True) + "\n")
            records[r.name] = rec
        elif path.is_file():
            records[r.name] = json.loads(path.read_text())
        if r.name in records and records[r.name].get("start_policy") != fingerprint:
            del records[r.name]
            other += 1
    return records, other
