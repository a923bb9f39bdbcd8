"""ArithChain: the embedded arithmetic task, its flawed warm-start corpus, and an exact step oracle.

A problem is a chain of 2-6 integer operations on small numbers:

    Start at 17. Add 28. Multiply by 3. Subtract 9. Divide by 2. What is the result?

and a solution writes one equation per step, steps separated by a blank line, then the answer part:

    17 + 28 = 45

    45 * 3 = 135

    135 - 9 = 126

    126 / 2 = 63

    The answer is \\boxed{63}.

The warm-start corpus (`make_corpus`) adds realistic flaws: wrong results that a reflection catches
(`Wait, 45 * 3 = 135, not 125.`), wrong results that are never caught (carried forward, so the final
answer is wrong), and redundant re-checks (`Check: 45 * 3 = 135.`). Because every step is exactly
checkable, `oracle_label` labels any completion step by step under the judge protocol of DESIGN §2
(`correct`/`incorrect` for a correct final answer, `matched`/`unmatched` for a wrong one); it is the
yardstick for every judge.

Try it (corpus statistics; a flawed example with its oracle labels):

    python -c "from thinkrl.tasks.arith import *; print(corpus_stats(make_corpus(5000, seed=0)))"
    python -c "from thinkrl.tasks.arith import *; e = make_corpus(2, 0)[1]; print(e.solution_text,
               oracle_label(e.problem, e.solution_text).labels)"

Departures from / guesses beyond the paper: ArithChain itself is thinkrl's invention (the paper trains
on DeepScaleR-40K). The default sizes (values <= 99, add/sub operands 1-30, mul/div operands 2-5,
exact division, 2-6 operations) and flaw rates (p_err 0.15, p_reflect 0.5, p_recheck 0.1) come from a
prototype in which a 0.66M-parameter model learned the task in 5 minutes on CPU. The operation weights
(equal) and the wrong-value distribution (near miss +-1..10, or a digit slip) are guesses. The oracle's
rules for cases the paper leaves open are documented on `oracle_label`.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace

from thinkrl.errors import ThinkrlError
from thinkrl.steps import split_steps

# ---------------------------------------------------------------------------------------------------
# Operations: variants are functions in a dict.

OPS: tuple[str, ...] = ("add", "sub", "mul", "div")
OP_SYMBOL: dict[str, str] = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
OP_PHRASE: dict[str, str] = {"add": "Add {}.", "sub": "Subtract {}.", "mul": "Multiply by {}.", "div": "Divide by {}."}
# Symbols accepted when parsing model text (the corpus only ever writes the ASCII ones).
_SYMBOL_OP: dict[str, str] = {"+": "add", "-": "sub", "*": "mul", "/": "div",
                              "\u2212": "sub", "\u00d7": "mul", "\u00f7": "div"}


def _div(a: int, b: int) -> int | None:
    return a // b if b != 0 and a % b == 0 else None  # exact integer division only


_APPLY: dict[str, Callable[[int, int], int | None]] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": _div,
}


def apply_op(value: int, op: str, operand: int) -> int | None:
    """`value op operand`, or None when the division is inexact or by zero (or the op is unknown)."""
    fn = _APPLY.get(op)
    return None if fn is None else fn(value, operand)


def format_equation(lhs: int, op: str, rhs: int, result: int) -> str:
    """One solution step: `17 + 28 = 45`."""
    return f"{lhs} {OP_SYMBOL[op]} {rhs} = {result}"


def format_answer(value: int) -> str:
    """The answer part: `The answer is \\boxed{63}.`"""
    return f"The answer is \\boxed{{{value}}}."


# ---------------------------------------------------------------------------------------------------
# Problems


@dataclass(frozen=True)
class ArithConfig:
    """How ArithChain problems are drawn. Defaults: the prototype a 0.66M model learned in 5 min on CPU."""

    min_ops: int = field(default=2, metadata={"help": "fewest operations in a chain"})
    max_ops: int = field(default=6, metadata={"help": "most operations in a chain (length is uniform)"})
    max_value: int = field(default=99, metadata={"help": "every running value stays in [0, max_value]"})
    start_min: int = field(default=1, metadata={"help": "smallest start value"})
    start_max: int | None = field(default=None, metadata={"help": "largest start value (None: max_value)"})
    addsub_min: int = field(default=1, metadata={"help": "smallest operand of Add/Subtract"})
    addsub_max: int = field(default=30, metadata={"help": "largest operand of Add/Subtract"})
    muldiv_min: int = field(default=2, metadata={"help": "smallest operand of Multiply/Divide"})
    muldiv_max: int = field(default=5, metadata={"help": "largest operand of Multiply/Divide"})
    op_weights: tuple[float, float, float, float] = field(
        default=(1.0, 1.0, 1.0, 1.0),
        metadata={"help": "relative weights of (add, sub, mul, div) among the ops feasible at a step"},
    )

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ThinkrlError(f"ArithConfig: expected {what}, got {self}")

        need(0 <= self.min_ops <= self.max_ops, "0 <= min_ops <= max_ops")
        need(self.max_value >= 1, "max_value >= 1")
        need(0 <= self.start_min <= self.start_hi <= self.max_value, "0 <= start_min <= start_max <= max_value")
        need(1 <= self.addsub_min <= self.addsub_max, "1 <= addsub_min <= addsub_max")
        need(1 <= self.muldiv_min <= self.muldiv_max, "1 <= muldiv_min <= muldiv_max")
        need(len(self.op_weights) == len(OPS), f"{len(OPS)} op_weights (add, sub, mul, div)")
        need(all(w >= 0 for w in self.op_weights) and sum(self.op_weights) > 0,
             "non-negative op_weights with a positive sum")

    @property
    def start_hi(self) -> int:
        """The resolved largest start value."""
        return self.max_value if self.start_max is None else self.start_max

    def operand_range(self, op: str) -> range:
        """The operands op may draw from."""
        if op in ("add", "sub"):
            return range(self.addsub_min, self.addsub_max + 1)
        return range(self.muldiv_min, self.muldiv_max + 1)


@dataclass(frozen=True)
class ArithProblem:
    """One chain. `answer` is the last running value; `question` is the exact prompt text."""

    problem_id: str
    start: int
    ops: tuple[tuple[str, int], ...]  # (n_ops,) of (op name in OPS, operand)
    answer: int
    question: str

    @property
    def values(self) -> tuple[int, ...]:
        """(n_ops + 1,) running values: values[0] = start, values[k + 1] = after op k, values[-1] = answer."""
        out = [self.start]
        for op, b in self.ops:
            v = apply_op(out[-1], op, b)
            if v is None:
                raise ThinkrlError(f"ArithProblem {self.problem_id}: {out[-1]} {OP_SYMBOL[op]} {b} is not exact")
            out.append(v)
        return tuple(out)


def format_question(start: int, ops: Sequence[tuple[str, int]]) -> str:
    """`Start at 17. Add 28. Multiply by 3. What is the result?`"""
    parts = [f"Start at {start}."] + [OP_PHRASE[op].format(b) for op, b in ops] + ["What is the result?"]
    return " ".join(parts)


def _feasible_operands(value: int, op: str, cfg: ArithConfig) -> list[int]:
    """Operands of op that keep the value an integer in [0, max_value]."""
    out = []
    for b in cfg.operand_range(op):
        v = apply_op(value, op, b)
        if v is not None and 0 <= v <= cfg.max_value:
            out.append(b)
    return out


def _draw_chain(rng: random.Random, cfg: ArithConfig) -> tuple[int, list[tuple[str, int]], int] | None:
    """(start, ops, answer), or None at a dead end (no op keeps the value in bounds)."""
    n_ops = rng.randint(cfg.min_ops, cfg.max_ops)
    start = rng.randint(cfg.start_min, cfg.start_hi)
    value, ops = start, []
    for _ in range(n_ops):
        # Instead of retrying blindly, draw the op among those with at least one feasible operand
        # (by weight), then the operand uniformly among the feasible ones: same support, always succeeds
        # when add or sub is allowed (some value +- 1 is always in range).
        options = [(op, w, _feasible_operands(value, op, cfg))
                   for op, w in zip(OPS, cfg.op_weights, strict=True) if w > 0]
        options = [o for o in options if o[2]]
        if not options:
            return None
        op, _, operands = rng.choices(options, weights=[w for _, w, _ in options])[0]
        b = rng.choice(operands)
        value = apply_op(value, op, b)
        ops.append((op, b))
    return start, ops, value


def _draw_problem(rng: random.Random, problem_id: str, cfg: ArithConfig, attempts: int = 1000) -> ArithProblem:
    for _ in range(attempts):  # only configs without add/sub can hit a dead end and redraw the chain
        chain = _draw_chain(rng, cfg)
        if chain is not None:
            start, ops, answer = chain
            return ArithProblem(problem_id, start, tuple(ops), answer, format_question(start, ops))
    raise ThinkrlError(f"ArithConfig: no chain within bounds in {attempts} attempts (allow add or sub?): {cfg}")


def generate_problems(n: int, seed: int, config: ArithConfig = ArithConfig()) -> list[ArithProblem]:
    """n problems, deterministic for (seed, config). Problem i has id `arith-s{seed}-{i:06d}` and its own
    `random.Random` derived from (seed, i), so a longer list extends a shorter one (prefix-stable)."""
    if n < 0:
        raise ThinkrlError(f"generate_problems: expected n >= 0, got {n}")
    return [_draw_problem(random.Random(f"thinkrl.arith:{seed}:{i}"), f"arith-s{seed}-{i:06d}", config)
            for i in range(n)]


_NUM_Q = r"([0-9]{1,12})"
_Q_START = re.compile(rf"\s*Start at {_NUM_Q}\.")
_Q_OP = re.compile(rf"\s*(?:(Add|Subtract) {_NUM_Q}|(Multiply|Divide) by {_NUM_Q})\.")
_Q_END = re.compile(r"\s*What is the result\?\s*")
_Q_WORD_OP = {"Add": "add", "Subtract": "sub", "Multiply": "mul", "Divide": "div"}


def problem_from_question(question: str, problem_id: str | None = None) -> ArithProblem | None:
    """Parse a question written by `format_question` back into a problem; None if it is not one (or a
    division in it is inexact). Without problem_id the id is `arith-q` + a hash of the question."""
    if not isinstance(question, str):
        return None
    m = _Q_START.match(question)
    if m is None:
        return None
    start, pos, ops = int(m.group(1)), m.end(), []
    while (m := _Q_OP.match(question, pos)) is not None:
        word, num = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        ops.append((_Q_WORD_OP[word], int(num)))
        pos = m.end()
    if _Q_END.fullmatch(question, pos) is None:
        return None
    value = start
    for op, b in ops:
        value = apply_op(value, op, b)
        if value is None:
            return None
    pid = problem_id or "arith-q" + hashlib.sha256(question.encode()).hexdigest()[:12]
    return ArithProblem(pid, start, tuple(ops), value, question)


def canonical_solution(problem: ArithProblem) -> str:
    """The clean solution: one equation per step, blank-line separated, then the answer line."""
    vals = problem.values
    steps = [format_equation(vals[k], op, b, vals[k + 1]) for k, (op, b) in enumerate(problem.ops)]
    return "\n\n".join(steps + [format_answer(problem.answer)])


# ---------------------------------------------------------------------------------------------------
# Flawed warm-start corpus

ROLES = ("ok", "carried", "recheck", "caught_error", "reflection", "uncaught_error")
# ok: a right step on the right value; carried: right arithmetic on a value an uncaught error made wrong;
# recheck: `Check: ...` after an ok/carried step; caught_error: a wrong result followed by its reflection;
# reflection: `Wait, ... , not X.`; uncaught_error: a wrong result carried to the end.


@dataclass(frozen=True)
class CorpusConfig:
    """Flaw rates of the warm-start corpus (prototype: ~75% of answers correct, ~26% with a reflection)."""

    p_err: float = field(default=0.15, metadata={"help": "probability that a step writes a wrong result"})
    p_reflect: float = field(
        default=0.5, metadata={"help": "probability that a wrong result is caught at once by a reflection"})
    p_recheck: float = field(
        default=0.1, metadata={"help": "probability of a redundant `Check:` step after a right step"})
    p_digit_slip: float = field(
        default=0.3, metadata={"help": "share of wrong results that are digit slips (else near misses)"})
    near_miss_max: int = field(default=10, metadata={"help": "a near miss is the truth +- 1..near_miss_max"})

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.startswith("p_") and not 0.0 <= v <= 1.0:
                raise ThinkrlError(f"CorpusConfig.{f.name}: expected a probability in [0, 1], got {v}")
        if self.near_miss_max < 1:
            raise ThinkrlError(f"CorpusConfig.near_miss_max: expected >= 1, got {self.near_miss_max}")


@dataclass(frozen=True)
class CorpusExample:
    """One corpus solution with the generator's own ground truth."""

    problem: ArithProblem
    solution_text: str
    is_correct: bool  # final answer == problem.answer
    has_reflection: bool
    step_roles: tuple[str, ...]  # (n_steps,) one of ROLES per step; a reflection fixes the step before it

    @property
    def n_steps(self) -> int:
        return len(self.step_roles)


