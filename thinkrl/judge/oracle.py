"""The oracle judge: exact ArithChain step labels (`oracle_label`) delivered through the Judge protocol.

    from thinkrl.judge.oracle import OracleJudge
    verdicts = OracleJudge().judge_many(requests)      # thinkrl judge --judge oracle ...

Only for ArithChain questions: the problem is parsed back from the question with `problem_from_question`
(truth comes from it, not from the solution's cues) and the completion is labelled with `oracle_label`.
The oracle cuts steps with its own blank-line splitter; each request step (normally from
`split_steps(completion, "blank")`) takes the label of the oracle step with the same span. Where the spans
differ (another splitter, odd whitespace), a request step takes the label of the oracle step it overlaps
most (on a tie, the error label) and its rationale says so; a request step the oracle counts as part of its
answer part gets the non-error label (`correct` / `unmatched`: the answer part is never punished).

Failed verdicts (every step `unknown`, the outcome advantage stands): a question that is not an
ArithChain problem ("not an ArithChain problem"), and a request whose outcome disagrees with the
oracle's own reading of the boxed answer (the labels of one protocol cannot stand in for the other's).

Departure from the paper: the paper has no oracle; this judge exists to measure the others (DESIGN §5).
"""

from __future__ import annotations

from thinkrl.judge.protocol import CORRECT, INCORRECT, MATCHED, UNMATCHED, JudgeRequest, Verdict
from thinkrl.steps import Step
from thinkrl.tasks.arith import OracleLabels, StepRecord, oracle_label, problem_from_question

_ERROR_LABELS = (INCORRECT, MATCHED)
ANSWER_PART = "oracle: the oracle counts this text as the answer part (not a step)"  # the rationale of such steps


def _reason(s: StepRecord) -> str:
    """A one-line reason for the oracle's label of one step."""
    if s.kind == "other" or s.result is None:
        what = f"{s.kind} step without an equation"
    else:
        what = f"{s.lhs} {s.op} {s.rhs} = {s.result}"
        what += "" if s.arith_ok else " (arithmetic wrong)"
        what += "" if s.value_ok else " (off the true running value)"
    fixes = f"; corrects step {s.fixes}" if s.fixes is not None else ""
    return f"oracle: {what}{fixes}"


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> int:
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


def map_labels(oracle: OracleLabels, steps: tuple[Step, ...], correct: bool) -> tuple[list[str], list[str]]:
    """Labels and rationales for the request's steps from the oracle's (by exact span, else by overlap)."""
    by_span = {(s.char_start, s.char_end): s for s in oracle.steps}
    labels, why = [], []
    for st in steps:
        span = (st.char_start, st.char_end)
        if span in by_span:
            rec = by_span[span]
            labels.append(rec.label)
            why.append(_reason(rec))
            continue
        hits = [(_overlap(span, (s.char_start, s.char_end)), s.label in _ERROR_LABELS, s) for s in oracle.steps]
        hits = [h for h in hits if h[0] > 0]
        if not hits:
            labels.append(CORRECT if correct else UNMATCHED)
            why.append(ANSWER_PART)
            continue
        _, _, best = max(hits, key=lambda h: (h[0], h[1]))
        labels.append(best.label)
        others = ", ".join(str(h[2].idx) for h in hits)
        why.append(f"{_reason(best)}; span differs from the oracle's steps ({others}): labelled by overlap")
    return labels, why


class OracleJudge:
    """Judge protocol: exact labels for ArithChain rollouts (see module docstring)."""

    name = "oracle"
    version = 1  # bump when thinkrl.tasks.arith.oracle_label changes: it is part of the judge stage's key

    def judge_many(self, requests: list[JudgeRequest], progress=None) -> list[Verdict]:
        out = []
        for req in requests:
            out.append(self.judge_one(req))
            if progress is not None:
                progress(1)
        return out

    @staticmethod
    def judge_one(req: JudgeRequest) -> Verdict:
        problem = problem_from_question(req.question)
        if problem is None:
            return Verdict.unknown(req, "not an ArithChain problem")
        oracle = oracle_label(problem, req.completion if isinstance(req.completion, str) else "")
        if oracle.final_correct != bool(req.correct):
            return Verdict.unknown(req, f"outcome mismatch: the request says correct={bool(req.correct)}, the "
                                       f"oracle reads the boxed answer {oracle.pred_value} as "
                                       f"{'right' if oracle.final_correct else 'wrong'} ({problem.answer})")
        labels, why = map_labels(oracle, tuple(req.steps), bool(req.correct))
        return Verdict(req.rollout_id, tuple(labels), tuple(why))
