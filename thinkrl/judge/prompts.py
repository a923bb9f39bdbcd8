"""Prompts of the generative judge, and the parser of its replies.

The paper (arXiv 2507.23317) does not publish its judge prompt. These templates are OUR reconstruction of
the protocol it describes (DESIGN §2): the judge reads the solution's intrinsic signals (reflections and
the values they correct) instead of re-solving the problem, in ONE call per rollout. docs/PAPER.md lists
this as a departure. Each template has a name and a version, recorded in the judgments manifest.

The judge must answer with JSON; `parse_reply` survives code fences, prose around the JSON, labels as a
list of objects, a list of strings or an index->label mapping, missing or extra steps and out-of-range
indices. Whatever cannot be read becomes `unknown` with a reason, never an exception. A reasoning judge's
`<think>…</think>` is dropped first (thinkrl.judge.thinking): the verdict is read from the answer after it, and
a reply cut inside its thinking has none (problem `THINK_CUT`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from thinkrl.judge.protocol import LABELS_FOR, UNKNOWN, JudgeRequest
from thinkrl.judge.thinking import THINK_CUT, strip_thinking

SYSTEM = (
    "You are a meticulous grader of step-by-step math solutions. You do not solve the problem yourself: you "
    "read the signals inside the solution (reflections such as 'wait', 'I made a mistake', 'let me re-check', "
    "corrected values) and trace them to the steps they concern. You answer with JSON only."
)

CORRECT_TASK = """The solution below reached the CORRECT final answer ({gold}). {shown}

1. Find every reflection: a step where the solver notices or corrects a mistake ("wait", "I made a mistake", "let me re-check", a value replaced by another).
2. For each reflection, trace back to the step that holds the mistake it corrects: the error source.
3. Label "incorrect" every step from an error source up to and including its reflection, and every step that used the erroneous value. Label all other steps "correct". With no reflection, every step is "correct".

{answer_form}"""
CORRECT_FORM = """Answer with JSON only, one entry per step, in this form:
{"reflections": [{"step": 3, "error_source": 2}], "labels": [{"step": 0, "label": "correct", "reason": "short reason"}, ...]}"""

INCORRECT_TASK = """The solution below reached a WRONG final answer ({pred}); the correct answer is {gold}. {shown}

Label "matched" every step that produced or carried the wrong final answer: the step where the mistake that leads to {pred} was made and the steps that passed its wrong value on. Label "unmatched" every other step (steps that are fine, and mistakes that were corrected and did not feed the final answer).

