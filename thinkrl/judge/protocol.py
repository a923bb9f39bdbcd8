"""The judge protocol: what a judge is asked about one rollout and what it answers.

One judge call per rollout, never one per step (DESIGN §2, "Judge verdicts"):
- a correct solution -> each step `correct` or `incorrect` (reflections found, traced back to their error
  source, the interval from source to reflection and the steps that used the wrong value are incorrect);
- an incorrect solution -> each step `matched` (produced or carried the wrong final answer) or
  `unmatched` (did not feed it, not punished);
- a step the judge could not label -> `unknown`, with a reason. A failed call -> every step unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from thinkrl.steps import Step

CORRECT, INCORRECT, MATCHED, UNMATCHED, UNKNOWN = "correct", "incorrect", "matched", "unmatched", "unknown"
LABELS_FOR = {True: (CORRECT, INCORRECT), False: (MATCHED, UNMATCHED)}  # by the rollout's outcome
LABELS = (CORRECT, INCORRECT, MATCHED, UNMATCHED, UNKNOWN)


@dataclass(frozen=True)
class JudgeRequest:
    rollout_id: str
    question: str
    completion: str
    steps: tuple[Step, ...]
    correct: bool                 # the rollout's outcome (graded), picks the protocol
    pred_answer: str | None
    gold_answer: str
    propose_steps: bool = False   # splitter `judge`: `steps` are the lines; the judge groups them into steps


@dataclass(frozen=True)
class Verdict:
    rollout_id: str
    labels: tuple[str, ...]       # one per request step, from LABELS_FOR[correct] or `unknown`
    rationales: tuple[str, ...]   # one per step: the judge's reason, or why the label is unknown
    ok: bool = True               # False: the request failed (transport, timeout, no usable reply; every label
                                  # unknown): not a judgment, the stage asks again (a code judge that cannot
                                  # judge a rollout answers `Verdict.unknown`, which is one)
    reason: str = ""              # failure reason (timeout, http 500, unparseable reply, ...)
    judge_tokens: int = 0         # tokens the judge read + wrote for this rollout (0 for rule judges)
    extra: dict = field(default_factory=dict)
    reply: str | None = None      # the raw reply of a generative judge (None for rule judges, failed calls)

    @staticmethod
    def unknown(req: JudgeRequest, reason: str) -> Verdict:
        """A judge's real answer that it cannot label this rollout (every step `unknown`, the reason given): a
        code judge asked about a problem it does not know, say. Asking again gives the same answer."""
        n = len(req.steps)
        return Verdict(req.rollout_id, (UNKNOWN,) * n, (reason,) * n, reason=reason)

    @staticmethod
    def failed(req: JudgeRequest, reason: str, judge_tokens: int = 0, reply: str | None = None) -> Verdict:
        n = len(req.steps)
        return Verdict(req.rollout_id, (UNKNOWN,) * n, (reason,) * n, ok=False, reason=reason,
                       judge_tokens=judge_tokens, reply=reply)


class Judge(Protocol):
    name: str                     # recorded in every judgments row, e.g. `rule`, `hf:/models/q`

    def judge_many(self, requests: list[JudgeRequest], progress=None) -> list[Verdict]:
        """One verdict per request, in order. Never raises for a bad reply: it becomes `unknown`.
        progress(k) is called as work finishes: k more rollouts done since the last call."""
        ...
