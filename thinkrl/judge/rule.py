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

from thinkrl.judge.protocol import CORRECT, INCORRECT, MATCHED, UNKNOWN, UNMATCHED, JudgeRequest, Verdict

# ---------------------------------------------------------------------------------------------------
# Bounds: adversarial text costs at most linear time and never builds huge numbers.

MAX_STEP_CHARS = 20_000  # characters of one step analysed (the rest is ignored)
MAX_EQS = 64  # equations kept per step
MAX_SIDE_TOKENS = 256  # tokens in one side of an equation
MAX_DEPTH = 40  # parenthesis / unary nesting
MAX_DIGITS = 40  # digits of one written number (longer: unverifiable)
MAX_BITS = 4096  # bits of any numerator / denominator during evaluation
MAX_EXPONENT = 4096
LOOKBACK = 256  # steps a reflection looks back for its error source
MAX_SCAN = 64  # candidates examined per lookup (producers, restatements)

# ---------------------------------------------------------------------------------------------------
# Text normalisation and tokens

_ANNOT = re.compile(r"<<([^<>]{0,400})>>")  # GSM8K calculator annotations
_TEXT_CMD = re.compile(r"\\(?:text|mathrm|textbf|mathbf|operatorname)\s*\{([^{}]*)\}")
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_SUBS: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"\\(?:times|cdot|ast)(?![A-Za-z])"), " * "),
    (re.compile(r"\\div(?![A-Za-z])"), " / "),
    (re.compile(r"\\(?:left|right)(?![A-Za-z])"), " "),
    (re.compile(r"\\approx(?![A-Za-z])"), " \u2248 "),
    (re.compile(r"\\(?:boxed|fbox)\s*"), " "),
    (re.compile(r"\\%"), "%"),
    (re.compile(r"\\[,;:! ]"), ""),
    (re.compile(r"\\\$|[$\u20ac\u00a3]"), " "),
)
_NUM_RE = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
_TOK = re.compile(
    r"(?P<mixed>\d{1,6} \d{1,6}/\d{1,6})(?![\d.,/])"  # a mixed number: 1 1/2
    rf"|(?P<num>{_NUM_RE})(?P<pct>\s?%)?"
    r"|(?P<op>\*\*|[-+*/^\u2212\u2013\u00d7\u00f7\u00b7\u22c5\u2219\u2715\u2217\u2215])"
    r"|(?P<lp>[(\[{])|(?P<rp>[)\]}])|(?P<eq>=|\u2248)"
    r"|(?P<word>[^\W\d_]+)|(?P<ws>\s+)|(?P<other>.)",
    re.S,
)
_OP_NORM = {"\u2212": "-", "\u2013": "-", "\u00d7": "*", "\u00f7": "/", "\u00b7": "*", "\u22c5": "*",
            "\u2219": "*", "\u2715": "*", "\u2217": "*", "\u2215": "/", "**": "^"}
_WORD_OPS = {"plus": "+", "minus": "-", "times": "*"}


@dataclass(frozen=True)
class _Tok:
    kind: str  # num | op | lp | rp | eq | brk
    val: object = None  # num: (Fraction | None, is_pct, decimals); op: + - * / ^; eq: "=" or "~" (≈) or "w" (is)
    text: str = ""


def parse_number(s: str) -> Fraction | None:
    """A written number (`1,234.50`, `.5`, `-3`) as a Fraction; None past MAX_DIGITS or unparseable."""
    s = s.replace(",", "").strip()
    neg = s.startswith("-")
    s = s.lstrip("-")
    whole, _, frac = s.partition(".")
    if not (whole or frac) or len(whole) > MAX_DIGITS or len(frac) > MAX_DIGITS:
        return None
    if len(whole) > 1 and whole.startswith("0"):
        return None  # `0900`, `0130`: a clock time or a code, not a quantity
    if not (whole.isdigit() or whole == "") or not (frac.isdigit() or frac == "") or not s.isascii():
        return None
    v = Fraction(s)
    return -v if neg else v