def _near_misses(truth: int, cfg: CorpusConfig) -> list[int]:
    return [truth + d for d in range(-cfg.near_miss_max, cfg.near_miss_max + 1) if d != 0 and truth + d >= 0]


def _digit_slips(truth: int) -> list[int]:
    """Adjacent digits swapped, or one digit off by one (no leading zero)."""
    s, out = str(truth), set()
    for i in range(len(s) - 1):
        t = s[:i] + s[i + 1] + s[i] + s[i + 2:]
        if t[0] != "0":
            out.add(int(t))
    for i, ch in enumerate(s):
        for d in (int(ch) - 1, int(ch) + 1):
            if 0 <= d <= 9 and not (i == 0 and d == 0 and len(s) > 1):
                out.add(int(s[:i] + str(d) + s[i + 1:]))
    out.discard(truth)
    return sorted(out)


def _wrong_value(truth: int, rng: random.Random, cfg: CorpusConfig, forbid: int,
                 rest: Sequence[tuple[str, int]]) -> int | None:
    """A plausible wrong result: non-negative, != truth, != forbid, and keeping the ops in rest exact and
    non-negative; None if there is none."""
    kinds = [_digit_slips, lambda t: _near_misses(t, cfg)]
    if rng.random() >= cfg.p_digit_slip:
        kinds.reverse()
    for kind in kinds:
        cands = [w for w in kind(truth) if w not in (truth, forbid) and w >= 0 and _chain_ok(w, rest)]
        if cands:
            return rng.choice(cands)
    return None