{answer_form}"""
INCORRECT_FORM = """Answer with JSON only, one entry per step, in this form:
{"labels": [{"step": 0, "label": "unmatched", "reason": "short reason"}, ...]}"""
SHOWN_STEPS = "Its reasoning is split into {n} numbered steps."
# splitter `judge`: the judge sees lines and proposes the steps itself, in the same call
SHOWN_LINES = ("Its reasoning is shown as {n} numbered lines, not yet split into steps: first group consecutive "
               "lines into reasoning steps (one step = one idea: a computation, a check or a reflection; a step "
               "may be one line), then label the steps.")
PROPOSE_FORM = """Answer with JSON only, one entry per step, the steps in order and covering every line, in this form:
{"steps": [{"first_line": 0, "last_line": 1, "label": "<label>", "reason": "short reason"}, ...]}"""


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: int
    system: str
    correct_task: str
    incorrect_task: str

    def messages(self, req: JudgeRequest) -> list[dict]:
        unit = "Line" if req.propose_steps else "Step"
        steps = "\n\n".join(f"[{unit} {s.idx}]\n{s.text}" for s in req.steps)
        form = PROPOSE_FORM if req.propose_steps else CORRECT_FORM if req.correct else INCORRECT_FORM
        shown = (SHOWN_LINES if req.propose_steps else SHOWN_STEPS).format(n=len(req.steps))
        task = (self.correct_task if req.correct else self.incorrect_task).format(
            gold=req.gold_answer, pred=req.pred_answer if req.pred_answer is not None else "no answer",
            shown=shown, answer_form=form)
        user = f"Problem:\n{req.question}\n\n{task}\n\nSolution {unit.lower()}s:\n\n{steps}"
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


TEMPLATES: dict[str, PromptTemplate] = {
    "intrinsic-v1": PromptTemplate("intrinsic-v1", 1, SYSTEM, CORRECT_TASK, INCORRECT_TASK),
}

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_SYNONYMS = {"right": "correct", "wrong": "incorrect", "error": "incorrect", "erroneous": "incorrect",
             "match": "matched", "unmatch": "unmatched", "not matched": "unmatched", "unrelated": "unmatched"}


def _json_objects(text: str) -> list[object]:
    """Every JSON object found in `text`: fenced blocks first, then balanced {...} spans, last first."""
    found: list[object] = []
    candidates = [m.group(1) for m in _FENCE.finditer(text)]
    decoder = json.JSONDecoder()
    for src in candidates + [text]:
        i = src.find("{")
        while i != -1 and len(found) < 50:
            try:
                obj, end = decoder.raw_decode(src, i)
                found.append(obj)
                i = src.find("{", end)
            except json.JSONDecodeError:
                i = src.find("{", i + 1)
    return found


def _labels_container(text: str, key: str = "labels") -> object | None:
    for obj in reversed(_json_objects(text)):
        if isinstance(obj, dict) and key in obj:
            return obj[key]
    return None


def _entries(container: object) -> list[tuple[object, object, str]]:
    """(step index or None, label, reason) from the shapes judges produce."""
    if isinstance(container, dict):
        return [(k, v, "") for k, v in container.items()]
    if not isinstance(container, list):
        return []
    out = []
    for pos, e in enumerate(container):
        if isinstance(e, dict):
            out.append((e.get("step", e.get("index", pos)), e.get("label"), str(e.get("reason", ""))[:500]))
        else:
            out.append((pos, e, ""))
    return out


def parse_reply(text: str | None, req: JudgeRequest) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """(labels, rationales, problem) for the request's steps; problem is "" when the reply was fully read."""
    n = len(req.steps)
    if text is None:
        return (UNKNOWN,) * n, ("no reply",) * n, "no reply"
    text, cut = strip_thinking(text)
    if cut:
        return (UNKNOWN,) * n, (THINK_CUT,) * n, THINK_CUT
    container = _labels_container(text)
    if container is None:
        return (UNKNOWN,) * n, ("unparseable reply: no JSON object with 'labels'",) * n, "unparseable reply"
    allowed = LABELS_FOR[req.correct]
    labels, reasons = [UNKNOWN] * n, ["judge gave no label for this step"] * n
    issues, seen = set(), set()
    for idx, label, reason in _entries(container):
        try:
            i = int(idx)
        except (TypeError, ValueError):
            issues.add("bad step index")
            continue
        if not 0 <= i < n:
            issues.add("step index out of range")
            continue
        if i in seen:
            issues.add("duplicate step index")
        seen.add(i)
        lab = str(label).strip().lower() if label is not None else ""
        lab = _SYNONYMS.get(lab, lab)
        if lab not in allowed:
            labels[i], reasons[i] = UNKNOWN, f"label {str(label)[:40]!r} not one of {'/'.join(allowed)}"
            issues.add("invalid label")
            continue
        labels[i], reasons[i] = lab, reason
    if UNKNOWN in labels and "invalid label" not in issues:
        issues.add("missing steps")
    return tuple(labels), tuple(reasons), ", ".join(sorted(issues))


def parse_steps_reply(text: str | None, req: JudgeRequest) -> tuple[tuple[str, ...], tuple[str, ...], str,
                                                                  tuple[int, ...]]:
    """Splitter `judge`: (labels, rationales, problem, step_starts) per LINE of the request, from a reply
    holding `{"steps": [{"first_line", "last_line", "label", "reason"}]}`. step_starts are the line indices
    where the judge's steps begin. Lines no valid step covers are `unknown`, each its own step; overlapping
    or reversed ranges and bad labels are reported in `problem`, never raised."""
    n = len(req.steps)
    labels, reasons = [UNKNOWN] * n, ["judge put this line in no step"] * n
    if text is None:
        return (UNKNOWN,) * n, ("no reply",) * n, "no reply", tuple(range(n))
    text, cut = strip_thinking(text)
    if cut:
        return (UNKNOWN,) * n, (THINK_CUT,) * n, THINK_CUT, tuple(range(n))
    container = _labels_container(text, "steps")
    if not isinstance(container, list):
        why = "unparseable reply: no JSON object with a 'steps' list"
        return (UNKNOWN,) * n, (why,) * n, "unparseable reply", tuple(range(n))
    allowed, issues, starts, covered = LABELS_FOR[req.correct], set(), set(), set()
    for e in container:
        try:
            a, b = int(e["first_line"]), int(e.get("last_line", e["first_line"]))
        except (TypeError, ValueError, KeyError):
            issues.add("bad step range")
            continue
        if not (0 <= a <= b < n) or covered & set(range(a, b + 1)):
            issues.add("step range out of order, overlapping or out of range")
            continue
        lab = str(e.get("label", "")).strip().lower()
        lab = _SYNONYMS.get(lab, lab)
        if lab not in allowed:
            issues.add("invalid label")
            lab = UNKNOWN
        covered |= set(range(a, b + 1))
        starts.add(a)
        for i in range(a, b + 1):
            labels[i], reasons[i] = lab, str(e.get("reason", ""))[:500] if lab != UNKNOWN else \
                f"label {str(e.get('label'))[:40]!r} not one of {'/'.join(allowed)}"
    if len(covered) < n:
        issues.add("lines in no step")
        starts |= set(range(n)) - covered  # each uncovered line is a step of its own
        starts |= {i + 1 for i in range(n - 1) if i not in covered and i + 1 in covered}
    return tuple(labels), tuple(reasons), ", ".join(sorted(issues)), tuple(sorted(starts))
