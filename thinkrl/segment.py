"""The segment stage's work: rollouts + judgments -> thoughts and per-token advantages (training rows).

    metrics = segment(rollouts, judgments, scheme="thought", alpha=1.0, writer=w,
                      sampling=rollouts_sampling(Path("runs/r")))

Groups are the rollouts of one problem in one round. Each rollout's steps (from the judgments, joined on
rollout_id) become `StepLabel`s; `thinkrl.thoughts.SCHEMES[scheme].advantages` turns each group into token
advantages. A rollout with no judgment rows at all is treated as a failed judgment (outcome advantage
everywhere). So is, for every judge, a wrong rollout with no extractable answer (cut off at max_tokens,
or no `\boxed{}`): it has no wrong answer for a step to match, so the paper's Proposition 2 does not
apply, and without this rule its steps would all be `unmatched`, its advantages all zero, and looping or
over-long outputs never pushed down (counted as `no_answer_rollouts`; docs/PAPER.md).

Judged token spans are checked at this boundary: 0 <= token_start <= token_end <= completion tokens, steps
in order and not overlapping; anything else is an error naming the rollout and step, so the thoughts table
always equals the advantages that training uses. Their char spans are checked the same way against the
completion's characters: each thought row carries its char span and its text, completion[char_start:char_end]
(`thinkrl.thoughts` says how the spans run).

Each advantages row carries the sampler's log-probs (`behaviour_logprobs`; null where they are not at the
sampling temperature: vLLM's at T not in {0, 1}), the rollouts' sampling temperature (the trainer scores at it)
and generation budget `max_tokens` (Dr. GRPO's constant), both from the rollouts manifest. log π_old itself is
recomputed by the trainer at the start of its run, with its own model, dtype and micro-batches
(thinkrl.trainer.recompute_behaviour), so segment needs no model. It also carries what the trainer's per-step
figures need and the advantages alone do not tell: the rollout's `finish_reason` and the number of its tokens in
`incorrect` thoughts (`incorrect_tokens`). Rollouts whose advantages are all zero are
dropped (the paper keeps only non-zero process rewards).

Metrics: share of completion tokens in incorrect thoughts (of correct rollouts), count of error thoughts
whose advantage flipped sign against the outcome advantage (negative inside a correct rollout), dropped
rollouts, unknown-label fallbacks, no-answer rollouts.

Parts: the groups, in order of first appearance, are cut `part_size` at a time; each part's thoughts and
advantages rows are one part file of each table, its counters a part's stats, so a killed run resumes and the
tables (parts concatenated in order) are the same whatever the part size. Sharding (`--shard k/n`,
thinkrl.shards): shard k segments parts i % n == k into the same --out (every shard reads the whole rollouts
and judgments: a group's advantages depend on its group alone); the last merges, the metrics summed over the
parts' stats.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from thinkrl.artifacts import (
    JUDGMENTS,
    MANIFEST,
    ArtifactWriter,
    StageResult,
    finished,
    read_manifest,
    read_table,
)
from thinkrl.errors import ThinkrlError
from thinkrl.judge.protocol import INCORRECT, UNKNOWN
from thinkrl.settings import check_settings, same_as, setting
from thinkrl.shards import Plan, ShardSettings, begin, complete, cuts, part_names
from thinkrl.thoughts import SCHEMES, AnswerStart, RolloutInput, no_answer, scheme_named, step_labels


@dataclass(frozen=True)
class Sampling:
    """What the trainer needs to know of how the rollouts were sampled (from the rollouts manifest)."""
    temperature: float
    max_tokens: int
    engine: str = "hf"

    @property
    def logprobs_at_temperature(self) -> bool:
        """The sampler's log-probs are log_softmax(logits / T): the hf engine's always, vLLM's (taken before
        temperature) only at T = 1 (and greedy T = 0, scored at 1)."""
        return self.engine == "hf" or self.temperature in (0.0, 1.0)


def rollouts_sampling(rollouts: Path) -> Sampling:
    """The sampling temperature, generation budget and engine recorded in a rollouts artifact's manifest."""
    config = read_manifest(rollouts).get("config", {})
    if "temperature" not in config or "max_tokens" not in config:
        raise ThinkrlError(f"{rollouts / MANIFEST}: config has no temperature/max_tokens (not written by "
                           "`thinkrl sample`?)")
    return Sampling(float(config["temperature"]), int(config["max_tokens"]), str(config.get("engine", "hf")))