def _chain_ok(value: int, ops: Sequence[tuple[str, int]]) -> bool:
    """Whether the remaining ops, applied to value, stay exact and non-negative."""
    for op, b in ops:
        value = apply_op(value, op, b)
        if value is None or value < 0:
            return False
    return True


def _flawed_steps(problem: ArithProblem, rng: random.Random, cfg: CorpusConfig) -> tuple[list[str], list[str], int]:
    """(step texts, step roles, final value) of one flawed solution.

    An uncaught wrong value must keep the rest of the chain exact and non-negative (later steps compute
    correctly from it). No wrong value equals the true running value, so an error never lands back on
    track by luck: the answer is correct exactly when no error went uncaught. If no wrong value fits,
    the step is written correctly."""
    true_vals = problem.values
    cur, steps, roles, uncaught = problem.start, [], [], False
    for k, (op, b) in enumerate(problem.ops):
        truth = apply_op(cur, op, b)  # exact: guaranteed by _chain_ok on any earlier uncaught error
        if rng.random() < cfg.p_err:
            caught = rng.random() < cfg.p_reflect
            rest = () if caught else problem.ops[k + 1:]  # only an uncaught value flows on
            wrong = _wrong_value(truth, rng, cfg, true_vals[k + 1], rest)
            if wrong is not None:
                steps.append(format_equation(cur, op, b, wrong))
                if caught:
                    roles += ["caught_error", "reflection"]
                    steps.append(f"Wait, {format_equation(cur, op, b, truth)}, not {wrong}.")
                    cur = truth
                else:
                    roles.append("uncaught_error")
                    cur, uncaught = wrong, True
                continue
        steps.append(format_equation(cur, op, b, truth))
        roles.append("carried" if uncaught else "ok")
        if rng.random() < cfg.p_recheck:
            steps.append(f"Check: {format_equation(cur, op, b, truth)}.")
            roles.append("recheck")
        cur = truth
    return steps, roles, cur


