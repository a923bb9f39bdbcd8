"""The noisy judge: the oracle's exact ArithChain step labels with a set share of them flipped.

    thinkrl judge --rollouts R --judge noisy:0.1 --out J     # each flippable label flipped with probability 0.1
    thinkrl judge --rollouts R --judge noisy:0.3:7 --out J   # p = 0.3, judge seed 7 (default 0)
    verdicts = make_judge("noisy:0.3").judge_many(requests)

Judge quality as an experiment variable (issue 17): the truth of `oracle` (thinkrl/judge/oracle.py), degraded by a
known amount. Each step label of the oracle's verdict is replaced, with probability p, by the other label of its
protocol: `correct` <-> `incorrect` on a correct rollout, `matched` <-> `unmatched` on a wrong one; a flipped
step's rationale says so and names the oracle's label. Not flippable, so p = 1 inverts every *flippable* label:
- `unknown` labels (the oracle's answer that it cannot judge the rollout: not an ArithChain problem, outcome
  mismatch): still no verdict, the outcome advantage stands;
- request steps the oracle counts as its answer part (`ANSWER_PART`: `correct` / `unmatched`): the oracle's rule
  that the answer part is never punished holds under noise too.

The coin of step i of rollout R is u = sha256("thinkrl.noisy/{seed}/{R}/{i}") read as a uniform in [0, 1); the
label flips when u < p. No random generator is consumed: a label is a function of (judge seed, rollout_id, step
index, p) alone, so shards, resumes, part sizes and a rollout's batch (its order, its company) give identical
labels; two runs judging the same rollout (the byte-identical round-0 rollouts of the schemes of one seed) get the
same flips; and the flips of a smaller p are a subset of a larger p's (u < 0.1 implies u < 0.3), so a sweep over
p degrades one judgment step by step. rollout_id is `{problem_id}/r{round}/s{j}`: ArithChain training problems'
ids carry their problem seed (from the experiment seed and round), so the seeds of an experiment flip
independently; problems cycled from a file keep their ids across seeds, which then share one flip pattern by step
position unless the judge seed differs.

The whole spec is in the judge stage's key (`noisy:0.1` and `noisy:0.3` are two judgments; `noisy:0.1` and
`noisy:0.10` are the same labels under two keys), with `version`, which follows the oracle's.

Departure from the paper: the paper has no such judge; it measures TP-GRPO's robustness to the evaluator by
swapping real judge models. Flips independent per step, at one rate for both labels, are a stand-in: real judges
err in structured ways (a missed error source, a reflection's neighbours over-marked, more misses than false
alarms).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace

from thinkrl.errors import ThinkrlError
from thinkrl.judge.oracle import ANSWER_PART, OracleJudge
from thinkrl.judge.protocol import LABELS_FOR, JudgeRequest, Verdict

USAGE = "expected noisy:P or noisy:P:SEED (P the share of step labels flipped, in [0, 1]; SEED an integer >= 0)"


def parse_noisy(arg: str | None) -> tuple[float, int]:
    """(p, seed) of the argument of a `noisy:P[:SEED]` spec; a one-line ThinkrlError when it is no such thing."""
    p_text, _, seed_text = (arg or "").partition(":")
    try:
        p, seed = float(p_text), int(seed_text or "0")
    except ValueError:
        p, seed = math.nan, 0
    if not 0 <= p <= 1 or seed < 0:  # nan fails too
        raise ThinkrlError(f"judge 'noisy:{arg or ''}': {USAGE}, e.g. noisy:0.1")
    return p, seed


def coin(seed: int, rollout_id: str, step_idx: int) -> float:
    """The uniform in [0, 1) of one step of one rollout: a hash, no generator state."""
    digest = hashlib.sha256(f"thinkrl.noisy/{seed}/{rollout_id}/{step_idx}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


class NoisyJudge(OracleJudge):
    """Judge protocol: the oracle's labels, each flippable one flipped with probability p (module docstring);
    the oracle's judge_many, over this judge_one."""

    version = 1000 * OracleJudge.version + 1  # this module's flips (the last digits) on the oracle's labels

    def __init__(self, p: float, seed: int = 0, name: str | None = None):
        self.p, self.seed = p, seed
        self.name = name or f"noisy:{p}:{seed}"

    def judge_one(self, req: JudgeRequest) -> Verdict:
        v = OracleJudge.judge_one(req)
        a, b = LABELS_FOR[bool(req.correct)]
        other = {a: b, b: a}
        labels, why = list(v.labels), list(v.rationales)
        for i, (lab, reason) in enumerate(zip(v.labels, v.rationales, strict=True)):
            if lab in other and reason != ANSWER_PART and coin(self.seed, req.rollout_id, i) < self.p:
                labels[i] = other[lab]
                why[i] = f"{reason}; flipped by {self.name} (the oracle says {lab})"
        return replace(v, labels=tuple(labels), rationales=tuple(why))