def checked_spans(rid: str, j: pl.DataFrame, n_tokens: int, n_chars: int) -> list[tuple[int, int, str, int, int]]:
    """(token_start, token_end, label, char_start, char_end) of one rollout's judged steps, validated (see
    module doc)."""
    spans, prev_end, prev_char = [], 0, 0
    for idx, a, b, label, ca, cb in zip(j["step_idx"], j["token_start"], j["token_end"], j["label"],
                                        j["char_start"], j["char_end"], strict=True):
        for what, lo, hi, n, unit, prev in (("token", a, b, n_tokens, "tokens", prev_end),
                                            ("char", ca, cb, n_chars, "characters", prev_char)):
            if not (0 <= lo <= hi <= n) or lo < prev:
                raise ThinkrlError(f"judgments, rollout {rid} step {idx}: {what} span [{lo}, {hi}) is invalid for a "
                                   f"completion of {n} {unit} (expected 0 <= start <= end <= {n}, steps in order, "
                                   f"not overlapping; the previous step ends at {prev})")
        spans.append((a, b, label, ca, cb))
        prev_end, prev_char = b, cb
    return spans


def rollout_inputs(rollouts: pl.DataFrame, judgments: pl.DataFrame) -> dict[str, RolloutInput]:
    steps_by = {}
    for (rid,), df in judgments.sort("rollout_id", "step_idx").group_by(["rollout_id"], maintain_order=True):
        steps_by[rid] = df
    out = {}
    for r in rollouts.iter_rows(named=True):
        rid, n, n_chars = r["rollout_id"], len(r["completion_ids"]), len(r["completion"])
        j = steps_by.get(rid)
        spans = [] if j is None else checked_spans(rid, j, n, n_chars)
        steps, answer = step_labels(spans, n, n_chars)
        if no_answer(r):
            steps, answer = None, AnswerStart(n, n_chars)
        out[rid] = RolloutInput(rid, bool(r["correct"]), n, steps, answer)
    return out


@dataclass(frozen=True)
class SegmentConfig:
    """Every setting of the segment stage (`thinkrl segment`)."""

    scheme: str = setting("thought", f"reward scheme: {', '.join(SCHEMES)} (outcome = GRPO, thought = TP-GRPO)")
    alpha: float = setting(1.0, "penalty scale of incorrect thoughts: alpha*acc (alpha for thought-static)",
                           ge=0)
    part_size: int = setting(1024, "groups (problem, round) per part file: resume and shard granularity (the "
                                   "tables do not depend on it)", ge=1)
    shard: tuple[int, int] = same_as(ShardSettings, "shard")

    def __post_init__(self) -> None:
        check_settings(self)
        scheme_named(self.scheme)


def segment_key(rollouts: Path, judgments: Path | None, cfg: SegmentConfig) -> tuple[dict, dict]:
    """(config, inputs) of the segment stage's skip key, the same for `thinkrl segment` and `thinkrl run`.
    The outcome scheme ignores step labels, so judgments are no input of it (a judge change does not
    retrain a GRPO run)."""
    use_judgments = judgments is not None and scheme_named(cfg.scheme).uses_judgments
    inputs = {"rollouts": rollouts, **({"judgments": judgments} if use_judgments else {})}
    return {"scheme": cfg.scheme, "alpha": cfg.alpha}, inputs