def flawed_solution(problem: ArithProblem, rng: random.Random, cfg: CorpusConfig = CorpusConfig()) -> str:
    """A solution with corpus flaws drawn from rng (see CorpusConfig), in the canonical text format."""
    steps, _, final = _flawed_steps(problem, rng, cfg)
    return "\n\n".join(steps + [format_answer(final)])


def make_corpus(n: int, seed: int, arith_cfg: ArithConfig = ArithConfig(),
                corpus_cfg: CorpusConfig = CorpusConfig()) -> list[CorpusExample]:
    """n flawed solutions of generate_problems(n, seed, arith_cfg); deterministic and prefix-stable
    (example i draws its flaws from its own rng derived from (seed, i))."""
    out = []
    for i, p in enumerate(generate_problems(n, seed, arith_cfg)):
        steps, roles, final = _flawed_steps(p, random.Random(f"thinkrl.arith.corpus:{seed}:{i}"), corpus_cfg)
        text = "\n\n".join(steps + [format_answer(final)])
        out.append(CorpusExample(p, text, final == p.answer, "reflection" in roles, tuple(roles)))
    return out


def corpus_stats(examples: Sequence[CorpusExample]) -> dict[str, float]:
    """Shares of correct answers, reflections, re-checks and uncaught errors; mean steps and ops."""
    n = len(examples)
    if n == 0:
        return {"n": 0, "share_correct": 0.0, "share_reflection": 0.0, "share_recheck": 0.0,
                "share_uncaught": 0.0, "mean_steps": 0.0, "mean_ops": 0.0}
    return {
        "n": n,
        "share_correct": sum(e.is_correct for e in examples) / n,
        "share_reflection": sum(e.has_reflection for e in examples) / n,
        "share_recheck": sum("recheck" in e.step_roles for e in examples) / n,
        "share_uncaught": sum("uncaught_error" in e.step_roles for e in examples) / n,
        "mean_steps": sum(e.n_steps for e in examples) / n,
        "mean_ops": sum(len(e.problem.ops) for e in examples) / n,
    }


