"""The rule judge: the intrinsic-signal protocol (DESIGN §2, "Judge verdicts") executed on arithmetic steps.

    from thinkrl.judge.rule import RuleJudge
    verdicts = RuleJudge().judge_many(requests)          # one Verdict per JudgeRequest, never raises

It does not re-solve the problem to decide the outcome (that is `request.correct`); it reads the
solution's own cues and checks its arithmetic exactly:

1. Equations are found in each step without eval/exec/sympify: `17 + 28 = 45`, `45 * 3 = 135`,
   `$5 \\times 3 = \\$15$`, `48/2 = 24`, GSM8K calculator annotations `<<48/2=24>>`, chains
   `3 + 4 + 5 = 12` (and running chains `3 + 4 = 7 + 5 = 12`), numbers with commas, decimals, `$`, `%`,
   operators `+ - * / ^ **`, `×`, `÷`, `\\cdot`, `\\div`, `\\frac{a}{b}`, `x` between numbers and the words
   plus/minus/times/multiplied by/divided by/equals/is, mixed numbers `1 1/2`, unit words between a number
   and an operator (`72 cubic feet * 3/4`). Not checked: sides with a variable (`S + 143 = ...`, `7S`),
   numbers with leading zeros (`0900`, clock times). A tiny recursive-descent parser evaluates each side
   with Fraction arithmetic under bounds (tokens per side, nesting depth, digits per number, bits per
   value, exponent size); an expression past a bound is unverifiable, never an error. A result written
   with d decimals may be rounded (tolerance half a unit of its last digit); `≈` allows 1%.
2. Reflections: a step that names a rejected value (`not 125`, `125 is wrong`, `instead of 125` only
   beside a cue, else it is a comparison), restates an earlier step's left-hand side with a different
   result (`Wait, 45 * 3 = 135`, also silently), or carries a cue (wait, actually, hmm, I made a mistake, that's wrong, should be, re-check...). Its error
   source is the latest earlier step that produced the rejected value (preferring the same left-hand
   side), else the latest step with the restated left-hand side, else (wait/mistake cues only) the nearest
   earlier step whose arithmetic fails, else (an explicit "mistake"/"that's wrong" only) the step just
   before. A re-check that restates a step with the same result is not an error.
3. Value flow: a step uses a value when a number on a left-hand side equals an earlier step's result
   (the most recent producer; a value a reflection rejected stops flowing after the reflection). The
   first number of a left-hand side prefers an earlier step's result; the other numbers prefer the
   question when the question states that number.

Correct solution (`correct` / `incorrect`): each reflection's interval [error source .. reflection] is
`incorrect`, plus later steps that still use the rejected value. Departure from the strict paper protocol
(which marks errors only through reflections): a step whose own arithmetic is wrong is `incorrect` even
with no reflection, and so are the steps that carry its wrong result, and the step that silently
returns to the right value (it is where the detour ends, as in the oracle). On an ArithChain question the
true running values are known: a carrier whose value is right again (a second slip cancelled the first)
ends the detour too, and its users are not tainted. Everything else is `correct`.

Incorrect solution (`matched` / `unmatched`): the final value is pred_answer (else the last result);
the answer part is read too, so a computation written there is traced. The value-flow path is walked
back from the final value; steps that restate a path step (same equation, same result) join it. The
error source is the earliest path step whose arithmetic fails or, for an ArithChain question (parsed
with `problem_from_question`), the oracle's: where the final run of path steps whose result departs from
the true running value begins (steps before a value that is right again do not feed the wrong answer,
even when a slip produced it). Path steps from the
source on are `matched`; path steps before it, steps off the path and corrected errors are `unmatched`.
A reflection written after the error source re-derives a value that is still wrong (it started from a
wrong input), so it is on the path and `matched`; the step it corrected is `unmatched` (its value never
reaches the answer). No located error: on ArithChain (the path's values are all right, so the mistake is
a missing step or the answer part) every step is `unmatched`, as the oracle does; elsewhere every path
step is `matched`. If no step produces or states the wrong answer, the last computed result is traced
instead when it is wrong too (else every step is `unmatched`: the answer came from nowhere).

Steps without an equation take their neighbours' rule: inside a reflection interval `incorrect`, else
`correct`; in a wrong solution `matched` when after the error source they mention a matched value or lie
between matched steps, else `unmatched`. `unknown` only for a wrong solution in which no number can be
traced at all (the reason is the rationale). Every label carries a one-line rationale.

Cost is about linear in the text: an error source is looked for at most LOOKBACK steps back, each lookup
is a bisect plus at most MAX_SCAN candidates (3,000 steps take about a second).

Guesses beyond the paper (the paper's judge is an LLM prompt): all the rules above, the cue lists and
the tolerance are thinkrl's; a rollout whose analysis fails unexpectedly gets a failed Verdict (its
outcome advantage stands) instead of an exception.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from thinkrl.judge.arith_expr import (
    ANNOT,
    MAX_EQS,
    MAX_STEP_CHARS,
    Equation,
    equations_in,
    eval_node,
    fmt_value,
    normalize_text,
    parse_expr,
    parse_number,
    raw_tokenize,
    tokenize,
)
from thinkrl.judge.protocol import CORRECT, INCORRECT, MATCHED, UNKNOWN, UNMATCHED, JudgeRequest, Verdict

# ---------------------------------------------------------------------------------------------------
# Bounds of the judging protocol (those of the arithmetic reader are in thinkrl.judge.arith_expr)

LOOKBACK = 256  # steps a reflection looks back for its error source
MAX_SCAN = 64  # candidates examined per lookup (producers, restatements)


# ---------------------------------------------------------------------------------------------------
# Steps: equations, numbers mentioned, reflection cues

_NUM_TXT = r"(?<![\d.,])(-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?)"
_CUR = r"(?:\\?\$\s*)?"
_NAMED_WRONG = (re.compile(rf"\b(?:not|isn'?t)\s+{_CUR}{_NUM_TXT}", re.I),
                re.compile(rf"{_NUM_TXT}\s*%?\s+(?:is|was)\s+(?:wrong|incorrect|a mistake)", re.I))
_WEAK_WRONG = (re.compile(rf"\b(?:instead of|rather than)\s+{_CUR}{_NUM_TXT}", re.I),)  # needs a cue
_NAMED_RIGHT = re.compile(
    rf"\b(?:should (?:be|have been)|is actually|it'?s actually|correct (?:value|result|answer|total) is"
    rf"|corrected (?:value|result) is)\s*:?\s*{_CUR}{_NUM_TXT}", re.I)
_NEG_CUE = re.compile(
    r"\b(?:i made an? (?:\w+ )?(?:mistake|error)|my (?:mistake|error|bad)|made an? error|oops|typo"
    r"|(?:that|this|it|which)(?:'s| is| was) (?:wrong|incorrect|not right|a mistake)|i was wrong"
    r"|miscalculat\w*|there(?:'s| is) an? (?:mistake|error)|(?:is|was) (?:wrong|incorrect)\b)", re.I)
_HES_CUE = re.compile(
    r"\b(?:wait|hold on|hmm+|actually|let me (?:re-?)?(?:think|redo|recompute|recalculate|reconsider|correct|fix)"
    r"|re-?calculat\w*|re-?comput\w*|correction|corrected|should (?:be|have been)|i mean)\b|^\s*no\s*,", re.I)
_CHECK_CUE = re.compile(r"\b(?:check\w*|re-?check\w*|double[- ]check\w*|verif\w*|confirm\w*)\b", re.I)


@dataclass
class StepInfo:
    """What the judge reads in one step (or in the answer part, idx == n_steps)."""

    idx: int
    eqs: list[Equation]
    mentions: list[Fraction]  # every number written (% ignored)
    neg: bool  # an explicit "I made a mistake" / "that's wrong"
    hes: bool  # a hesitation / correction cue: wait, actually, should be...
    check: bool  # a re-check cue
    named_wrong: Fraction | None
    named_right: Fraction | None
    truncated: bool = False
    produced: set = field(default_factory=set)  # results of its equations

    def __post_init__(self) -> None:
        self.produced = {e.result for e in self.eqs if e.result is not None}


def _named_wrong(text: str) -> Fraction | None:
    """`not 125`, `125 is wrong`; `instead of 125` only beside a correction cue (else it is a comparison)."""
    w = _first_match(_NAMED_WRONG, text)
    if w is None and (_NEG_CUE.search(text) or _HES_CUE.search(text)):
        w = _first_match(_WEAK_WRONG, text)
    return w


def _first_match(pats: Sequence[re.Pattern], text: str) -> Fraction | None:
    for p in pats:
        m = p.search(text)
        if m is not None:
            return parse_number(m.group(1))
    return None


def analyse_step(idx: int, text: str) -> StepInfo:
    """Equations, numbers and cues of one step's text; linear in its (truncated) length."""
    truncated = len(text) > MAX_STEP_CHARS
    text = text[:MAX_STEP_CHARS]
    eqs: list[Equation] = []
    for m in ANNOT.finditer(text):
        eqs.extend(equations_in(tokenize(normalize_text(m.group(1)))))
    prose = normalize_text(ANNOT.sub(" ", text))
    toks = tokenize(prose)
    seen = {e.result for e in eqs}  # a calculator annotation is the exact version of its prose equation
    for e in equations_in(toks):
        if e.result not in seen or e.result is None:
            eqs.append(e)
    mentions = [t.val[0] for t in raw_tokenize(normalize_text(text)) if t.kind == "num" and t.val[0] is not None]
    return StepInfo(idx, eqs[:MAX_EQS], mentions, bool(_NEG_CUE.search(text)), bool(_HES_CUE.search(text)),
                    bool(_CHECK_CUE.search(text)), _named_wrong(text),
                    _first_match((_NAMED_RIGHT,), text), truncated)


