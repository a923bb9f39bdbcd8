"""Evaluation: k samples per problem on named benchmarks; avg@k, pass@k, maj@k, mean tokens.

    summary = evaluate(benchmarks={"math500": df, ...}, engine=engine, cfg=EvalConfig(k=16), writer=w, ...)

Samples go through the same code as the sample stage (`sampling.sample_part`), in resumable parts.
Scores (the paper's protocol: avg@16 pass@1 at temperature 0.6, top-p 0.95):
- avg@k: mean over problems of the share of correct samples (the mean pass@1);
- pass@k: the unbiased estimator 1 - C(n-c, k) / C(n, k) of Chen et al. 2021 with n samples, c correct;
- maj@k: the most frequent extracted answer (whitespace-insensitive string match; ties go to the answer
  seen first) is correct. Samples with no answer do not vote.
Each eval_samples row carries the prompt the policy saw (after the template) and the gold answer beside the
completion, so a sample can be read, or graded again, from the artifact alone.

Sharding (`--shard k/n`, thinkrl.shards): the parts of every benchmark, listed benchmark after benchmark, are
numbered over the whole list; shard k samples parts i % n == k into the same --out, and the last to finish
scores the merged samples (eval_summary from the whole table, as one process does).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl

from thinkrl.artifacts import ArtifactWriter, StageResult, finished, read_table
from thinkrl.engine.base import Engine
from thinkrl.sampling import GenerationSettings, SampleConfig, sample_in_parts
from thinkrl.settings import check_settings, project, same_as, setting
from thinkrl.shards import Plan, ShardSettings, begin, complete, cuts, part_names


@dataclass(frozen=True)
class EvalConfig(GenerationSettings):
    """Every setting of the eval stage (`thinkrl eval`); the generation ones are the sample stage's."""

    k: int = setting(16, "samples per held-out problem (avg@k, pass@k, maj@k)", short="-k", ge=1)
    temperature: float = setting(0.6, "eval sampling temperature (paper: 0.6)", ge=0)
    top_p: float = setting(0.95, "eval nucleus sampling mass (paper: 0.95)", gt=0, le=1)
    limit: int | None = setting(None, "problems per benchmark: the first N (a generated task: N generated; "
                                      "default: all, arith 200)", ge=1)
    seed: int = same_as(SampleConfig, "seed")
    shard: tuple[int, int] = same_as(ShardSettings, "shard")

    def __post_init__(self) -> None:
        check_settings(self)
        object.__setattr__(self, "dtype", self.sample_config().dtype)  # validated, and its one name (bf16 -> bfloat16)

    def sample_config(self) -> SampleConfig:
        return project(self, SampleConfig, n=self.k, temperature=self.temperature, top_p=self.top_p, round=-1)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (needs k <= n)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_correct(preds: list[str | None], correct: list[bool]) -> bool:
    votes = Counter()
    first: dict[str, int] = {}
    verdict: dict[str, bool] = {}
    for i, (p, c) in enumerate(zip(preds, correct, strict=True)):
        if p is None:
            continue
        key = "".join(p.split())
        votes[key] += 1
        first.setdefault(key, i)
        verdict.setdefault(key, c)
    if not votes:
        return False
    best = max(votes, key=lambda a: (votes[a], -first[a]))
    return verdict[best]


def summarise(samples: pl.DataFrame, k: int) -> pl.DataFrame:
    """eval_samples rows -> one eval_summary row per benchmark."""
    rows = []
    for (bench,), df in samples.group_by(["benchmark"], maintain_order=True):
        per_problem = df.group_by("problem_id", maintain_order=True).agg(
            pl.col("correct").sum().alias("c"), pl.len().alias("n"),
            pl.col("pred_answer"), pl.col("correct").alias("flags"))
        rows.append({
            "benchmark": bench, "problems": per_problem.height, "k": k,
            "avg_at_k": float((per_problem["c"] / per_problem["n"]).mean()),
            "pass_at_k": float(sum(pass_at_k(n, c, min(k, n)) for n, c in zip(per_problem["n"], per_problem["c"], strict=True))
                               / per_problem.height),
            "maj_at_k": float(sum(majority_correct(p, f) for p, f in zip(per_problem["pred_answer"],
                                                                          per_problem["flags"], strict=True)) / per_problem.height),
            "mean_tokens": float(df["tokens"].mean()),
            "truncation_rate": float((df["finish_reason"] == "length").mean()),
        })
    return pl.DataFrame(rows)


