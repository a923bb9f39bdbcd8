"""Sampling rollouts: G completions per problem from a policy, graded, written in resumable parts.

    cfg = SampleConfig(n=8, temperature=1.0, max_tokens=256)
    metrics = sample_rollouts(problems, engine, cfg, writer, policy="runs/tiny")

Problems are cut into parts of `part_size` problems, in artifact order; each part is generated as one
call to the engine and written as one part file, so a killed run resumes at the first missing part and
produces the same rows as an uninterrupted run (same batch composition, same per-sample seeds).

Sharding (`--shard k/n`, thinkrl.shards): shard k samples the parts i % n == k of the whole problem list (cut
as one process cuts it) into the same --out; the last shard to finish merges them into the rollouts artifact,
byte-identical to a 1-process run's. The shard is not in the key; the manifest's seconds and new_tokens are
summed over the shards, tokens_per_s is their quotient (per process).

Seeds: sample j of problem p in round r uses `derive_seed(seed, r, p, j)`, a hash of the four, so a
rollout does not depend on sharding, part size or which other problems share its batch.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Container
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import polars as pl

from thinkrl.artifacts import ArtifactWriter, StageResult, finished, read_table
from thinkrl.engine.base import Engine, SamplingParams
from thinkrl.grading import grade_many
from thinkrl.settings import check_settings, same_as, setting
from thinkrl.shards import Plan, ShardSettings, begin, complete, cuts, part_names, sum_runs
from thinkrl.templates import encode_prompt, render


def derive_seed(seed: int, round_: int, problem_id: str, sample_idx: int) -> int:
    """A 63-bit seed from (base seed, round, problem, sample), stable across machines and runs."""
    digest = hashlib.sha256(f"{seed}/{round_}/{problem_id}/{sample_idx}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class SampleConfig:
    """Every setting of the sample stage (`thinkrl sample`); `thinkrl eval` and `thinkrl run` share the
    generation ones (max_tokens, template, engine, dtype, part_size)."""

    n: int = setting(8, "completions per problem (group size G)", short="-n", ge=1,
                    aliases=("num_generations",))
    temperature: float = setting(1.0, "sampling temperature of the rollouts (0 = greedy)", ge=0)
    top_p: float = setting(1.0, "nucleus sampling mass of the rollouts", gt=0, le=1)
    max_tokens: int = setting(1024, "maximum completion tokens (the generation budget; Dr. GRPO's length constant)",
                              ge=1, aliases=("max_completion_length",))
    stop: tuple[str, ...] = setting((), "stop string (repeatable)")
    template: str = setting("auto", "prompt template: auto (the policy's thinkrl.json), chat, chat-plain, raw, "
                                    "raw-plain")
    engine: str = setting("hf", "generation engine: hf (transformers) or vllm")
    dtype: str = setting("auto", "generation dtype: auto (hf: float32 on CPU, bfloat16 on CUDA; vllm: the "
                                 "checkpoint's bf16/fp16, else bf16), float32 or bfloat16; the manifest records "
                                 "the resolved one")
    device: str = setting("auto", "hf engine: auto (CUDA when present), cpu, cuda or cuda:N; the manifest records "
                                  "the resolved one")
    tensor_parallel_size: int = setting(1, "vllm: GPUs one model is split over", ge=1)
    gpu_memory_utilization: float | None = setting(None, "vllm: share of GPU memory (on CPU: of RAM) it may take "
                                                         "for weights and KV cache (default: vLLM's, 0.9)",
                                                 gt=0, le=1)
    max_model_len: int | None = setting(None, "vllm: longest prompt + completion (default: the model's)", ge=1)
    enable_prefix_caching: bool = setting(True, "vllm: share the KV cache of a prompt among its G samples")
    enforce_eager: bool = setting(False, "vllm: no CUDA graphs (slower; quicker start, less memory)")
    seed: int = setting(0, "base seed; each sample's seed derives from (seed, round, problem, sample)", ge=0)
    round: int = setting(0, "training round recorded in the rows (that of the behaviour policy)")
    shard: tuple[int, int] = same_as(ShardSettings, "shard")
    limit: int | None = setting(None, "use only the first N problems", ge=1)
    part_size: int = setting(16, "problems per part file: resume granularity; it sets the batch make-up, so "
                                 "changing it resamples", ge=1)
    grade_timeout_s: float = setting(5.0, "time limit per answer comparison (math-verify), seconds", gt=0)

    def __post_init__(self) -> None:
        check_settings(self)  # the bounds declared above
        from thinkrl.engine import check_device, check_engine
        from thinkrl.models import check_dtype

        check_engine(self.engine)
        check_device(self.device)
        check_dtype(self.dtype)
        object.__setattr__(self, "dtype", {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(
            self.dtype, self.dtype))  # one name per dtype: the same outputs, the same key

    def params(self) -> SamplingParams:
        return SamplingParams(n=self.n, temperature=self.temperature, top_p=self.top_p,
                              max_tokens=self.max_tokens, stop=tuple(self.stop))

    def to_dict(self) -> dict:
        return asdict(self)


def sample_part(problems: pl.DataFrame, engine: Engine, cfg: SampleConfig, template: str, policy: str,
                progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Generate and grade cfg.n completions for each problem of one part; rows of the rollouts schema."""
    tok = engine.tokenizer
    questions = problems["question"].to_list()
    prompts = [render(template, q, tok) for q in questions]
    prompt_ids = [encode_prompt(p, tok) for p in prompts]
    pids = problems["problem_id"].to_list()
    seeds = [[derive_seed(cfg.seed, cfg.round, pid, j) for j in range(cfg.n)] for pid in pids]
    outs = engine.generate(prompt_ids, cfg.params(), seeds, progress=progress)
    golds = problems["answer"].to_list()
    flat = [(i, j, c) for i, group in enumerate(outs) for j, c in enumerate(group)]
    grades = grade_many([c.text for _, _, c in flat], [golds[i] for i, _, _ in flat], timeout_s=cfg.grade_timeout_s)
    rows = []
    for (i, j, c), g in zip(flat, grades, strict=True):
        rows.append({
            "rollout_id": f"{pids[i]}/r{cfg.round}/s{j}", "problem_id": pids[i], "question": questions[i],
            "sample_idx": j,
            "round": cfg.round, "policy": policy, "template": template, "prompt": prompts[i],
            "completion": c.text, "prompt_ids": prompt_ids[i], "completion_ids": list(c.token_ids),
            "logprobs": list(c.logprobs), "finish_reason": c.finish_reason, "answer": golds[i],
            "pred_answer": g.pred_answer, "correct": g.correct, "seed": seeds[i][j],
        })
    return rows