def _normalize(text: str) -> str:
    text = _TEXT_CMD.sub(r" \1 ", text)
    for _ in range(4):  # nested \frac, innermost first
        new = _FRAC.sub(r"((\1)/(\2))", text)
        if new == text:
            break
        text = new
    for pat, rep in _SUBS:
        text = pat.sub(rep, text)
    return text


def _raw_tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    for m in _TOK.finditer(text):
        if m.group("mixed") is not None:
            whole, _, frac = m.group("mixed").partition(" ")
            a, b = (int(x) for x in frac.split("/"))
            if 0 < a < b:
                out.append(_Tok("num", (int(whole) + Fraction(a, b), False, 0), m.group("mixed")))
            else:  # `5 12/4`: two numbers after all
                out.extend(_raw_tokens(whole + " ") + _raw_tokens(frac))
        elif m.group("num") is not None:
            s = m.group("num")
            out.append(_Tok("num", (parse_number(s), m.group("pct") is not None, len(s.partition(".")[2])), s))
        elif m.group("op") is not None:
            o = m.group("op")
            out.append(_Tok("op", _OP_NORM.get(o, o), o))
        elif m.group("lp") is not None:
            out.append(_Tok("lp", None, "("))
        elif m.group("rp") is not None:
            out.append(_Tok("rp", None, ")"))
        elif m.group("eq") is not None:
            out.append(_Tok("eq", "=" if m.group("eq") == "=" else "~", m.group("eq")))
        elif m.group("word") is not None:
            out.append(_Tok("word", m.group("word").lower(), m.group("word")))
        elif m.group("other") is not None:
            out.append(_Tok("brk", None, m.group("other")))
    return out


def _tokens(text: str) -> list[_Tok]:
    """Tokens with words turned into operators where they act as one, units dropped, other words breaks."""
    raw = _raw_tokens(text)
    out: list[_Tok] = []
    i, n = 0, len(raw)
    while i < n:
        t = raw[i]
        if t.kind != "word":
            out.append(t)
            i += 1
            continue
        w, prev = t.val, out[-1] if out else None
        nxt = raw[i + 1] if i + 1 < n else None
        after_val = prev is not None and prev.kind in ("num", "rp")
        if w in _WORD_OPS:
            out.append(_Tok("op", _WORD_OPS[w], w))
        elif w in ("multiplied", "divided") and nxt is not None and nxt.val == "by":
            out.append(_Tok("op", "*" if w == "multiplied" else "/", w))
            i += 1
        elif w == "x" and after_val and nxt is not None and nxt.kind in ("num", "lp"):
            out.append(_Tok("op", "*", w))
        elif w == "equals":
            out.append(_Tok("eq", "=", w))
        elif w == "is" and after_val:
            if nxt is not None and nxt.val == "equal" and i + 2 < n and raw[i + 2].val == "to":
                i += 2
            out.append(_Tok("eq", "w", w))
        elif w == "of" and prev is not None and prev.kind == "num" and prev.val[1]:
            out.append(_Tok("op", "*", w))  # 20% of 50
        elif prev is not None and prev.kind == "num" and len(w) == 1:
            out[-1] = _Tok("brk", None, prev.text)  # `2S`, `5 A`: a variable's coefficient, not a value
            out.append(_Tok("brk", None, t.text))
        elif prev is not None and prev.kind == "num" and (units := _unit_words(raw, i)):
            i += units  # `5 apples + 3 apples = 8 apples`, `72 cubic feet * 3/4`: units are dropped
            continue
        else:
            out.append(_Tok("brk", None, t.text))
        i += 1
    return out


_OP_WORDS = frozenset({"x", "times", "plus", "minus", "multiplied", "divided", "equals"})