def final_value(text: str | None) -> Fraction | None:
    """The value of an answer string (`63`, `$18.00`, `\\frac{1}{2}`, `20%` as 20); None if none."""
    if not isinstance(text, str) or not text.strip():
        return None
    toks = [t for t in tokenize(normalize_text(text[:2000])) if t.kind != "brk"]
    got = parse_expr(toks)
    if got is not None and got[1] == len(toks):
        v = eval_node(got[0], False)
        if v is not None:
            return v
    return next((t.val[0] for t in toks if t.kind == "num" and t.val[0] is not None), None)


# ---------------------------------------------------------------------------------------------------
# Reflections and value flow


@dataclass(frozen=True)
class Reflection:
    step: int  # the reflecting step
    source: int  # the error source it corrects
    wrong: Fraction | None  # the rejected value
    right: Fraction | None  # the corrected value, if stated
    how: str  # how the source was found


class _Postings:
    """Items in step order with a bisectable index: the latest ones before a step, newest first."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.items: list = []

    def add(self, step: int, item) -> None:
        self.steps.append(step)
        self.items.append(item)

    def before(self, k: int, lo: int = -1):
        """(step, item) with lo < step < k, newest first, at most MAX_SCAN of them."""
        pos = bisect_left(self.steps, k)
        for t in range(pos - 1, max(-1, pos - 1 - MAX_SCAN), -1):
            if self.steps[t] <= lo:
                return
            yield self.steps[t], self.items[t]


class _Index:
    """Per-rollout lookups: equations by left-hand side and by result, failing equations, mentions,
    and which steps use which value. Built once; every query is a bisect plus a bounded scan."""

    def __init__(self, infos: Sequence[StepInfo]):
        self.infos = infos
        self.by_key: dict[str, _Postings] = {}
        self.by_result: dict[Fraction, _Postings] = {}
        self.by_mention: dict[Fraction, _Postings] = {}
        self.failing = _Postings()
        self.uses: list[list[tuple[Fraction, bool]]] = []  # (n_steps,) (value, is-first-number) taken from outside
        self.users: dict[Fraction, list[int]] = {}
        for info in infos:
            own: set = set()
            uses: list[tuple[Fraction, bool]] = []
            for e in info.eqs:
                self.by_key.setdefault(e.key, _Postings()).add(info.idx, e)
                if e.result is not None:
                    self.by_result.setdefault(e.result, _Postings()).add(info.idx, e)
                if e.ok is False:
                    self.failing.add(info.idx, e)
                uses.extend((v, j == 0 and v == e.first) for j, v in enumerate(e.inputs) if v not in own)
                if e.result is not None:
                    own.add(e.result)
            self.uses.append(uses)
            for v in {v for v, _ in uses}:
                self.users.setdefault(v, []).append(info.idx)
            for v in set(info.mentions):
                self.by_mention.setdefault(v, _Postings()).add(info.idx, None)

    def latest(self, table: dict, value, j: int, test: Callable[[Equation], bool] = lambda e: True):
        """(step, equation) of the latest equation before step j (within LOOKBACK) listed under value."""
        post = table.get(value)
        if post is None:
            return None
        return next(((i, e) for i, e in post.before(j, j - 1 - LOOKBACK) if test(e)), None)


class _Flow:
    """Which step produced a value: the most recent producer; a value a reflection rejected stops flowing
    from its source once the reflection is written (the reflection itself restarts from the older value)."""

    def __init__(self, index: _Index, qnums: set, retracted: dict[int, int]):
        self.index, self.qnums, self.retracted = index, qnums, retracted

    def producer(self, k: int, v: Fraction, first: bool, raw: bool = False) -> int | None:
        if not first and v in self.qnums:
            return None
        post = self.index.by_result.get(v)
        if post is None:
            return None
        for i, _ in post.before(k):
            if raw or not (i in self.retracted and self.retracted[i] <= k):
                return i
        return None

    def uses(self, k: int) -> list[tuple[Fraction, bool]]:
        return self.index.uses[k] if 0 <= k < len(self.index.uses) else []


def find_reflection(index: _Index, j: int, used_sources: set[int]) -> Reflection | None:
    """The reflection step j makes, with its error source; None if it corrects nothing."""
    s = index.infos[j]
    w = s.named_wrong
    for e in s.eqs:  # a restated left-hand side with a different result corrects the earlier step
        hit = index.latest(index.by_key, e.key, j)
        if hit is not None and e.ok is not False and hit[1].ok is not True and hit[1].result is not None \
                and e.result is not None and hit[1].result != e.result and (w is None or w == hit[1].result):
            return Reflection(j, hit[0], hit[1].result, e.result, "restates its left-hand side")
    right = s.eqs[0].result if s.eqs else s.named_right
    if w is not None and w != right:
        keys = {e.key for e in s.eqs}
        hit = index.latest(index.by_result, w, j, lambda x: x.key in keys) or index.latest(index.by_result, w, j)
        if hit is not None:
            return Reflection(j, hit[0], w, right, f"produced the rejected {fmt_value(w)}")
        post = index.by_mention.get(w)
        i = next((i for i, _ in post.before(j, j - 1 - LOOKBACK)), None) if post is not None else None
        if i is not None:
            return Reflection(j, i, w, right, f"states the rejected {fmt_value(w)}")
    if s.neg or (s.hes and (w is not None or s.named_right is not None or not s.eqs)):
        hit = next(((i, e) for i, e in index.failing.before(j, j - 1 - LOOKBACK)), None)
        if hit is not None and hit[0] not in used_sources:
            return Reflection(j, hit[0], hit[1].result, hit[1].expected, "nearest wrong equation before the cue")
    if s.neg and j > 0:
        return Reflection(j, j - 1, None, right, "the step just before an explicit 'mistake' cue")
    return None


def _reflections(index: _Index) -> list[Reflection]:
    out, used = [], set()
    for j in range(len(index.infos)):
        r = find_reflection(index, j, used)
        if r is not None:
            out.append(r)
            used.add(r.source)
    return out


def _question_numbers(question: str) -> set:
    return set(analyse_step(-1, question if isinstance(question, str) else "").mentions)


# ---------------------------------------------------------------------------------------------------
# Correct solutions: correct / incorrect


def _eq_desc(e: Equation) -> str:
    return f"{e.text} is wrong ({fmt_value(e.expected)})"


def _label_correct(infos: list[StepInfo], qnums: set, problem=None) -> tuple[list[str], list[str]]:
    n = len(infos)
    # ArithChain: the steps whose value is wrong (aligned as the oracle does); a wrong value stops flowing at
    # a step that lands back on the true running value
    departs = None if problem is None else _departures([i for i in range(n) if infos[i].eqs], infos, problem)
    why: list[str | None] = [None] * n
    index = _Index(infos)
    refls = _reflections(index)
    flow = _Flow(index, qnums, {r.source: r.step for r in refls})
    for r in refls:
        bad = next((e for e in infos[r.source].eqs if e.ok is False), None)
        src = _eq_desc(bad) if bad is not None else f"{r.how}"
        why[r.source] = why[r.source] or f"error source: {src}; corrected by step {r.step}"
        for k in range(r.source + 1, r.step):
            why[k] = why[k] or f"between the error source (step {r.source}) and its correction (step {r.step})"
        fix = f"{fmt_value(r.wrong)} -> {fmt_value(r.right)}" if r.wrong is not None else "a correction"
        why[r.step] = why[r.step] or f"reflection correcting step {r.source} ({fix})"
        if r.wrong is not None and r.wrong not in qnums:
            for k in index.users.get(r.wrong, ())[:MAX_SCAN * 4]:
                if k > r.step and flow.producer(k, r.wrong, True) is None and \
                        flow.producer(k, r.wrong, True, raw=True) == r.source:
                    why[k] = why[k] or f"uses the value {fmt_value(r.wrong)} step {r.step} rejected"
    covered = {r.source for r in refls}
    for i, info in enumerate(infos):
        bad = next((e for e in info.eqs if e.ok is False), None)
        if bad is None or i in covered or why[i] is not None:
            continue
        why[i] = f"{_eq_desc(bad)}; no reflection catches it"
        _taint_forward(index, flow, i, bad, why, departs)
    labels = [CORRECT if w is None else INCORRECT for w in why]
    return labels, [w if w is not None else _correct_reason(infos[i]) for i, w in enumerate(why)]


def _taint_forward(index: _Index, flow: _Flow, i: int, bad: Equation, why: list,
                   departs: dict[int, str] | None = None) -> None:
    """Steps carrying the wrong result of step i (transitively), and the first later step that silently
    returns to the right value (uses it while no step produced it). With `departs` (ArithChain: the steps
    whose value is wrong) a step whose value is right ends the detour: it is marked, its users are not."""
    if bad.result is None:
        return
    stack, seen = ([i] if departs is None or i in departs else []), {i}
    while stack:
        s = stack.pop()
        for v in index.infos[s].produced:
            for k in index.users.get(v, ())[:MAX_SCAN * 4]:
                if k > s and k not in seen and any(u == v and flow.producer(k, u, f) == s for u, f in flow.uses(k)):
                    why[k] = why[k] or f"carries the wrong value {fmt_value(bad.result)} of step {i}"
                    seen.add(k)
                    if departs is None or k in departs:
                        stack.append(k)
    e = bad.expected
    if e is not None:  # the first number of a left-hand side, or any number the question does not state
        k = next((k for k in index.users.get(e, ()) if i < k <= i + LOOKBACK and flow.producer(k, e, True) is None
                  and any(u == e and (f or e not in flow.qnums) for u, f in flow.uses(k))), None)
        if k is not None:
            why[k] = why[k] or f"silently returns to the right value {fmt_value(e)} after step {i}"


def _correct_reason(info: StepInfo) -> str:
    if info.eqs:
        if all(e.ok is None for e in info.eqs):
            return "arithmetic unverifiable (too large or undefined); no reflection touches it"
        what = "re-check confirms it" if info.check else "arithmetic checks out"
        return f"{info.eqs[0].text}: {what}"
    return "no equation; no error cue" + (" (step truncated)" if info.truncated else "")


# ---------------------------------------------------------------------------------------------------
# Incorrect solutions: matched / unmatched


def _path(index: _Index, answer: StepInfo, final: Fraction, flow: _Flow) -> set[int]:
    """Steps on the value-flow path to the final value, walked back from the answer part."""
    n = len(index.infos)
    roots = [(v, j == 0) for e in answer.eqs if e.result == final for j, v in enumerate(e.inputs)]
    path: set[int] = set()
    stack = [(n, v, first) for v, first in roots or [(final, True)]]
    while stack:
        k, v, first = stack.pop()
        p = flow.producer(k, v, first)
        if p is None:
            if k == n and v == final and final in index.by_mention:  # stated without a computation
                p = next((i for i, _ in index.by_mention[final].before(n)), None)
            if p is not None:
                path.add(p)
            continue
        for q in [p, *_restatements(index, p, v, flow)]:
            if q not in path:
                path.add(q)
                stack.extend((q, u, f) for u, f in flow.uses(q))
    return path


def _restatements(index: _Index, p: int, v: Fraction, flow: _Flow) -> list[int]:
    """Earlier steps writing the same equation with the same result as step p (re-checks of each other)."""
    out = []
    for key in {e.key for e in index.infos[p].eqs if e.result == v}:
        out += [i for i, e in index.by_key[key].before(p, p - 1 - LOOKBACK)
                if e.result == v and i not in flow.retracted]
    return out


def _departures(path: list[int], infos: list[StepInfo], problem) -> dict[int, str]:
    """ArithChain: path steps whose result is not the true running value (aligned as the oracle does)."""
    if problem is None:
        return {}
    from thinkrl.tasks.arith import OP_SYMBOL

    sym_op = {v: k for k, v in OP_SYMBOL.items()}
    values, ops = problem.values, problem.ops
    out, pos, prev = {}, 0, None
    for i in path:
        e = next((x for x in infos[i].eqs if x.simple is not None), None)
        if e is None:
            continue
        a, sym, b = e.simple
        cands = [k for k, (op, operand) in enumerate(ops) if op == sym_op.get(sym) and operand == b]
        if prev is not None and prev[0] == e.simple:
            k = prev[1]
        else:
            k = next((c for c in cands if c >= pos), cands[-1] if cands else None)
        truth = values[pos] if k is None else values[k + 1]
        if e.result != truth:
            out[i] = f"{e.text} departs from the true running value {truth}"
        pos, prev = (pos if k is None else k + 1), (e.simple, k)
    return out


def _error_source(path: list[int], infos: list[StepInfo], problem) -> tuple[int | None, str]:
    """The earliest path step whose arithmetic fails, and why. ArithChain: as the oracle, where the final
    run of path steps with wrong values begins (a value that is right again, even by a second slip, means
    the steps before it do not feed the wrong answer); None when the path ends on a right value."""
    departs = _departures(path, infos, problem)
    if problem is not None:
        judged = [i for i in path if any(e.simple is not None for e in infos[i].eqs)]
        if not judged or judged[-1] not in departs:
            return None, ""
        j = len(judged) - 1
        while j > 0 and judged[j - 1] in departs:
            j -= 1
        return judged[j], departs[judged[j]]
    for i in path:
        bad = next((e for e in infos[i].eqs if e.ok is False), None)
        if bad is not None or i in departs:
            return i, (_eq_desc(bad) if bad is not None else departs[i])
    return None, ""


def _label_wrong(infos: list[StepInfo], answer: StepInfo, final: Fraction | None, gold: Fraction | None,
                 qnums: set, problem) -> tuple[list[str], list[str]]:
    n = len(infos)
    last = next((e.result for info in reversed(infos) for e in reversed(info.eqs) if e.result is not None), None)
    if final is None or not any(info.mentions for info in infos):
        final = last
    if final is None:
        return [UNKNOWN] * n, ["no final value or no numbers to trace the wrong answer through"] * n
    index = _Index(infos)
    refls = _reflections(index)
    flow = _Flow(index, qnums, {r.source: r.step for r in refls})
    path = sorted(_path(index, answer, final, flow))
    note = ""
    if not path and last is not None and last != final and last != gold:
        # the answer comes from nowhere in the reasoning, which itself ended on another wrong value
        note = f" (the answer {fmt_value(final)} is produced by no step: traced the last result {fmt_value(last)})"
        final = last
        path = sorted(_path(index, analyse_step(n, ""), final, flow))
    if not path:
        return [UNMATCHED] * n, [f"no step produces or states the wrong answer {fmt_value(final)}"] * n
    source, why_src = _error_source(path, infos, problem)
    if source is None and problem is not None:
        return [UNMATCHED] * n, ["the path's values are right; the wrong answer comes from a missing step "
                                 "or the answer part"] * n
    start = path[0] if source is None else source
    labels, why = [UNMATCHED] * n, ["does not feed the wrong answer"] * n
    carried: set = set()
    for i in path:
        if i < start:
            why[i] = f"before the error source (step {start})"
        else:
            labels[i] = MATCHED
            carried |= infos[i].produced
            why[i] = (f"error source: {why_src}" if i == source else
                      f"carries {fmt_value(infos[i].eqs[-1].result)} to the answer" if infos[i].eqs
                      else f"states the wrong answer {fmt_value(final)}")
    if source is None:
        why[start] = f"{why[start]} (no arithmetic error located: the whole path is matched)"
    why = [w + note if lab == MATCHED else w for w, lab in zip(why, labels, strict=True)]
    on = set(path)
    for r in refls:
        if r.source not in on:
            why[r.source] = f"corrected by step {r.step}; its value does not reach the answer"
    _label_no_equation(infos, labels, why, start, carried, on)
    return labels, why


def _label_no_equation(infos: list[StepInfo], labels: list[str], why: list[str], start: int, carried: set,
                       on: set) -> None:
    """Steps without an equation after the error source follow their equation-bearing neighbours."""
    n = len(infos)
    prev_eq, nxt_eq, last = [None] * n, [None] * n, None
    for i in range(n):
        prev_eq[i], last = last, (i if infos[i].eqs else last)
    last = None
    for i in reversed(range(n)):
        nxt_eq[i], last = last, (i if infos[i].eqs else last)
    for i, info in enumerate(infos):
        if info.eqs or i in on:
            continue
        if i <= start:
            why[i] = "no equation; before the error source"
            continue
        p, q = prev_eq[i], nxt_eq[i]
        between = p is not None and labels[p] == MATCHED and (q is None or labels[q] == MATCHED)
        if carried.intersection(info.mentions) or between:
            labels[i] = MATCHED
            why[i] = "no equation; carries the wrong value between matched steps"
        else:
            why[i] = "no equation; not on the path to the wrong answer"


# ---------------------------------------------------------------------------------------------------
# The judge


def _arith_problem(question: str):
    try:
        from thinkrl.tasks.arith import problem_from_question
    except ImportError:  # pragma: no cover - the task module is part of the package
        return None
    return problem_from_question(question)


def judge_one(req: JudgeRequest) -> Verdict:
    """The rule judge's verdict on one request (may raise on a bug; judge_many guards it)."""
    steps = tuple(req.steps)
    completion = req.completion if isinstance(req.completion, str) else ""
    infos = [analyse_step(i, s.text if isinstance(s.text, str) else "") for i, s in enumerate(steps)]
    if not steps:
        return Verdict(req.rollout_id, (), ())
    qnums = _question_numbers(req.question)
    problem = _arith_problem(req.question)
    if req.correct:
        labels, why = _label_correct(infos, qnums, problem)
    else:
        tail = completion[steps[-1].char_end:] if steps[-1].char_end <= len(completion) else ""
        answer = analyse_step(len(steps), tail)
        labels, why = _label_wrong(infos, answer, final_value(req.pred_answer), final_value(req.gold_answer),
                                   qnums, problem)
    return Verdict(req.rollout_id, tuple(labels), tuple(why))


class RuleJudge:
    """Judge protocol: the intrinsic-signal protocol executed on arithmetic steps (see module docstring)."""

    name = "rule"
    version = 2  # bump when the labels of any input change: it is part of the judge stage's key

    def judge_many(self, requests: list[JudgeRequest], progress=None) -> list[Verdict]:
        out = []
        for req in requests:
            try:
                out.append(judge_one(req))
            except Exception as e:  # a bug must not break a judging run: the outcome advantage stands
                out.append(Verdict.unknown(req, f"rule judge internal error: {type(e).__name__}: {e}"[:300]))
            if progress is not None:
                progress(1)
        return out