@dataclass(frozen=True)
class GenerationSettings:
    """The generation settings of the other stages that sample (eval, thinkrl run): the sample stage's own,
    inherited so that a new engine option is declared in SampleConfig and listed here once."""

    max_tokens: int = same_as(SampleConfig, "max_tokens")
    template: str = same_as(SampleConfig, "template")
    engine: str = same_as(SampleConfig, "engine")
    dtype: str = same_as(SampleConfig, "dtype")
    device: str = same_as(SampleConfig, "device")
    tensor_parallel_size: int = same_as(SampleConfig, "tensor_parallel_size")
    gpu_memory_utilization: float | None = same_as(SampleConfig, "gpu_memory_utilization")
    max_model_len: int | None = same_as(SampleConfig, "max_model_len")
    enable_prefix_caching: bool = same_as(SampleConfig, "enable_prefix_caching")
    enforce_eager: bool = same_as(SampleConfig, "enforce_eager")
    part_size: int = same_as(SampleConfig, "part_size")


# how much memory vLLM may take changes no token, nor does which shard samples which part: no rerun for them
NOT_IN_KEY = ("gpu_memory_utilization", "shard")


def sample_stage_config(cfg: SampleConfig, policy: str | Path) -> dict:
    """The sample stage's resolved config (its skip key), the same for `thinkrl sample` and `thinkrl run`."""
    # the artifact is the whole input whichever shards wrote it: its config says shard 0/1, as the keys of sample
    # artifacts written before shards merged into one artifact said (so those stay valid)
    return {**{k: v for k, v in cfg.to_dict().items() if k not in NOT_IN_KEY}, "shard": [0, 1],
            "policy": str(policy)}


def resolved_generation(cfg, policy: Path, tokenizer=None):
    """`cfg` (SampleConfig, EvalConfig) with its template, device and dtype resolved, as manifests record them."""
    from thinkrl.engine import engine_device, resolve_dtype

    device = engine_device(cfg.engine, cfg.device)
    return replace(cfg, template=resolved_template(cfg.template, policy, tokenizer), device=device,
                   dtype=resolve_dtype(cfg.engine, cfg.dtype, device, policy))


def resolved_template(template: str, policy: Path, tokenizer=None) -> str:
    """The template name a stage records: `auto` resolved from the policy's thinkrl.json / tokenizer (no model)."""
    from thinkrl.models import check_model_dir, load_tokenizer
    from thinkrl.templates import resolve_template

    check_model_dir(policy)
    return resolve_template(template, tokenizer or load_tokenizer(policy), model_dir=policy)