# ---------------------------------------------------------------------------------------------------
# The answer part (steps and the answer part come from the project's splitter, thinkrl.steps)

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_INT = re.compile(r"\s*(-?[0-9]{1,15})\s*\.?\s*")


def extract_boxed_int(text: str) -> int | None:
    """The integer in the last `\\boxed{...}` of text (`\\boxed{ 63 }`, `\\boxed{-4}`), else None."""
    found = _BOXED.findall(text)
    if not found:
        return None
    m = _INT.fullmatch(found[-1])
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------------
# Oracle step labeller

LABEL_CORRECT, LABEL_INCORRECT = "correct", "incorrect"  # steps of a solution with a correct answer
LABEL_MATCHED, LABEL_UNMATCHED = "matched", "unmatched"  # steps of a solution with a wrong/missing answer
STEP_KINDS = ("equation", "reflection", "recheck", "other")

_N = r"(-?[0-9]{1,15})"
_SYM = "([-+*/\u2212\u00d7\u00f7])"
_EQ = re.compile(rf"{_N}\s*{_SYM}\s*{_N}\s*=\s*{_N}")
_EQ_STEP = re.compile(rf"\s*{_N}\s*{_SYM}\s*{_N}\s*=\s*{_N}\s*\.?\s*")
_NOT = re.compile(r"\s*,?\s*not\s+(-?[0-9]{1,15})", re.IGNORECASE)
_REFLECT_CUE = re.compile(r"\s*(wait|oops|hold on|actually|hmm|no,|i made a mistake)", re.IGNORECASE)
_CHECK_CUE = re.compile(r"\s*(check|verify|let me (re-?)?check|double-check|re-?check)", re.IGNORECASE)


