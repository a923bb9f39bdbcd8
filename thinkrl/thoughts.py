"""Thoughts and token advantages: the reward schemes of TP-GRPO and its ablations (DESIGN §2).

    adv = group_advantages(group, scheme="thought", alpha=1.0)   # one RolloutAdvantage per rollout

A group is the G rollouts of one problem in one round. Outcome r_i in {0, 1}, acc = mean(r),
r̂_i = (r_i - mean(r)) / (std(r) + 1e-4) with the POPULATION std (numpy's default, ddof=0).

Thoughts are maximal runs of consecutive steps with the same label. A thought's tokens run from its
first step's first token to the next thought's first token (so the separator tokens after a thought
belong to it); the last thought ends where the answer part begins. Tokens outside every thought (the
answer part, EOS, text before the first step) get r̂_i.

Schemes, each a function of the whole group (a dict, chosen by name):
- `outcome` (plain GRPO): r̂_i on every token.
- `thought` (the paper, Propositions 1 and 2): correct o_i: `correct` thoughts r̂_i, `incorrect` thoughts
  r̂_i − α·acc; incorrect o_i: `matched` r̂_i, `unmatched` 0; `unknown` thoughts r̂_i; a failed
  judgment -> r̂_i everywhere (the judge only refines the outcome advantage, never breaks it).
- `thought-static`: as `thought` with α·acc replaced by α (no ability adaptation).
- `step` (no merging; the DeepSeekMath process-supervision form, our reading of the paper's ablation):
  every step gets a raw reward — correct o_i: `correct` 1, `incorrect` 1 − α·acc; incorrect o_i:
  `matched` 0; `unknown` the outcome r_i; `unmatched` the group mean (so it normalises to 0, "not
  punished") — and the answer part a last raw reward r_i. Raw rewards are normalised over all rewards of
  the group (population std + 1e-4); a token's advantage is the sum of the normalised rewards of every
  step that ends at or after it (return-to-go). A failed judgment gets r̂_i on every token, as in the
  other schemes; its outcome r_i (its answer part's reward) stays in the normalisation, so the other
  rollouts' rewards are normalised exactly as if it had been judged with no steps. The paper gives no
  exact values for this ablation; the choice is listed in docs/PAPER.md.

A failed judgment is `steps is None`: the judge failed or labelled every step `unknown`, the rollout has
no judgment rows, or (decided in thinkrl.segment for every judge) it is a wrong rollout with no
extractable answer, to which Proposition 2 cannot apply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from thinkrl.errors import ThinkrlError
from thinkrl.judge.protocol import CORRECT, INCORRECT, MATCHED, UNKNOWN, UNMATCHED

EPS = 1e-4


@dataclass(frozen=True)
class StepLabel:
    token_start: int
    token_end: int
    label: str


def step_labels(spans: Iterable[tuple[int, int, str]], n_tokens: int) -> tuple[tuple[StepLabel, ...] | None, int]:
    """(steps, answer_start) from judged (token_start, token_end, label) spans, clamped to the completion's
    n_tokens. steps is None when there are none or every one is `unknown` (the judgment failed as a whole:
    the outcome advantage applies); answer_start is where the answer part begins (n_tokens then)."""
    steps = tuple(StepLabel(min(a, n_tokens), min(b, n_tokens), lab) for a, b, lab in spans)
    if not steps or all(st.label == UNKNOWN for st in steps):
        return None, n_tokens
    return steps, max(st.token_end for st in steps)


@dataclass(frozen=True)
class RolloutInput:
    rollout_id: str
    correct: bool
    n_tokens: int                        # completion tokens
    steps: tuple[StepLabel, ...] | None  # None: the judgment failed (or is missing)
    answer_token_start: int              # first token of the answer part (n_tokens if none)


@dataclass(frozen=True)
class Thought:
    idx: int
    token_start: int
    token_end: int
    label: str
    reward: float


@dataclass(frozen=True)
class RolloutAdvantage:
    rollout_id: str
    outcome_advantage: float
    advantages: np.ndarray               # (T,) float32, aligned with completion tokens
    thoughts: tuple[Thought, ...]
    unknown_fallback: bool               # judgment failed: outcome advantage used everywhere


def no_answer(rollout: dict) -> bool:
    """A wrong rollout with no extractable answer (a rollouts row): Proposition 2 cannot apply to it, so it
    is treated as a failed judgment (r̂ on every token) whatever the judge said (see the module doc)."""
    return not rollout["correct"] and not rollout["pred_answer"]


def outcome_advantages(correct: Sequence[bool]) -> np.ndarray:
    """r̂ = (r − mean r) / (population std r + 1e-4), shape (G,)."""
    r = np.asarray(correct, dtype=np.float64)
    return (r - r.mean()) / (r.std() + EPS)


def merge_thoughts(steps: Sequence[StepLabel], answer_token_start: int) -> list[tuple[int, int, str, list[int]]]:
    """Maximal runs of same-label steps -> (token_start, token_end, label, step indices); see module doc."""
    runs: list[list] = []
    for i, s in enumerate(steps):
        if runs and runs[-1][2] == s.label:
            runs[-1][3].append(i)
        else:
            runs.append([s.token_start, None, s.label, [i]])
    for j, run in enumerate(runs):
        if j + 1 < len(runs):
            run[1] = runs[j + 1][0]  # up to the next thought: separators belong to this one
        else:
            run[1] = max(steps[run[3][-1]].token_end, answer_token_start)  # up to the answer part
    return [tuple(r) for r in runs]


def _thought_scheme(error_penalty: Callable[[float], float]):
    """The paper's Propositions 1 and 2, with the penalty of an incorrect thought as a function of acc."""

    def scheme(group: Sequence[RolloutInput], alpha: float) -> list[RolloutAdvantage]:
        r_hat = outcome_advantages([g.correct for g in group])
        acc = float(np.mean([g.correct for g in group]))
        out = []
        for g, rh in zip(group, r_hat, strict=True):
            adv = np.full(g.n_tokens, rh, dtype=np.float32)
            if g.steps is None:
                out.append(RolloutAdvantage(g.rollout_id, float(rh), adv, (), True))
                continue
            value = {CORRECT: rh, INCORRECT: rh - alpha * error_penalty(acc), MATCHED: rh, UNMATCHED: 0.0,
                     UNKNOWN: rh}
            thoughts = []
            for idx, (a, b, label, _) in enumerate(merge_thoughts(g.steps, g.answer_token_start)):
                v = float(value.get(label, rh))
                adv[a:b] = v
                thoughts.append(Thought(idx, a, b, label, v))
            out.append(RolloutAdvantage(g.rollout_id, float(rh), adv, tuple(thoughts), False))
        return out

    return scheme


