"""Arithmetic in model-written text: numbers, tokens, a bounded expression parser and evaluator (Fractions),
and the equations of a step with their checks. The reader the rule judge (thinkrl.judge.rule) builds on.

    eqs = equations_in(tokenize(normalize_text("17 + 28 = 45, so 45 * 3 = 125")))   # [Equation, Equation]
    eqs[1].ok                                                                      # False: 45 * 3 is 135

Model output is untrusted text: no eval, no sympify; every loop and number is bounded (the limits below), so
adversarial text costs at most linear time and never builds huge numbers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

# ---------------------------------------------------------------------------------------------------
# Bounds: adversarial text costs at most linear time and never builds huge numbers.

MAX_STEP_CHARS = 20_000  # characters of one step analysed (the rest is ignored)
MAX_EQS = 64  # equations kept per step
MAX_SIDE_TOKENS = 256  # tokens in one side of an equation
MAX_DEPTH = 40  # parenthesis / unary nesting
MAX_DIGITS = 40  # digits of one written number (longer: unverifiable)
MAX_BITS = 4096  # bits of any numerator / denominator during evaluation
MAX_EXPONENT = 4096

# ---------------------------------------------------------------------------------------------------
# Text normalisation and tokens

ANNOT = re.compile(r"<<([^<>]{0,400})>>")  # GSM8K calculator annotations
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


def normalize_text(text: str) -> str:
    text = _TEXT_CMD.sub(r" \1 ", text)
    for _ in range(4):  # nested \frac, innermost first
        new = _FRAC.sub(r"((\1)/(\2))", text)
        if new == text:
            break
        text = new
    for pat, rep in _SUBS:
        text = pat.sub(rep, text)
    return text


def raw_tokenize(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    for m in _TOK.finditer(text):
        if m.group("mixed") is not None:
            whole, _, frac = m.group("mixed").partition(" ")
            a, b = (int(x) for x in frac.split("/"))
            if 0 < a < b:
                out.append(_Tok("num", (int(whole) + Fraction(a, b), False, 0), m.group("mixed")))
            else:  # `5 12/4`: two numbers after all
                out.extend(raw_tokenize(whole + " ") + raw_tokenize(frac))
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


def tokenize(text: str) -> list[_Tok]:
    """Tokens with words turned into operators where they act as one, units dropped, other words breaks."""
    raw = raw_tokenize(text)
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


def parse_expr(toks: Sequence[_Tok]) -> tuple[object, int] | None:
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


def eval_node(node, pct: bool) -> Fraction | None:
    """Value of a tree; `20%` is 0.2 when pct else 20. None: unverifiable (too big, division by zero)."""
    if node[0] == "n":
        v, is_pct, _ = node[1]
        return None if v is None else (v / 100 if pct and is_pct else v)
    if node[0] == "neg":
        v = eval_node(node[1], pct)
        return None if v is None else -v
    _, op, a, b = node
    x = eval_node(a, pct)
    y = eval_node(b, pct) if x is not None else None
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
            parts.append(("?" if v is None else fmt_value(v)) + ("%" if n[1][1] else ""))
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


def fmt_value(v: Fraction | None) -> str:
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
    x, y = eval_node(a, pct), eval_node(b, pct)
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
                    eval_node(sides[-1], False), eval_node(sides[0], False), _check(sides, kinds), simple)


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
            got = parse_expr(toks[start:])
            if got is not None and got[1] == len(toks) - start:
                return got[0]
    return None


def equations_in(toks: list[_Tok]) -> list[Equation]:
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
        got = parse_expr(part)
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