def _unit_words(raw: Sequence[_Tok], i: int) -> int:
    """How many words from raw[i] (at most 3, each 2+ letters) stand between a number and an operator."""
    j = i
    while j < len(raw) and j - i < 3 and raw[j].kind == "word" and len(raw[j].val) > 1 \
            and raw[j].val not in _OP_WORDS:
        j += 1
    if j < len(raw) and (raw[j].kind in ("op", "eq") or (raw[j].kind == "word" and raw[j].val in _OP_WORDS)):
        return j - i
    return 0


# ---------------------------------------------------------------------------------------------------
# Expressions: recursive descent into a small tuple tree, evaluated with Fractions under bounds


class _Fail(Exception):
    pass


class _Parser:
    """expr := term (('+'|'-') term)* ; term := unary (('*'|'/'|implicit) unary)* ;
    unary := ('-'|'+') unary | power ; power := atom ('^' unary)? ; atom := num | '(' expr ')'"""

    def __init__(self, toks: Sequence[_Tok]):
        self.t, self.i, self.depth = toks, 0, 0

    def peek(self) -> _Tok | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def expr(self):
        node = self.term()
        while (p := self.peek()) is not None and p.kind == "op" and p.val in "+-":
            save = self.i
            self.i += 1
            try:
                node = ("bin", p.val, node, self.term())
            except _Fail:
                self.i = save
                break
        return node

    def term(self):
        node = self.unary()
        while (p := self.peek()) is not None:
            save = self.i
            if p.kind == "op" and p.val in "*/":
                self.i += 1
                op = p.val
            elif p.kind == "lp" and self.t[self.i - 1].kind in ("rp", "num"):
                op = "*"  # implicit multiplication: 2(3 + 4), (2)(3); not `(2) 3`, an enumeration
            else:
                break
            try:
                node = ("bin", op, node, self.unary())
            except _Fail:
                self.i = save
                break
        return node

    def unary(self):
        p = self.peek()
        if p is not None and p.kind == "op" and p.val in "+-":
            self.i += 1
            node = self.nested(self.unary)
            return ("neg", node) if p.val == "-" else node
        return self.power()

    def power(self):
        node = self.atom()
        p = self.peek()
        if p is not None and p.kind == "op" and p.val == "^":
            save = self.i
            self.i += 1
            try:
                node = ("bin", "^", node, self.nested(self.unary))
            except _Fail:
                self.i = save
        return node

    def atom(self):
        p = self.peek()
        if p is None:
            raise _Fail
        if p.kind == "num":
            self.i += 1
            return ("n", p.val)
        if p.kind == "lp":
            self.i += 1
            node = self.nested(self.expr)
            q = self.peek()
            if q is None or q.kind != "rp":
                raise _Fail
            self.i += 1
            return node
        raise _Fail

    def nested(self, fn):
        """fn() one nesting level deeper; past MAX_DEPTH the parse fails."""
        if self.depth >= MAX_DEPTH:
            raise _Fail
        self.depth += 1
        try:
            return fn()
        finally:
            self.depth -= 1


def _parse(toks: Sequence[_Tok]) -> tuple[object, int] | None:
    """(tree, tokens consumed) of the longest expression at the start of toks, None if there is none."""
    if not toks or len(toks) > MAX_SIDE_TOKENS:
        return None
    p = _Parser(toks)
    try:
        return p.expr(), p.i
    except _Fail:
        return None


def _small(v: Fraction) -> Fraction | None:
    return v if v.numerator.bit_length() <= MAX_BITS and v.denominator.bit_length() <= MAX_BITS else None


def _pow(x: Fraction, y: Fraction) -> Fraction | None:
    if y.denominator != 1 or abs(y) > MAX_EXPONENT or (x == 0 and y < 0):
        return None
    e = int(y)
    if max(x.numerator.bit_length(), x.denominator.bit_length()) * abs(e) > MAX_BITS:
        return None
    return x ** e


_BIN: dict[str, Callable[[Fraction, Fraction], Fraction | None]] = {
    "+": lambda x, y: x + y,
    "-": lambda x, y: x - y,
    "*": lambda x, y: x * y,
    "/": lambda x, y: x / y if y != 0 else None,
    "^": _pow,
}


