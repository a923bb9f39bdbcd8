"""The judge stage's work: rollouts -> steps -> one judge call per rollout -> judgments rows, in parts.

    metrics = judge_rollouts(rollouts, judge, tokenizer, writer, splitter="blank")

Steps come from `thinkrl.steps.split_steps` (exact char spans), token spans from the policy tokenizer's
incremental offsets over `completion_ids`. Parts of `part_size` rollouts make a killed run resume where it
stopped (a caching backend such as `openai:` also never asks twice).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import polars as pl

from thinkrl.artifacts import ArtifactWriter
from thinkrl.judge.protocol import UNKNOWN, Judge, JudgeRequest, Verdict
from thinkrl.steps import split_steps, token_char_offsets, token_spans


def requests_for(rollouts: pl.DataFrame, splitter: str) -> list[JudgeRequest]:
    reqs = []
    for r in rollouts.iter_rows(named=True):
        steps, _ = split_steps(r["completion"], splitter)
        reqs.append(JudgeRequest(r["rollout_id"], r["question"], r["completion"], tuple(steps),
                                 bool(r["correct"]), r["pred_answer"], r["answer"]))
    return reqs


def verdict_rows(req: JudgeRequest, v: Verdict, completion_ids: list[int], tokenizer, judge: str) -> list[dict]:
    offsets = token_char_offsets(tokenizer, completion_ids)
    spans = token_spans(req.steps, offsets)
    return [{"rollout_id": req.rollout_id, "step_idx": s.idx, "char_start": s.char_start, "char_end": s.char_end,
             "token_start": a, "token_end": b, "text": s.text, "label": lab, "judge": judge, "rationale": why}
            for s, (a, b), lab, why in zip(req.steps, spans, v.labels, v.rationales, strict=True)]


def judge_rollouts(rollouts: pl.DataFrame, judge: Judge, tokenizer,
                   writer: ArtifactWriter, splitter: str = "blank", part_size: int = 64,
                   progress: Callable[[int], None] | None = None) -> dict:
    t0 = time.perf_counter()
    stats = Counter()
    reasons: Counter = Counter()
    for start in range(0, rollouts.height, part_size):
        part = f"{start // part_size:06d}"
        chunk = rollouts.slice(start, part_size)
        if writer.part_done("judgments", part):
            if progress:
                progress(chunk.height)
            continue
        reqs = requests_for(chunk, splitter)
        verdicts = judge.judge_many(reqs, progress=progress)
        rows = []
        for req, v, ids in zip(reqs, verdicts, chunk["completion_ids"].to_list(), strict=True):
            if len(v.labels) != len(req.steps):  # a judge bug must not shift labels onto the wrong steps
                v = Verdict.failed(req, f"judge returned {len(v.labels)} labels for {len(req.steps)} steps")
            rows += verdict_rows(req, v, ids, tokenizer, judge.name)
            stats["judge_tokens"] += v.judge_tokens
            stats["failed"] += not v.ok
            if v.reason:
                reasons[v.reason] += 1
        writer.write_part("judgments", part, rows)
    df = writer.read_parts("judgments")
    n_steps = max(df.height, 1)
    mix = {f"label_{k}": v / n_steps for k, v in Counter(df["label"].to_list()).items()}
    metrics = {
        "rollouts": rollouts.height, "steps": df.height, **mix,
        "unknown_rate": float((df["label"] == UNKNOWN).sum()) / n_steps,
        "judge_tokens_per_rollout": stats["judge_tokens"] / max(rollouts.height, 1),
        "failed_rollouts_this_run": stats["failed"], "reasons_this_run": dict(reasons.most_common(10)),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    writer.finish(metrics, allow_empty=True)
    return metrics