def run_sample_stage(problems: Path, policy: Path, out: Path, cfg: SampleConfig, force: bool = False, tokenizer=None,
                     load: Callable[[], Engine] | None = None, start: Callable[[int], None] | None = None,
                     progress: Callable[[int, int], None] | None = None) -> StageResult:
    """The sample stage, for `thinkrl sample` and `thinkrl run` alike: key -> skip -> sample -> finish.
    cfg.template/device/dtype may be `auto` (resolved first); `load()` gives the engine (default: load_engine), only
    when work remains; start(total sequences of this shard) when work begins."""
    from thinkrl.engine import engine_options, load_engine

    cfg = resolved_generation(cfg, policy, tokenizer)
    writer = ArtifactWriter(out, "sample", sample_stage_config(cfg, policy),
                            inputs={"problems": problems, "policy": policy})
    if writer.up_to_date() and not force:
        return finished(writer)
    probs = read_table(problems, "problems")
    probs = probs if cfg.limit is None else probs.head(cfg.limit)
    plan = Plan(tuple(part_names(probs.height, cfg.part_size)), cfg.shard)
    if start:  # this shard's sequences
        start(plan.share([size for _, size in cuts(probs.height, cfg.part_size)]) * cfg.n)
    eng = load() if load else load_engine(cfg.engine, policy, **engine_options(cfg))
    return sample_shard(probs, eng, cfg, writer, policy=str(policy), template=cfg.template, progress=progress)


def sample_rollouts(problems: pl.DataFrame, engine: Engine, cfg: SampleConfig, writer: ArtifactWriter,
                    policy: str, template: str,
                    progress: Callable[[int, int], None] | None = None) -> dict:
    """Sample every part not yet written, then finish the artifact (one process); its metrics."""
    return sample_shard(problems, engine, cfg, writer, policy, template, progress).metrics


def sample_shard(problems: pl.DataFrame, engine: Engine, cfg: SampleConfig, writer: ArtifactWriter,
                 policy: str, template: str, progress: Callable[[int, int], None] | None = None) -> StageResult:
    """Sample this shard's parts (all of them for 0/1) not yet written; the last shard finishes the artifact.

    progress(new_tokens, finished_sequences) is passed to the engine (and called for resumed parts)."""
    plan = Plan(tuple(part_names(problems.height, cfg.part_size)), cfg.shard)
    begin(writer, plan)
    t0 = time.perf_counter()
    new_tokens = sample_in_parts(problems, engine, cfg, template, policy, writer, "rollouts", "", lambda rows: rows,
                                 progress, only=set(plan.mine))
    run = {"seconds": round(time.perf_counter() - t0, 3), "new_tokens": new_tokens}
    return complete(writer, plan, ["rollouts"], run, finish_sample)


def finish_sample(writer: ArtifactWriter, runs: list[dict]) -> dict:
    """The rollouts artifact from its parts: metrics of the whole table; seconds and new tokens summed over the
    shards' runs (thinkrl.shards)."""
    metrics = rollout_metrics(writer.read_parts("rollouts"))
    t = sum_runs(runs, "seconds", "new_tokens")
    metrics.update(seconds=round(t["seconds"], 3), new_tokens=int(t["new_tokens"]),
                   tokens_per_s=round(t["new_tokens"] / t["seconds"], 2) if t["seconds"] > 0 else None)
    if len(runs) > 1:
        metrics["shards"] = len(runs)
    writer.finish(metrics)
    return metrics


def sample_in_parts(problems: pl.DataFrame, engine: Engine, cfg: SampleConfig, template: str, policy: str,
                    writer: ArtifactWriter, table: str, prefix: str, to_rows: Callable[[list[dict]], list[dict]],
                    progress: Callable[[int, int], None] | None = None, only: Container[str] | None = None) -> int:
    """Sample `problems` cfg.part_size at a time into part files `{prefix}{index:06d}` of `table` (rows made
    by to_rows from the rollout rows), skipping parts a killed run already wrote and, with `only`, the parts
    not in it (another shard's). Returns the new tokens."""
    new_tokens = 0
    for part, (start, size) in zip(part_names(problems.height, cfg.part_size, prefix),
                                   cuts(problems.height, cfg.part_size), strict=True):
        if only is not None and part not in only:
            continue
        if writer.part_done(table, part):
            if progress:
                progress(0, size * cfg.n)
            continue
        rows = sample_part(problems.slice(start, size), engine, cfg, template, policy, progress)
        writer.write_part(table, part, to_rows(rows))
        new_tokens += sum(len(r["completion_ids"]) for r in rows)
    return new_tokens


def rollout_metrics(df: pl.DataFrame) -> dict:
    lengths = df["completion_ids"].list.len()
    return {
        "rollouts": df.height,
        "problems": df["problem_id"].n_unique(),
        "accuracy": float(df["correct"].mean()),
        "mean_tokens": float(lengths.mean()),
        "truncation_rate": float((df["finish_reason"] == "length").mean()),
        "no_answer_rate": float(df["pred_answer"].is_null().mean()),
    }