def _eval(node, pct: bool) -> Fraction | None:
    """Value of a tree; `20%` is 0.2 when pct else 20. None: unverifiable (too big, division by zero)."""
    if node[0] == "n":
        v, is_pct, _ = node[1]
        return None if v is None else (v / 100 if pct and is_pct else v)
    if node[0] == "neg":
        v = _eval(node[1], pct)
        return None if v is None else -v
    _, op, a, b = node
    x = _eval(a, pct)
    y = _eval(b, pct) if x is not None else None
    if x is None or y is None:
        return None
    r = _BIN[op](x, y)
    return None if r is None else _small(r)


def _leaves(node) -> list[tuple]:
    """The number leaves of a tree, left to right (iterative: trees may be deep on one side)."""
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        if n[0] == "n":
            out.append(n[1])
        elif n[0] == "neg":
            stack.append(n[1])
        else:
            stack.extend((n[3], n[2]))
    return out


def _key(node) -> str:
    """Canonical text of a tree (`45*3`), to recognise a restated left-hand side."""
    parts, stack = [], [node]
    while stack:
        n = stack.pop()
        if isinstance(n, str):
            parts.append(n)
        elif n[0] == "n":
            v = n[1][0]
            parts.append(("?" if v is None else _fmt(v)) + ("%" if n[1][1] else ""))
        elif n[0] == "neg":
            stack.extend([")", n[1], "-("])
        else:
            stack.extend([")", n[3], n[1], n[2], "("])
    s = "".join(parts)
    return s[1:-1] if s.startswith("(") and s.endswith(")") else s


def _binops(node) -> int:
    return sum(1 for _ in _walk(node) if _[0] == "bin")


def _walk(node):
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        if n[0] == "neg":
            stack.append(n[1])
        elif n[0] == "bin":
            stack.extend((n[2], n[3]))


def _fmt(v: Fraction | None) -> str:
    if v is None:
        return "?"
    if v.denominator == 1:
        s = str(v.numerator)
    elif abs(v) < 10 ** 15 and v.denominator < 10 ** 15:
        s = f"{float(v):.6g}"
    else:
        s = str(v)
    return s if len(s) <= 40 else s[:18] + "..." + s[-18:]


# ---------------------------------------------------------------------------------------------------
# Equations


@dataclass(frozen=True)
class Equation:
    """One equation found in a step; `result` is the value of its last side as written."""

    text: str  # the sides as parsed, e.g. `45*3 = 125`
    key: str  # canonical first side, `45*3`
    inputs: tuple[Fraction, ...]  # numbers written on every side but the last (% ignored)
    first: Fraction | None  # the leftmost number of the first side
    result: Fraction | None
    expected: Fraction | None  # the value of the first side
    ok: bool | None  # arithmetic holds (None: unverifiable)
    simple: tuple[Fraction, str, Fraction] | None  # (a, op, b) when the first side is `a op b`


def _close(a: Fraction, b: Fraction, tol: Fraction) -> bool:
    return abs(a - b) <= tol


def _tol(node, approx: bool, other: Fraction) -> Fraction:
    tol = Fraction(0)
    if node[0] == "n" and node[1][2] > 0:  # a literal written with d decimals may be rounded
        tol = Fraction(1, 2 * 10 ** min(node[1][2], MAX_DIGITS)) + Fraction(1, 10 ** 12)
    if approx:
        tol = max(tol, abs(other) / 100, Fraction(1, 2))
    return tol


def _pair_ok(a, b, kind: str, last: bool, pct: bool) -> bool | None:
    x, y = _eval(a, pct), _eval(b, pct)
    if x is None or y is None:
        return None
    tol = max(_tol(b, kind == "~", x), _tol(a, kind == "~", y))
    if _close(x, y, tol):
        return True
    if not last and b[0] == "bin":  # running chain `3 + 4 = 7 + 5 = 12`: the next side starts from x
        lead = _leaves(b)[0]
        if lead[0] is not None and not lead[1] and lead[0] == x:
            return True
    return False