def run_segment_stage(rollouts: Path, judgments: Path | None, out: Path, cfg: SegmentConfig = SegmentConfig(),
                      force: bool = False, start: Callable[[], None] | None = None) -> StageResult:
    """The segment stage, for `thinkrl segment` and `thinkrl run` alike: key -> skip -> work -> finish.
    `start()` is called when work begins (not when the artifact is up to date)."""
    config, inputs = segment_key(rollouts, judgments, cfg)
    scheme, alpha = cfg.scheme, cfg.alpha
    writer = ArtifactWriter(out, "segment", config, inputs=inputs, layout={"part_size": cfg.part_size})
    if writer.up_to_date() and not force:
        return finished(writer)
    if start:
        start()
    ro = read_table(rollouts, "rollouts")
    jd = read_table(judgments, "judgments", allow_empty=True) if "judgments" in inputs else None
    return segment_shard(ro, jd, scheme, alpha, writer, rollouts_sampling(rollouts), cfg.part_size, cfg.shard)


COUNTERS = ("kept_rollouts", "dropped_rollouts", "unknown_fallbacks", "no_answer_rollouts", "flipped_error_thoughts",
            "error_thoughts", "incorrect_thought_tokens", "tokens")  # a part's stats, summed by finish_segment


def segment(rollouts: pl.DataFrame, judgments: pl.DataFrame | None, scheme: str, alpha: float,
            writer: ArtifactWriter, sampling: Sampling, part_size: int = SegmentConfig.part_size) -> dict:
    """Thoughts and advantages of every group (parts resume), the artifact finished (one process); its metrics."""
    return segment_shard(rollouts, judgments, scheme, alpha, writer, sampling, part_size).metrics


def segment_shard(rollouts: pl.DataFrame, judgments: pl.DataFrame | None, scheme: str, alpha: float,
                  writer: ArtifactWriter, sampling: Sampling, part_size: int = SegmentConfig.part_size,
                  shard: tuple[int, int] = (0, 1)) -> StageResult:
    """Segment this shard's parts of groups (all of them for 0/1) not yet written; the last shard finishes."""
    labels_used = scheme_named(scheme).uses_judgments
    if judgments is None:
        if labels_used:
            raise ThinkrlError(f"scheme '{scheme}' needs --judgments (only 'outcome' works without a judge)")
        judgments = pl.DataFrame(schema=JUDGMENTS.polars_schema)
    known = set(rollouts["rollout_id"])
    stray = judgments.filter(~pl.col("rollout_id").is_in(list(known)))
    if stray.height:
        raise ThinkrlError(f"judgments hold {stray['rollout_id'].n_unique()} rollout ids that are not in the "
                           f"rollouts (e.g. {stray['rollout_id'][0]!r}): were they judged from another rollouts artifact?")
    inputs = rollout_inputs(rollouts, judgments)
    rows = {r["rollout_id"]: r for r in rollouts.iter_rows(named=True)}
    groups = [g["rollout_id"].to_list() for _, g in rollouts.group_by(["problem_id", "round"], maintain_order=True)]
    plan = Plan(tuple(part_names(len(groups), part_size)), shard)
    begin(writer, plan)
    mine = set(plan.mine)
    for part, (start, size) in zip(plan.parts, cuts(len(groups), part_size), strict=True):
        if part not in mine or (writer.part_done("advantages", part) and writer.part_done("thoughts", part)):
            continue
        thoughts, advs, m = segment_groups(groups[start:start + size], inputs, rows, scheme, alpha, sampling)
        writer.write_part("advantages", part, advs)
        writer.write_part("thoughts", part, thoughts, stats=m)  # last: a part is done when its thoughts are there
    run = {"rollouts": rollouts.height, "unknown_steps": int((judgments["label"] == UNKNOWN).sum()),
           "scheme": scheme, "alpha": alpha, "temperature": sampling.temperature, "max_tokens": sampling.max_tokens,
           "sampler_logprobs_kept": sampling.logprobs_at_temperature}
    return complete(writer, plan, ["thoughts", "advantages"], run, finish_segment)