def scheme_outcome(group: Sequence[RolloutInput], alpha: float) -> list[RolloutAdvantage]:
    r_hat = outcome_advantages([g.correct for g in group])
    return [RolloutAdvantage(g.rollout_id, float(rh), np.full(g.n_tokens, rh, dtype=np.float32), (), False)
            for g, rh in zip(group, r_hat, strict=True)]


def _step_raw_rewards(g: RolloutInput, acc: float, alpha: float) -> list[tuple[int, float, str, int]]:
    """(end token, raw reward, label, start token) per step and the answer part; NaN for `unmatched`."""
    r = float(g.correct)
    value = {CORRECT: 1.0, INCORRECT: 1.0 - alpha * acc, MATCHED: 0.0, UNMATCHED: np.nan}
    items = [(s.token_end, value.get(s.label, r), s.label, s.token_start) for s in g.steps or ()]
    return items + [(g.n_tokens, r, "answer", g.answer_token_start)]


def scheme_step(group: Sequence[RolloutInput], alpha: float) -> list[RolloutAdvantage]:
    r_hat = outcome_advantages([g.correct for g in group])
    acc = float(np.mean([g.correct for g in group]))
    raw = [_step_raw_rewards(g, acc, alpha) for g in group]  # a failed judgment: just its answer reward r_i
    known = np.array([v for items in raw for _, v, _, _ in items if not np.isnan(v)])
    mean, std = known.mean(), known.std()
    out = []
    for g, rh, items in zip(group, r_hat, raw, strict=True):
        if g.steps is None:  # a failed judgment: the outcome advantage on every token
            out.append(RolloutAdvantage(g.rollout_id, float(rh), np.full(g.n_tokens, rh, dtype=np.float32), (), True))
            continue
        norm = [((mean if np.isnan(v) else v) - mean) / (std + EPS) for _, v, _, _ in items]
        adv = np.zeros(g.n_tokens, dtype=np.float64)
        for (end, _, _, _), z in zip(items, norm, strict=True):
            adv[: max(0, min(end, g.n_tokens))] += z  # return-to-go: every token at or before the step's end
        thoughts = tuple(Thought(i, a, e, label, float(z))
                         for i, ((e, _, label, a), z) in enumerate(zip(items[:-1], norm[:-1], strict=True)))
        out.append(RolloutAdvantage(g.rollout_id, float(rh), adv.astype(np.float32), thoughts, False))
    return out


@dataclass(frozen=True)
class Scheme:
    """A reward scheme of the registry: its advantage function and the facts other code asks of it."""
    advantages: Callable[[Sequence[RolloutInput], float], list[RolloutAdvantage]]
    uses_judgments: bool  # False: step labels are ignored (no judgments input, no thoughts, no judge fallbacks)


SCHEMES: dict[str, Scheme] = {
    "outcome": Scheme(scheme_outcome, uses_judgments=False),
    "thought": Scheme(_thought_scheme(lambda acc: acc), uses_judgments=True),
    "thought-static": Scheme(_thought_scheme(lambda acc: 1.0), uses_judgments=True),
    "step": Scheme(scheme_step, uses_judgments=True),
}


def scheme_named(name: str) -> Scheme:
    """The registry's scheme `name`; a one-line ThinkrlError naming the known ones otherwise."""
    if name not in SCHEMES:
        raise ThinkrlError(f"unknown reward scheme '{name}' (known: {', '.join(SCHEMES)})")
    return SCHEMES[name]


def group_advantages(group: Sequence[RolloutInput], scheme: str, alpha: float = 1.0) -> list[RolloutAdvantage]:
    """Advantages of one group (the G rollouts of a problem in a round) under `scheme`."""
    return scheme_named(scheme).advantages(group, alpha)