def eval_stage_config(cfg: EvalConfig, benchmarks: Mapping[str, pl.DataFrame], policy: Path) -> dict:
    """The eval stage's resolved config (its skip key): settings, benchmark names and their problems' sha256."""
    from thinkrl.problems import problems_sha256
    from thinkrl.sampling import NOT_IN_KEY

    return {**{k: v for k, v in asdict(cfg).items() if k not in NOT_IN_KEY}, "benchmarks": list(benchmarks),
            "policy": str(policy),
            "problems_sha256": {n: problems_sha256(df) for n, df in benchmarks.items()}}


def run_eval_stage(benchmarks: Mapping[str, pl.DataFrame], policy: Path, out: Path, cfg: EvalConfig,
                   force: bool = False, tokenizer=None, load: Callable[[], Engine] | None = None,
                   start: Callable[[int], None] | None = None,
                   progress: Callable[[int, int], None] | None = None) -> StageResult:
    """The eval stage, for `thinkrl eval` and `thinkrl run` alike: key -> skip -> sample and score -> finish.
    `benchmarks` are loaded with cfg.limit (`thinkrl.problems.problem_sets`); `load()` gives the engine
    (default: load_engine with `engine_options(cfg)`), only when work remains."""
    from thinkrl.engine import engine_options, load_engine
    from thinkrl.sampling import resolved_generation

    cfg = resolved_generation(cfg, policy, tokenizer)
    writer = ArtifactWriter(out, "eval", eval_stage_config(cfg, benchmarks, policy), inputs={"policy": policy})
    if writer.up_to_date() and not force:
        return finished(writer)
    plan = eval_plan(benchmarks, cfg)
    if start:  # this shard's sequences
        start(plan.share([size for df in benchmarks.values() for _, size in cuts(df.height, cfg.part_size)]) * cfg.k)
    eng = load() if load else load_engine(cfg.engine, policy, **engine_options(cfg))
    return evaluate_shard(benchmarks, eng, cfg, writer, policy=str(policy), progress=progress)


def eval_plan(benchmarks: Mapping[str, pl.DataFrame], cfg: EvalConfig) -> Plan:
    """The parts `{benchmark}-{index:06d}` of every benchmark, benchmark after benchmark, and cfg's shard."""
    return Plan(tuple(p for b, df in benchmarks.items() for p in part_names(df.height, cfg.part_size, f"{b}-")),
                cfg.shard)


def evaluate(benchmarks: Mapping[str, pl.DataFrame], engine: Engine, cfg: EvalConfig, writer: ArtifactWriter,
             policy: str, progress: Callable[[int, int], None] | None = None) -> pl.DataFrame:
    """Sample cfg.k completions per problem of every benchmark (parts resume), write samples + summary (one
    process); the summary."""
    evaluate_shard(benchmarks, engine, cfg, writer, policy, progress)
    return read_table(writer.out, "eval_summary")


def evaluate_shard(benchmarks: Mapping[str, pl.DataFrame], engine: Engine, cfg: EvalConfig, writer: ArtifactWriter,
                   policy: str, progress: Callable[[int, int], None] | None = None) -> StageResult:
    """Sample this shard's parts (all of them for 0/1) not yet written; the last shard scores and finishes."""
    scfg = cfg.sample_config()
    plan = eval_plan(benchmarks, cfg)
    begin(writer, plan)
    for bench, problems in benchmarks.items():
        def eval_rows(rows: list[dict], bench: str = bench) -> list[dict]:
            return [{"benchmark": bench, "problem_id": r["problem_id"], "sample_idx": r["sample_idx"],
                     "prompt": r["prompt"], "answer": r["answer"], "completion": r["completion"],
                     "pred_answer": r["pred_answer"], "correct": r["correct"], "tokens": len(r["completion_ids"]),
                     "finish_reason": r["finish_reason"]} for r in rows]

        sample_in_parts(problems, engine, scfg, cfg.template, policy, writer, "eval_samples", f"{bench}-", eval_rows,
                        progress, only=set(plan.mine))
    return complete(writer, plan, ["eval_samples"], {}, lambda w, runs: finish_eval(w, runs, k=cfg.k))


def finish_eval(writer: ArtifactWriter, runs: list[dict], k: int | None = None) -> dict:
    """The eval artifact from its sample parts: eval_summary and the metrics from the whole table (k: the
    config's when not given)."""
    summary = summarise(writer.read_parts("eval_samples"), k if k is not None else int(writer.config["k"]))
    writer.set_table("eval_summary", summary)
    metrics = {f"{r['benchmark']}/{m}": r[m] for r in summary.to_dicts()
               for m in ("avg_at_k", "pass_at_k", "maj_at_k", "mean_tokens")}
    if len(runs) > 1:
        metrics["shards"] = len(runs)
    writer.finish(metrics, tables=["eval_samples", "eval_summary"])
    return metrics