def segment_groups(groups: list[list[str]], inputs: dict[str, RolloutInput], rows: dict[str, dict], scheme: str,
                   alpha: float, sampling: Sampling) -> tuple[list[dict], list[dict], dict]:
    """Thoughts rows, advantages rows and the COUNTERS of some groups (each a list of rollout ids)."""
    labels_used = scheme_named(scheme).uses_judgments
    thoughts, advs = [], []
    m = dict.fromkeys(COUNTERS, 0)
    for rids in groups:
        group = [inputs[rid] for rid in rids]
        for ra, ri in zip(scheme_named(scheme).advantages(group, alpha), group, strict=True):
            missing = no_answer(rows[ra.rollout_id])
            m["no_answer_rollouts"] += missing
            m["unknown_fallbacks"] += ra.unknown_fallback and labels_used and not missing
            m["tokens"] += ri.n_tokens
            incorrect = 0
            completion = rows[ra.rollout_id]["completion"]
            for t in ra.thoughts:
                thoughts.append({"rollout_id": ra.rollout_id, "thought_idx": t.idx, "token_start": t.token_start,
                                 "token_end": t.token_end, "char_start": t.char_start, "char_end": t.char_end,
                                 "text": completion[t.char_start:t.char_end], "label": t.label, "reward": t.reward})
                if t.label == INCORRECT:
                    m["error_thoughts"] += 1
                    incorrect += t.token_end - t.token_start
                    m["flipped_error_thoughts"] += (t.reward < 0) != (ra.outcome_advantage < 0)
            m["incorrect_thought_tokens"] += incorrect
            if not np.any(ra.advantages):
                m["dropped_rollouts"] += 1
                continue
            r = rows[ra.rollout_id]
            sampler_lp = r["logprobs"] if sampling.logprobs_at_temperature else None
            advs.append({"rollout_id": ra.rollout_id, "problem_id": r["problem_id"], "prompt_ids": r["prompt_ids"],
                         "completion_ids": r["completion_ids"], "advantages": ra.advantages.tolist(),
                         "behaviour_logprobs": sampler_lp,
                         "outcome_advantage": ra.outcome_advantage, "correct": bool(r["correct"]),
                         "round": r["round"], "temperature": sampling.temperature,
                         "max_tokens": sampling.max_tokens, "finish_reason": r["finish_reason"],
                         "incorrect_tokens": incorrect})
            m["kept_rollouts"] += 1
    return thoughts, advs, {k: int(v) for k, v in m.items()}


def finish_segment(writer: ArtifactWriter, runs: list[dict]) -> dict:
    """The thoughts artifact from its parts; the counters summed over the parts' stats, the rest from the runs
    (every shard's are the same)."""
    m = {k: sum(s.get(k, 0) for s in writer.part_stats("thoughts")) for k in COUNTERS}
    r = runs[0]
    metrics = {
        "rollouts": r["rollouts"], "kept_rollouts": m["kept_rollouts"], "dropped_rollouts": m["dropped_rollouts"],
        "unknown_fallbacks": m["unknown_fallbacks"], "unknown_steps": r["unknown_steps"],
        "no_answer_rollouts": m["no_answer_rollouts"],
        "error_thoughts": m["error_thoughts"], "flipped_error_thoughts": m["flipped_error_thoughts"],
        "incorrect_thought_token_share": m["incorrect_thought_tokens"] / max(m["tokens"], 1),
        "scheme": r["scheme"], "alpha": r["alpha"], "temperature": r["temperature"], "max_tokens": r["max_tokens"],
        "sampler_logprobs_kept": r["sampler_logprobs_kept"],
    }
    if len(runs) > 1:
        metrics["shards"] = len(runs)
    writer.finish(metrics, tables=["thoughts", "advantages"], allow_empty=True)
    return metrics