def _check(sides: Sequence, kinds: Sequence[str]) -> bool | None:
    verdicts = []
    for k in range(len(sides) - 1):
        last = k == len(sides) - 2
        got = [_pair_ok(sides[k], sides[k + 1], kinds[k], last, pct) for pct in (True, False)]
        verdicts.append(True if True in got else (None if None in got else False))
    if False in verdicts:
        return False
    return None if None in verdicts else True


def _make_eq(sides: list, kinds: list[str]) -> Equation | None:
    if len(sides) < 2 or not any(_binops(s) for s in sides[:-1]):
        return None  # `x = 5`, `45 = 45`: a statement, not a computation
    if kinds[0] == "w" and not _binops(sides[0]):
        return None  # `45 is 135`
    first_leaves = _leaves(sides[0])
    inputs = tuple(lf[0] for s in sides[:-1] for lf in _leaves(s) if lf[0] is not None)
    simple = None
    if sides[0][0] == "bin" and sides[0][1] in "+-*/" and sides[0][2][0] == "n" and sides[0][3][0] == "n":
        a, b = sides[0][2][1], sides[0][3][1]
        if a[0] is not None and b[0] is not None and not (a[1] or b[1]):
            simple = (a[0], sides[0][1], b[0])
    text = " = ".join(_key(s) for s in sides)
    return Equation(text, _key(sides[0]), inputs, first_leaves[0][0] if first_leaves else None,
                    _eval(sides[-1], False), _eval(sides[0], False), _check(sides, kinds), simple)


def _first_side(toks: list[_Tok], after_var: bool = False):
    """The expression ending just before `=`: the longest suffix of the run that parses completely
    (`(2) 3 + 4`, `**Step 1:** 17 + 28`, `) 3 + 4` -> `3 + 4`). None when an operator would be cut off
    (`S + 143 = ...`, `M - 3 = 5`: the left operand is a variable, the side is not all numbers); a leading
    minus is a sign unless the run follows a one-letter word (after_var)."""
    for start in range(max(0, len(toks) - MAX_SIDE_TOKENS), len(toks)):
        t = toks[start]
        if start > 0 and toks[start - 1].kind == "op" and toks[start - 1].text != "**":
            return None
        if t.kind in ("num", "lp") or (t.kind == "op" and t.val == "-" and not (start == 0 and after_var)):
            got = _parse(toks[start:])
            if got is not None and got[1] == len(toks) - start:
                return got[0]
    return None


def _equations_in(toks: list[_Tok]) -> list[Equation]:
    """Equations of a token list: runs between breaks, sides split at `=`."""
    out: list[Equation] = []
    run: list[_Tok] = []
    before: _Tok | None = None  # the break before the run
    for t in [*toks, _Tok("brk")]:
        if t.kind != "brk":
            run.append(t)
            continue
        if any(r.kind == "eq" for r in run):
            out.extend(_run_equations(run, before is not None and len(before.text) == 1 and before.text.isalpha()))
        run, before = [], t
        if len(out) >= MAX_EQS:
            break
    return out[:MAX_EQS]


