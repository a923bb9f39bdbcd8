"""The segment stage's work: rollouts + judgments -> thoughts and per-token advantages (training rows).

    metrics = segment(rollouts, judgments, scheme="thought", alpha=1.0, writer=w, logprob_fn=fn)

Groups are the rollouts of one problem in one round. Each rollout's steps (from the judgments, joined on
rollout_id) become `StepLabel`s; `thinkrl.thoughts.SCHEMES[scheme]` turns each group into token
advantages. A rollout with no judgment rows at all is treated as a failed judgment (outcome advantage
everywhere). Behaviour log-probs are recomputed ONCE here by `logprob_fn` (the trainer's own forward
pass over the policy that sampled the round), so the clipped ratio never mixes engines. Rollouts whose
advantages are all zero are dropped (the paper keeps only non-zero process rewards).

Metrics: share of completion tokens in incorrect thoughts (of correct rollouts), count of error thoughts
whose advantage flipped sign against the outcome advantage (negative inside a correct rollout), dropped
rollouts, unknown-label fallbacks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from thinkrl.artifacts import JUDGMENTS, ArtifactWriter
from thinkrl.errors import ThinkrlError
from thinkrl.judge.protocol import INCORRECT, UNKNOWN
from thinkrl.thoughts import SCHEMES, RolloutInput, step_labels

LogprobFn = Callable[[list[list[int]], list[list[int]]], list[np.ndarray]]


def rollout_inputs(rollouts: pl.DataFrame, judgments: pl.DataFrame) -> dict[str, RolloutInput]:
    steps_by = {}
    for (rid,), df in judgments.sort("rollout_id", "step_idx").group_by(["rollout_id"], maintain_order=True):
        steps_by[rid] = df
    out = {}
    for r in rollouts.iter_rows(named=True):
        n = len(r["completion_ids"])
        j = steps_by.get(r["rollout_id"])
        spans = [] if j is None else zip(j["token_start"], j["token_end"], j["label"], strict=True)
        steps, answer_start = step_labels(spans, n)
        out[r["rollout_id"]] = RolloutInput(r["rollout_id"], bool(r["correct"]), n, steps, answer_start)
    return out


def segment_key(rollouts: Path, judgments: Path | None, scheme: str, alpha: float, policy: Path,
                recompute: bool) -> tuple[dict, dict]:
    """(config, inputs) of the segment stage's skip key, the same for `thinkrl segment` and `thinkrl run`.
    The outcome scheme ignores step labels, so judgments are no input of it (a judge change does not
    retrain a GRPO run); the policy is one only when it recomputes the behaviour log-probs."""
    use_judgments = judgments is not None and scheme != "outcome"
    inputs = {"rollouts": rollouts, **({"judgments": judgments} if use_judgments else {}),
              **({"policy": policy} if recompute else {})}
    config = {"scheme": scheme, "alpha": alpha, "recompute": recompute, "policy": str(policy) if recompute else None}
    return config, inputs


def behaviour_logprob_fn(policy: Path, batch_tokens: int = 16384) -> LogprobFn:
    """Log-probs of completions under `policy` as the trainer computes them (the behaviour log-probs)."""
    from thinkrl.models import load_policy
    from thinkrl.trainer import token_logprobs

    model, _ = load_policy(policy)
    return lambda prompts, completions: token_logprobs(model, prompts, completions, batch_tokens=batch_tokens)


def segment(rollouts: pl.DataFrame, judgments: pl.DataFrame | None, scheme: str, alpha: float,
            writer: ArtifactWriter, logprob_fn: LogprobFn | None) -> dict:
    if scheme not in SCHEMES:
        raise ThinkrlError(f"unknown reward scheme '{scheme}' (known: {', '.join(SCHEMES)})")
    if judgments is None:
        if scheme != "outcome":
            raise ThinkrlError(f"scheme '{scheme}' needs --judgments (only 'outcome' works without a judge)")
        judgments = pl.DataFrame(schema=JUDGMENTS.polars_schema)
    known = set(rollouts["rollout_id"])
    stray = judgments.filter(~pl.col("rollout_id").is_in(list(known)))
    if stray.height:
        raise ThinkrlError(f"judgments hold {stray['rollout_id'].n_unique()} rollout ids that are not in the "
                           f"rollouts (e.g. {stray['rollout_id'][0]!r}): were they judged from another rollouts artifact?")
    inputs = rollout_inputs(rollouts, judgments)
    rows = {r["rollout_id"]: r for r in rollouts.iter_rows(named=True)}
    thoughts, advs = [], []
    m = {"dropped_rollouts": 0, "unknown_fallbacks": 0, "flipped_error_thoughts": 0, "error_thoughts": 0,
         "incorrect_thought_tokens": 0, "tokens": 0, "unknown_steps": int((judgments["label"] == UNKNOWN).sum())}
    for (_pid, _round), g in rollouts.group_by(["problem_id", "round"], maintain_order=True):
        group = [inputs[rid] for rid in g["rollout_id"]]
        for ra, ri in zip(SCHEMES[scheme](group, alpha), group, strict=True):
            m["unknown_fallbacks"] += ra.unknown_fallback and scheme != "outcome"
            m["tokens"] += ri.n_tokens
            for t in ra.thoughts:
                thoughts.append({"rollout_id": ra.rollout_id, "thought_idx": t.idx, "token_start": t.token_start,
                                 "token_end": t.token_end, "label": t.label, "reward": t.reward})
                if t.label == INCORRECT:
                    m["error_thoughts"] += 1
                    m["incorrect_thought_tokens"] += t.token_end - t.token_start
                    m["flipped_error_thoughts"] += (t.reward < 0) != (ra.outcome_advantage < 0)
            if not np.any(ra.advantages):
                m["dropped_rollouts"] += 1
                continue
            r = rows[ra.rollout_id]
            advs.append({"rollout_id": ra.rollout_id, "problem_id": r["problem_id"], "prompt_ids": r["prompt_ids"],
                         "completion_ids": r["completion_ids"], "advantages": ra.advantages.tolist(),
                         "outcome_advantage": ra.outcome_advantage, "correct": bool(r["correct"])})
    if advs and logprob_fn is not None:
        lps = logprob_fn([a["prompt_ids"] for a in advs], [a["completion_ids"] for a in advs])
        for a, lp in zip(advs, lps, strict=True):
            a["behaviour_logprobs"] = np.asarray(lp, dtype=np.float32).tolist()
    else:  # no model given: the sampler's own log-probs
        for a in advs:
            a["behaviour_logprobs"] = rows[a["rollout_id"]]["logprobs"]
    writer.set_table("thoughts", thoughts)
    writer.set_table("advantages", advs)
    metrics = {
        "rollouts": rollouts.height, "kept_rollouts": len(advs), "dropped_rollouts": m["dropped_rollouts"],
        "unknown_fallbacks": m["unknown_fallbacks"], "unknown_steps": m["unknown_steps"],
        "error_thoughts": m["error_thoughts"], "flipped_error_thoughts": m["flipped_error_thoughts"],
        "incorrect_thought_token_share": m["incorrect_thought_tokens"] / max(m["tokens"], 1),
        "scheme": scheme, "alpha": alpha, "behaviour_logprobs": "recomputed" if logprob_fn else "sampler",
    }
    writer.finish(metrics, tables=["thoughts", "advantages"], allow_empty=True)
    return metrics