@dataclass(frozen=True)
class StepRecord:
    """One step of a completion as the oracle sees it. completion[char_start:char_end] == text."""

    idx: int
    char_start: int
    char_end: int
    text: str
    kind: str  # one of STEP_KINDS
    lhs: int | None = None  # parsed `lhs op rhs = result`, None where the step has no equation
    op: str | None = None  # op name in OPS
    rhs: int | None = None
    result: int | None = None
    not_value: int | None = None  # a reflection's rejected value (`..., not 125.`), if stated
    op_idx: int | None = None  # index into problem.ops this step applies; None: unaligned / no equation
    arith_ok: bool | None = None  # result == lhs op rhs (exact); None without an equation
    value_ok: bool | None = None  # result == true running value at the step's chain position
    fixes: int | None = None  # a reflection: idx of the step it corrects
    label: str = ""  # correct / incorrect / matched / unmatched


@dataclass(frozen=True)
class OracleLabels:
    """The oracle's verdict on one completion."""

    problem_id: str
    final_correct: bool  # pred_value == problem.answer
    pred_value: int | None  # integer in the answer part's last \boxed{}, None if missing/not an integer
    steps: tuple[StepRecord, ...]  # (n_steps,) in text order, each with its label
    answer_span: tuple[int, int] | None  # (char_start, char_end) of the answer part, None if there is none

    @property
    def labels(self) -> list[str]:
        """(n_steps,) the step labels."""
        return [s.label for s in self.steps]


def _parse_step(idx: int, start: int, end: int, text: str) -> StepRecord:
    """Kind and equation of one step (labels and checks come later)."""
    m = _EQ_STEP.fullmatch(text)
    if m is not None:
        kind = "equation"
    else:
        m = _EQ.search(text)
        if m is not None and (_REFLECT_CUE.match(text) or _NOT.match(text, m.end())):
            kind = "reflection"
        elif m is not None and _CHECK_CUE.match(text):
            kind = "recheck"
        else:  # no equation, or one inside prose: no values; a bare cue is a reflection without values
            return StepRecord(idx, start, end, text, "reflection" if _REFLECT_CUE.match(text) else "other")
    lhs, sym, rhs, res = m.groups()
    not_m = _NOT.match(text, m.end()) if kind == "reflection" else None
    return StepRecord(idx, start, end, text, kind, int(lhs), _SYMBOL_OP[sym], int(rhs), int(res),
                      int(not_m.group(1)) if not_m else None)


def _nearest(ks: Sequence[int], pref: int) -> int | None:
    """The first k >= pref, else the last k < pref."""
    forward = [k for k in ks if k >= pref]
    if forward:
        return min(forward)
    return max(ks) if ks else None