def _run_equations(run: list[_Tok], after_var: bool) -> list[Equation]:
    parts: list[list[_Tok]] = [[]]
    kinds: list[str] = []
    for t in run:
        if t.kind == "eq":
            parts.append([])
            kinds.append(t.val)
        else:
            parts[-1].append(t)
    out: list[Equation] = []
    sides: list = []
    skinds: list[str] = []

    def flush():
        eq = _make_eq(sides, skinds[:len(sides) - 1])
        if eq is not None:
            out.append(eq)

    first = _first_side(parts[0], after_var)
    if first is not None:
        sides.append(first)
    for k, part in enumerate(parts[1:]):
        got = _parse(part)
        if sides and got is not None:
            skinds.append(kinds[k])
            sides.append(got[0])
            if got[1] == len(part):
                continue
        flush()  # this side does not parse fully: the chain ends here (with its parsed prefix)
        nxt = _first_side(part)
        sides, skinds = ([nxt] if nxt is not None else []), []
    flush()
    return out


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
    for m in _ANNOT.finditer(text):
        eqs.extend(_equations_in(_tokens(_normalize(m.group(1)))))
    prose = _normalize(_ANNOT.sub(" ", text))
    toks = _tokens(prose)
    seen = {e.result for e in eqs}  # a calculator annotation is the exact version of its prose equation
    for e in _equations_in(toks):
        if e.result not in seen or e.result is None:
            eqs.append(e)
    mentions = [t.val[0] for t in _raw_tokens(_normalize(text)) if t.kind == "num" and t.val[0] is not None]
    return StepInfo(idx, eqs[:MAX_EQS], mentions, bool(_NEG_CUE.search(text)), bool(_HES_CUE.search(text)),
                    bool(_CHECK_CUE.search(text)), _named_wrong(text),
                    _first_match((_NAMED_RIGHT,), text), truncated)


def final_value(text: str | None) -> Fraction | None:
    """The value of an answer string (`63`, `$18.00`, `\\frac{1}{2}`, `20%` as 20); None if none."""
    if not isinstance(text, str) or not text.strip():
        return None
    toks = [t for t in _tokens(_normalize(text[:2000])) if t.kind != "brk"]
    got = _parse(toks)
    if got is not None and got[1] == len(toks):
        v = _eval(got[0], False)
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
            return Reflection(j, hit[0], w, right, f"produced the rejected {_fmt(w)}")
        post = index.by_mention.get(w)
        i = next((i for i, _ in post.before(j, j - 1 - LOOKBACK)), None) if post is not None else None
        if i is not None:
            return Reflection(j, i, w, right, f"states the rejected {_fmt(w)}")
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
    return f"{e.text} is wrong ({_fmt(e.expected)})"


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
        fix = f"{_fmt(r.wrong)} -> {_fmt(r.right)}" if r.wrong is not None else "a correction"
        why[r.step] = why[r.step] or f"reflection correcting step {r.source} ({fix})"
        if r.wrong is not None and r.wrong not in qnums:
            for k in index.users.get(r.wrong, ())[:MAX_SCAN * 4]:
                if k > r.step and flow.producer(k, r.wrong, True) is None and \
                        flow.producer(k, r.wrong, True, raw=True) == r.source:
                    why[k] = why[k] or f"uses the value {_fmt(r.wrong)} step {r.step} rejected"
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
                    why[k] = why[k] or f"carries the wrong value {_fmt(bad.result)} of step {i}"
                    seen.add(k)
                    if departs is None or k in departs:
                        stack.append(k)
    e = bad.expected
    if e is not None:  # the first number of a left-hand side, or any number the question does not state
        k = next((k for k in index.users.get(e, ()) if i < k <= i + LOOKBACK and flow.producer(k, e, True) is None
                  and any(u == e and (f or e not in flow.qnums) for u, f in flow.uses(k))), None)
        if k is not None:
            why[k] = why[k] or f"silently returns to the right value {_fmt(e)} after step {i}"


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
        note = f" (the answer {_fmt(final)} is produced by no step: traced the last result {_fmt(last)})"
        final = last
        path = sorted(_path(index, analyse_step(n, ""), final, flow))
    if not path:
        return [UNMATCHED] * n, [f"no step produces or states the wrong answer {_fmt(final)}"] * n
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
                      f"carries {_fmt(infos[i].eqs[-1].result)} to the answer" if infos[i].eqs
                      else f"states the wrong answer {_fmt(final)}")
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
                out.append(Verdict.failed(req, f"rule judge internal error: {type(e).__name__}: {e}"[:300]))
            if progress is not None:
                progress(1)
        return out
