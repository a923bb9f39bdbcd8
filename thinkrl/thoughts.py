"""Thoughts and token advantages: the reward schemes of TP-GRPO and its ablations (DESIGN §2).

    adv = group_advantages(group, scheme="thought", alpha=1.0)   # one RolloutAdvantage per rollout

A group is the G rollouts of one problem in one round. Outcome r_i in {0, 1}, acc = mean(r),
r̂_i = (r_i - mean(r)) / (std(r) + 1e-4) with the POPULATION std (numpy's default, ddof=0).

Thoughts are maximal runs of consecutive steps with the same label. A thought's tokens run from its
first step's first token to the next thought's first token (so the separator tokens after a thought
belong to it); the last thought ends where the answer part begins. Tokens outside every thought (the
answer part, EOS, text before the first step) get r̂_i. A thought's characters run the same way, from its
first step's first character to the next thought's (the last: to where the answer part begins), so its
tokens are exactly those whose first character lies in its char span (the rule of `steps.token_span`).

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
    char_start: int                      # the step's characters in the completion (judgments.char_start)
    char_end: int


@dataclass(frozen=True)
class AnswerStart:
    """Where the answer part begins: its first token and first character (the completion's ends if none)."""
    token: int
    char: int


def step_labels(spans: Iterable[tuple[int, int, str, int, int]], n_tokens: int,
                n_chars: int) -> tuple[tuple[StepLabel, ...] | None, AnswerStart]:
    """(steps, answer start) from judged (token_start, token_end, label, char_start, char_end) spans, clamped to
    the completion's n_tokens and n_chars. steps is None when there are none or every one is `unknown` (the
    judgment failed as a whole: the outcome advantage applies; the answer start is then the completion's end);
    else the answer part begins where the last step ends."""
    steps = tuple(StepLabel(min(a, n_tokens), min(b, n_tokens), lab, min(ca, n_chars), min(cb, n_chars))
                  for a, b, lab, ca, cb in spans)
    if not steps or all(st.label == UNKNOWN for st in steps):
        return None, AnswerStart(n_tokens, n_chars)
    return steps, AnswerStart(max(st.token_end for st in steps), max(st.char_end for st in steps))


@dataclass(frozen=True)
class RolloutInput:
    rollout_id: str
    correct: bool
    n_tokens: int                        # completion tokens
    steps: tuple[StepLabel, ...] | None  # None: the judgment failed (or is missing)
    answer: AnswerStart                  # where the answer part begins (the completion's end if none)


@dataclass(frozen=True)
class Thought:
    idx: int
    token_start: int
    token_end: int
    label: str
    reward: float
    char_start: int                      # its characters in the completion (see the module doc)
    char_end: int


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


@dataclass(frozen=True)
class ThoughtSpan:
    """One maximal run of same-label steps: its token and char spans (see the module doc) and its steps."""
    token_start: int
    token_end: int
    char_start: int
    char_end: int
    label: str
    steps: tuple[int, ...]               # indices of its steps


def merge_thoughts(steps: Sequence[StepLabel], answer: AnswerStart) -> list[ThoughtSpan]:
    """Maximal runs of same-label steps; each runs up to the next one (separators belong to it), the last
    up to the answer part."""
    runs: list[list[int]] = []
    for i, s in enumerate(steps):
        if runs and steps[runs[-1][0]].label == s.label:
            runs[-1].append(i)
        else:
            runs.append([i])
    out = []
    for j, run in enumerate(runs):
        first, last = steps[run[0]], steps[run[-1]]
        if j + 1 < len(runs):  # up to the next thought: separators belong to this one
            nxt = steps[runs[j + 1][0]]
            end_token, end_char = nxt.token_start, nxt.char_start
        else:                  # up to the answer part
            end_token, end_char = max(last.token_end, answer.token), max(last.char_end, answer.char)
        out.append(ThoughtSpan(first.token_start, end_token, first.char_start, end_char, first.label, tuple(run)))
    return out


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
            for idx, t in enumerate(merge_thoughts(g.steps, g.answer)):
                v = float(value.get(t.label, rh))
                adv[t.token_start:t.token_end] = v
                thoughts.append(Thought(idx, t.token_start, t.token_end, t.label, v, t.char_start, t.char_end))
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
    return items + [(g.n_tokens, r, "answer", g.answer.token)]


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
        thoughts = tuple(Thought(i, a, e, label, float(z), s.char_start, s.char_end)  # one per step: its spans
                         for i, ((e, _, label, a), z, s)
                         in enumerate(zip(items[:-1], norm[:-1], g.steps, strict=True)))
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