def _align(s: StepRecord, pref: int, held: int, problem: ArithProblem, values: Sequence[int]) -> int | None:
    """Which problem op the equation of s applies (see oracle_label, rule 2)."""
    cands = [k for k, (op, b) in enumerate(problem.ops) if op == s.op and b == s.rhs]
    if s.lhs != held:
        exact = [k for k in cands if values[k] == s.lhs]
        if exact:
            return _nearest(exact, pref)
    return _nearest(cands, pref)


def _find_fixed(done: Sequence[StepRecord], r: StepRecord) -> int | None:
    """The step a reflection corrects (see oracle_label, rule 3)."""
    prior = [s for s in reversed(done) if s.result is not None]  # nearest first
    key = (r.lhs, r.op, r.rhs)
    if r.not_value is not None:
        tests = [lambda s: (s.lhs, s.op, s.rhs) == key and s.result == r.not_value,
                 lambda s: (s.op, s.rhs) == (r.op, r.rhs) and s.result == r.not_value,
                 lambda s: s.result == r.not_value]
    else:
        tests = [lambda s: (s.lhs, s.op, s.rhs) == key and s.result != r.result,
                 lambda s: (s.op, s.rhs) == (r.op, r.rhs) and s.result != r.result]
    tests.append(lambda s: (s.lhs, s.op, s.rhs) == key)
    for test in tests:
        for s in prior:
            if test(s):
                return s.idx
    return None


def _trace(problem: ArithProblem, steps: list[StepRecord]) -> tuple[list[StepRecord], list[bool]]:
    """Align, check and link every step; also whether the held value is right after each step."""
    values = problem.values
    pos, held, held_ok = 0, problem.start, True  # chain position, value carried, carried value right?
    done: list[StepRecord] = []
    pos_before: list[int] = []  # (n_steps,) chain position before each step
    held_ok_after: list[bool] = []  # (n_steps,)
    for s in steps:
        pos_before.append(pos)
        if s.result is None:  # no equation: carries the held value on unchanged
            done.append(s)
            held_ok_after.append(held_ok)
            continue
        fixes, base, k = None, pos, None
        if s.kind == "reflection":
            fixes = _find_fixed(done, s)
            if fixes is not None:
                base = pos_before[fixes]
                f = done[fixes]
                if f.op_idx is not None and problem.ops[f.op_idx] == (s.op, s.rhs):
                    k = f.op_idx
            if k is None:
                k = _align(s, base, held, problem, values)
        elif s.kind == "recheck":
            prev = next((d for d in reversed(done) if d.result is not None), None)
            if prev is not None and prev.op_idx is not None and (prev.lhs, prev.op, prev.rhs) == (s.lhs, s.op, s.rhs):
                k = prev.op_idx
            else:
                k = _align(s, max(pos - 1, 0), held, problem, values)
        else:
            k = _align(s, pos, held, problem, values)
        pos = base if k is None else k + 1
        value_ok = s.result == values[pos]
        arith_ok = apply_op(s.lhs, s.op, s.rhs) == s.result
        done.append(replace(s, op_idx=k, arith_ok=arith_ok, value_ok=value_ok, fixes=fixes))
        held, held_ok = s.result, value_ok
        held_ok_after.append(held_ok)
    return done, held_ok_after


def _labels_correct(steps: Sequence[StepRecord], held_ok_after: Sequence[bool]) -> list[str]:
    bad, prev_ok = set(), True
    for i, s in enumerate(steps):
        if not held_ok_after[i] or not prev_ok or s.arith_ok is False:
            bad.add(i)  # carries a wrong value, restores the right one (the correction), or a wrong sum
        prev_ok = held_ok_after[i]
    for s in steps:
        if s.fixes is not None and (steps[s.fixes].arith_ok is False or steps[s.fixes].value_ok is False):
            bad.update(range(s.fixes, s.idx + 1))  # error source .. reflection
    return [LABEL_INCORRECT if i in bad else LABEL_CORRECT for i in range(len(steps))]


def _labels_wrong(steps: Sequence[StepRecord], held_ok_after: Sequence[bool]) -> list[str]:
    n = len(steps)
    if n == 0 or held_ok_after[-1]:
        return [LABEL_UNMATCHED] * n  # the value the chain ends on is right: no step fed the wrong answer
    start = n - 1
    while start > 0 and not held_ok_after[start - 1]:
        start -= 1  # the uncorrected error source: where the final run of wrong values begins
    superseded = {s.fixes for s in steps if s.fixes is not None and steps[s.fixes].result != s.result}
    return [LABEL_MATCHED if i >= start and i not in superseded else LABEL_UNMATCHED for i in range(n)]


def oracle_label(problem: ArithProblem, completion: str) -> OracleLabels:
    """Label every step of any completion exactly (DESIGN §2 protocol, truth from the problem). Never raises.

    1. Steps: exactly the project's default splitter, `thinkrl.steps.split_steps(text, "blank")`
       (blank-line pieces, stripped, exact spans; the last piece is the answer part if it holds
       `\\boxed`/`The answer is`/..., and is not a step). pred_value: the answer part's last \\boxed{int}.
       Kind: `equation` if the step is exactly `a op b = c` (optional final period); `reflection` if it
       holds an equation and starts with a cue (Wait, Oops, Hold on, Actually, Hmm, No,) or states
       `, not X` after it; `recheck` if it starts with Check/Verify and holds an equation; a cue with no
       equation is a `reflection` without values; anything else is `other` (no values, never aligned).
    2. Alignment: the chain position starts at 0 with the start value held. An equation applies the
       problem op with the same operator and operand; if its lhs is not the held value but is the true
       input of such an op, that op is taken (a repeated or redone step); otherwise the first such op at
       or after the position, else the last before it. A recheck of the previous step takes that step's
       op; a reflection takes the op of the step it fixes (else aligns from that step's position).
       After the step the position is op + 1, or (unaligned: no such op) unchanged, resp. rewound to the
       fixed step's position for a reflection. value_ok: result == true value at the new position (a
       skipped op or a wrong operand gives a wrong value). The held value becomes the result; steps
       without an equation keep the held value and its rightness.
    3. fixes (reflections): the nearest earlier step with an equation that has the same lhs/op/operand
       and the rejected value X as result; else same op/operand and result X; else result X (without
       X: same lhs/op/operand, resp. op/operand, and a different result); else the same lhs/op/operand;
       else None.
    4. Correct final answer (pred == answer): `incorrect` for every step while the held value is wrong,
       the step that makes it right again (a reflection, or a silent correction), any step whose own
       arithmetic is wrong (a slip that got back on track), and the whole interval from a wrong fixed
       step to its reflection; everything else `correct` (no errors: all correct).
    5. Wrong or missing final answer: if the chain ends holding a wrong value, `matched` for the final
       run of steps with a wrong held value, from the uncorrected error source to the end (reflections
       and re-checks that carry the wrong value, and `other` steps inside the run, included), except
       steps a reflection corrected (their own error did not feed the answer); `unmatched` for all
       other steps. If it ends holding the right value (a wrong boxed number, a chain cut short, no
       answer), every step is `unmatched`: the mistake is in the answer part, which is not a step.
    """
    text = completion if isinstance(completion, str) else ""
    pieces, answer_span = split_steps(text, "blank")
    pred = extract_boxed_int(text[answer_span[0]:answer_span[1]]) if answer_span else None
    final_correct = pred is not None and pred == problem.answer
    parsed = [_parse_step(p.idx, p.char_start, p.char_end, p.text) for p in pieces]
    steps, held_ok_after = _trace(problem, parsed)
    labels = (_labels_correct if final_correct else _labels_wrong)(steps, held_ok_after)
    steps_t = tuple(replace(s, label=lab) for s, lab in zip(steps, labels, strict=True))
    return OracleLabels(problem.problem_id, final_correct, pred, steps_t, answer_span)

