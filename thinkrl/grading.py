r"""Grade math answers: pull the final answer out of a completion and decide if it equals the gold one.

    from thinkrl.grading import extract_answer, answers_match, grade, grade_many
    extract_answer(r"... so the answer is $\boxed{\frac{1}{2}}$.")   # -> r"\frac{1}{2}"
    answers_match("0.5", r"\frac{1}{2}")                              # -> True
    grade_many(completions, golds)                                    # -> [Grade(pred_answer, correct), ...]

Gold answers are bare answers as the benchmark files store them (the MATH/AIME `answer` field, AMC's
float as a string, GSM8K's `extract_answer(row["answer"])`, i.e. the text after `####`).

A pair is decided cheapest first:
1. Pre-screen, no parsing: a missing answer, one longer than MAX_ANSWER_CHARS, nested deeper than
   MAX_NESTING, with unbalanced braces, or with a power tower taller than MAX_POWER_DEPTH
   (`10^{10^{10^{10}}}`, `a^b^c`) is wrong.
2. Fast paths in this process, no sympy: equal after light normalisation (`\dfrac`, `\left`, `\!`,
   spaces, `$`, `\$`, `\%`, degrees, a trailing `\text{ cm}` unit or `18 dollars`, `\text{(C)}` = `C`);
   plain numbers compared exactly (`025` = `25`, `27.0` = `27`, `1,000` = `1000`, `\frac{3}{2}` = `1.5`,
   mixed numbers `1\frac{4}{5}` = `1.8`), and two different integers are wrong at once; a gold that is
   all `\text{...}` (a name, a word, a choice) is compared as text, case-insensitively.
3. Otherwise math-verify (Hugging Face) parses both sides as LaTeX and compares them symbolically.

The time limit works in any thread. math-verify's own timeout uses `signal.alarm` (main thread only),
so it is off and the limit is enforced from outside: math-verify runs in a worker subprocess started
with `subprocess` (`python -c`), not `multiprocessing`, so the caller's `__main__` and its heavy imports
are not re-run. A worker starts lazily on the first pair that reaches step 3 (about a second) and is
kept. A chunk of pairs goes to it as one JSON line; it answers one line per pair; the parent waits at
most `timeout_s` for each answer (counted from the previous one of that worker) and on a miss SIGKILLs
the worker, marks that pair wrong and sends the rest of the chunk to a fresh worker. Inside the worker a
soft timer (SOFT_TIMEOUT_FRACTION x timeout_s, `setitimer`) interrupts slow pure-Python sympy work, so
the worker usually survives; the kill is the backstop for work stuck in C. Workers run under a 2 GiB
RLIMIT_AS.
Threads: a pool of at most MAX_WORKERS workers (min(4, cores)) shared by all callers; a worker is
checked out by one thread at a time, so threads never share a pipe. A call checks out its own worker
(waiting if all are out) and may add up to MAX_WORKERS - 1 helper threads, each with a worker taken
without waiting; all of them take the batch's next chunk from a shared index under a lock, so a worker
stuck on a hostile answer (one that costs the whole limit) holds back only the rest of its own chunk and
a batch of k hostile answers costs about k / workers limits, not k. Chunks are small (at most CHUNK_SIZE
pairs; a small batch is cut into at least 4 chunks per worker) so that the work spreads. Cheap batches
stay cheap: a helper uses an idle worker that is already running at once, but starts a new one (about a
second of CPU, importing sympy) only if the batch is still running FANOUT_DELAY_S after it began, so a
batch one worker finishes within that delay never starts another process, and a slow batch pays at most
one start-up per extra worker (kept for later calls). Helpers never wait for a worker: a caller that
holds one and waited for a second could deadlock with another caller doing the same; with the pool
exhausted a batch runs on the workers it has (at least its own). A helper also gives its worker back,
between chunks, as soon as another caller waits for one, so no caller waits more than one chunk for a
worker that another caller's batch only borrowed. Waiting for a free worker, or for one to start
(bounded by WORKER_START_TIMEOUT_S), is not counted in the per-answer limit. `close()` (also registered
with atexit) kills the workers; later calls start new ones. POSIX only (select.poll, setitimer,
resource).

Model output is untrusted: nothing here evals, execs or sympifies text. math-verify's LaTeX parser
(an ANTLR grammar) is the only parser; its plain-expression extractor, which calls sympy's
`parse_expr`, is deliberately not enabled.

Departs from stock math-verify: the fast paths decide first (integers compared exactly, where
math-verify stops at 15 significant digits; `5\%` = `5`, and math-verify also gives `5\%` = `0.05`);
towers and over-long or deeply nested answers are refused unparsed; `\text{...}` golds are compared
as text; a leading integer before `\frac` is a mixed number.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

from thinkrl.errors import ThinkrlError

_log = logging.getLogger(__name__)

MAX_ANSWER_CHARS = 2000  # longer predicted or gold answers are refused unparsed
MAX_NESTING = 50  # deeper nesting of {[( is refused unparsed
MAX_POWER_DEPTH = 2  # 10^{10^x} is parsed (and may time out); 10^{10^{10^x}} is refused unparsed
MAX_WORKERS = max(1, min(4, os.cpu_count() or 1))  # worker subprocesses in all, shared by all callers
CHUNK_SIZE = 8  # at most this many pairs go to a worker in one message (fewer in a small batch)
FANOUT_DELAY_S = 1.0  # a batch still running after this long may start more workers (about one's start-up)
WORKER_START_TIMEOUT_S = 120.0  # importing sympy on a loaded machine can take a while
WORKER_MEMORY_BYTES = 2 << 30  # RLIMIT_AS of a worker
SOFT_TIMEOUT_FRACTION = 0.8  # the worker interrupts itself at this fraction of timeout_s; 0 turns that off


@dataclass(frozen=True)
class Grade:
    """The outcome of grading one completion."""

    pred_answer: str | None  # the extracted final answer; None when the completion has none
    correct: bool  # True when it equals the gold answer


# --------------------------------------------------------------------------------------------------
# Extraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BOX_TOKEN_RE = re.compile(r"[^\s$]+")  # `\boxed 5`: the answer runs to the next space or `$`
_GSM8K_RE = re.compile(r"####([^\n]*)")
_ANSWER_ANCHOR_RE = re.compile(r"(?i:final[ \t]+answer[ \t]+is|the[ \t]+answer[ \t]+is|answer[ \t]*:)")
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)")  # a period that ends a sentence, not a decimal point
_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def _brace_pairs(text: str) -> dict[int, int]:
    """Map the index of every matched unescaped `{` to its `}` in one left-to-right pass (linear)."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for m in re.finditer(r"\\.|[{}]", text, re.S):  # `\x` consumes the escaped char, so `\{` is no brace
        c = m.group()
        if c == "{":
            stack.append(m.start())
        elif c == "}" and stack:
            pairs[stack.pop()] = m.start()
    return pairs


def _last_box(text: str) -> str | None:
    """Content of the last non-empty `\\boxed{...}` / `\\boxed x` / `\\fbox{...}`; None if there is none."""
    starts = [m.end() for m in _BOX_RE.finditer(text)]
    if not starts:
        return None
    pairs = _brace_pairs(text) if "{" in text else {}
    for pos in reversed(starts):  # the last box whose content is well formed wins
        after = pos
        while after < len(text) and text[after].isspace():
            after += 1
        if after < len(text) and text[after] == "{":
            end = pairs.get(after)
            content = text[after + 1 : end] if end is not None else None
        elif after > pos:  # `\boxed 5`: a space, then a bare token
            m = _BOX_TOKEN_RE.match(text, after)
            content = m.group() if m else None
        else:
            content = None
        content = _clean(content) if content is not None else None
        if content:
            return content
    return None


def _clean(ans: str) -> str:
    """Strip whitespace, math-mode wrappers (`$..$`, `\\(..\\)`), markdown bold and a trailing period."""
    ans = ans.strip()
    for _ in range(8):  # bounded: `$$$...$$$` must not cost quadratic time
        changed = False
        for left, right in (("**", "**"), *_WRAPPERS):
            if len(ans) >= len(left) + len(right) and ans.startswith(left) and ans.endswith(right):
                ans, changed = ans[len(left) : len(ans) - len(right)].strip(), True
        if ans.endswith(".") and not ans.endswith("..."):
            ans, changed = ans[:-1].rstrip(), True
        if not changed or not ans:
            break
    return ans


def _after_anchor(text: str, start: int) -> str:
    """The answer stated after `The answer is` at `start`: a leading `$...$`, else the rest of the sentence."""
    end = text.find("\n", start)
    rest = text[start : end if end >= 0 else len(text)].lstrip(" \t:*")
    if rest.startswith("$"):
        close = rest.find("$", 1)
        if close > 0:
            return rest[: close + 1]
    m = _SENTENCE_END_RE.search(rest)
    return rest[: m.start()] if m else rest


def extract_answer(text: str) -> str | None:
    """The final answer of a completion, or None when it states none.

    The last `\\boxed{...}` (or `\\boxed x`, `\\fbox{...}`) wins, nested braces matched; without a box,
    the last GSM8K `#### X`; without that, what follows the last `Answer:` / `The answer is` / `final
    answer is` on its line (a leading `$...$`, else up to the end of the sentence). Surrounding `$`
    and a trailing period are stripped. Linear time in len(text).
    """
    boxed = _last_box(text)
    if boxed is not None:
        return boxed
    gsm8k = _last_match(_GSM8K_RE, text)
    if gsm8k is not None and _clean(gsm8k.group(1)):
        return _clean(gsm8k.group(1))
    anchor = _last_match(_ANSWER_ANCHOR_RE, text)
    if anchor is not None:
        return _clean(_after_anchor(text, anchor.end())) or None
    return None


def _last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    tail = deque(pattern.finditer(text), maxlen=1)
    return tail[0] if tail else None


# --------------------------------------------------------------------------------------------------
# Pre-screen and fast paths (no sympy, no eval)

_TEXT_WRAP_RE = re.compile(r"^\\(?:text|textbf|mathrm|mbox|textrm)\{([^{}]*)\}$")
_TRAILING_UNIT_RE = re.compile(r"(?<=\S)\s*\\(?:text|mbox|textrm|mathrm)\{[^{}]*\}(?:\^\{?[23]\}?)?$")
_DEGREE_RE = re.compile(r"\^\s*\{?\\circ\}?|°|\\degree|\\circ$")
_SPACING_RE = re.compile(r"(\\\\)|\\left(?![A-Za-z])|\\right(?![A-Za-z])|\\[!,;:> ]|\\displaystyle|~|\s+")
_SIMPLE_GROUP_RE = re.compile(r"([_^]|\\sqrt)\{(\w)\}")
_CHOICE_RE = re.compile(r"^\(([A-Ea-e])\)$")
_WORD_UNIT_RE = re.compile(r"^(-?\\?\$?[\d.,]*\d)\s+(?!pi\b)[A-Za-z]{2,}(?:\s+[A-Za-z]+)*$")  # `18 dollars`
_INT_RE = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)"
_NUMBER_RE = re.compile(rf"^{_INT_RE}(?:\.\d*)?$|^-?\.\d+$")
_D = r"(?:\{(\d+)\}|(\d))"  # a \frac argument: {123} or one digit
_FRAC_RE = re.compile(rf"^(-?)(\d+)?\\frac{_D}{_D}$")
_SLASH_RE = re.compile(r"^(-?\d+)/(\d+)$")
_POWER_CHAIN_RE = re.compile(r"\^\s*(?:\{[^{}]*\}|[\w.]+)\s*\^")


def _normalize(s: str) -> tuple[str, bool]:
    """Light canonical form for string/number comparison; also whether a percent sign was present."""
    s = _clean(s)
    s = _WORD_UNIT_RE.sub(r"\1", s)
    s = _TRAILING_UNIT_RE.sub("", s)
    m = _TEXT_WRAP_RE.match(s.strip())
    if m:
        s = m.group(1)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _DEGREE_RE.sub("", s)
    s = _SPACING_RE.sub(lambda m: m.group(1) or "", s)  # keeps `\\` (a matrix row break)
    percent = "%" in s
    s = s.replace("\\%", "").replace("%", "").replace("\\$", "").replace("$", "")
    s = _SIMPLE_GROUP_RE.sub(r"\1\2", s)
    s = s.rstrip(".")
    m = _CHOICE_RE.match(s)
    if m:
        s = m.group(1).upper()
    return s, percent


def _as_number(s: str) -> Fraction | None:
    """The exact value of a normalised plain number (`025`, `1,000`, `.5`, `-\\frac{3}{2}`, `1\\frac45`, `7/2`)."""
    if _NUMBER_RE.match(s):
        return Fraction(s.replace(",", ""))  # Fraction parses decimal text strictly; no eval
    m = _FRAC_RE.match(s)
    if m:
        sign, whole, n1, n2, d1, d2 = m.groups()
        num, den = int(n1 or n2), int(d1 or d2)
        if den == 0:
            return None
        value = Fraction(num, den) + int(whole or 0)  # `1\frac{4}{5}` is a mixed number, 9/5
        return -value if sign else value
    m = _SLASH_RE.match(s)
    if m and int(m.group(2)) != 0:
        return Fraction(int(m.group(1)), int(m.group(2)))
    return None


def _fast_match(pred: str, gold: str) -> bool | None:
    """True/False when cheap rules settle it, None when math-verify must decide."""
    p, p_pct = _normalize(pred)
    g, g_pct = _normalize(gold)
    if p and p == g:
        return True
    a, b = _as_number(p), _as_number(g)
    if a is not None and b is not None:
        if a == b:
            return True
        if a.denominator == 1 and b.denominator == 1 and not (p_pct or g_pct):
            return False  # two different integers; exact, where math-verify rounds to 15 digits
        return None
    m = _TEXT_WRAP_RE.match(_clean(gold))
    if m and re.search(r"[A-Za-z]{2}|\([A-Ea-e]\)", m.group(1)):
        return p.lower() == g.lower()  # `\text{Evelyn}`, `\text{(C)}`: a word or a choice, not math
    return None


def _too_hard(s: str) -> bool:
    """Refuse without parsing: over-long, deeply nested, unbalanced braces, or a tall power tower."""
    if len(s) > MAX_ANSWER_CHARS:
        return True
    s = s.replace("**", "^")
    if _POWER_CHAIN_RE.search(s):
        return True  # `a^b^c` without braces: a tower in disguise
    stack: list[bool] = []  # per open bracket: does it hold an exponent?
    power = 0  # open brackets that hold an exponent
    braces = 0
    for m in re.finditer(r"\\.|[{}()\[\]^]", s, re.S):  # `\x` is one token, so `\{` is no brace
        c = m.group()
        if c in "{([":
            is_exp = m.start() > 0 and s[m.start() - 1] == "^"
            stack.append(is_exp)
            power += is_exp
            braces += c == "{"
            if len(stack) > MAX_NESTING or power > MAX_POWER_DEPTH:
                return True
        elif c in "})]":
            braces -= c == "}"
            if braces < 0:
                return True  # a `}` that closes nothing
            if stack:  # ( and [ may pair with ] and ): intervals
                power -= stack.pop()
        elif c == "^" and power + 1 > MAX_POWER_DEPTH and not s.startswith("{", m.end()):
            return True
    return braces != 0


# --------------------------------------------------------------------------------------------------
# The worker subprocess

_BOOT = "import sys; sys.path[0] = sys.argv[1]; from thinkrl.grading import _worker_main; _worker_main()"


class _SoftTimeout(BaseException):
    """Raised by the worker's interval timer; a BaseException so math-verify's `except Exception` lets it by."""


def _worker_main() -> None:
    """Worker loop: read a JSON batch per line, write `{"i": k, "ok": bool}` per pair. Exits on EOF."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the protocol
    logging.disable(logging.CRITICAL)
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, resource.RLIM_INFINITY))
    except (ImportError, ValueError, OSError):
        pass
    try:
        from math_verify import LatexExtractionConfig, parse, verify  # noqa: F401
    except ImportError as e:
        out.write(
            json.dumps({"error": f"math-verify is not importable ({e}); pip install 'math-verify>=0.7'"})
        )
        out.write("\n")
        out.flush()
        return

    def on_alarm(signum, frame):
        raise _SoftTimeout

    signal.signal(signal.SIGALRM, on_alarm)
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        msg = json.loads(line)
        budget = float(msg["soft"])  # 0: no soft timer, only the parent's kill
        for i, (pred, gold) in enumerate(msg["items"]):
            ok = False
            try:
                signal.setitimer(signal.ITIMER_REAL, budget)
                try:
                    ok = _mv_equal(pred, gold)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except (Exception, _SoftTimeout):  # a soft timeout or any parser failure means "not equal"
                pass
            out.write(json.dumps({"i": i, "ok": bool(ok)}) + "\n")
            out.flush()


@lru_cache(maxsize=4096)
def _mv_parse(s: str) -> tuple:
    """math-verify's LaTeX parse of one answer (cached: a gold is graded against many samples)."""
    from math_verify import LatexExtractionConfig, parse

    cfg = [LatexExtractionConfig(boxed_match_priority=0)]
    parsed = parse("\\boxed{" + s + "}", extraction_config=cfg, parsing_timeout=None)
    if not parsed:
        parsed = parse("$" + s + "$", extraction_config=cfg, parsing_timeout=None)
    return tuple(parsed)


def _mv_equal(pred: str, gold: str) -> bool:
    """math-verify's verdict; note verify() is asymmetric and takes the gold first."""
    from math_verify import verify

    g, p = _mv_parse(_clean(gold)), _mv_parse(_clean(pred))
    return bool(g) and bool(p) and bool(verify(list(g), list(p), timeout_seconds=None))


class _Worker:
    """One math-verify subprocess, used by one thread at a time; (re)started lazily."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self._buf = b""

    def _start(self) -> None:
        root = str(Path(__file__).resolve().parent.parent)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, root],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        self._buf = b""
        msg = self._read(time.monotonic() + WORKER_START_TIMEOUT_S)
        if msg is None or "error" in msg:
            self.kill()
            why = msg["error"] if msg else f"no answer within {WORKER_START_TIMEOUT_S:.0f}s"
            raise ThinkrlError(f"the grading worker (math-verify in a subprocess) did not start: {why}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure_started(self) -> None:
        """Start the subprocess unless it is running (after a kill, or on first use)."""
        if not self.alive:
            self.kill()
            self._start()

    def _read(self, deadline: float) -> dict | None:
        """The next message, or None if the deadline passes or the worker dies first."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None  # EOF: the worker died
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            return None

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    f.close()

    def run(self, pairs: list[tuple[str, str]], timeout_s: float) -> list[bool]:
        """Verdicts for `pairs`, each given at most `timeout_s` after the previous one."""
        results = [False] * len(pairs)
        pos, broken = 0, 0
        while pos < len(pairs):
            self.ensure_started()
            try:
                assert self.proc is not None and self.proc.stdin is not None
                soft = max(0.05, SOFT_TIMEOUT_FRACTION * timeout_s) if SOFT_TIMEOUT_FRACTION > 0 else 0.0
                msg = json.dumps({"soft": soft, "items": pairs[pos:]}) + "\n"
                self.proc.stdin.write(msg.encode())
                self.proc.stdin.flush()
            except OSError:  # died between batches (e.g. close() from another thread): start again
                self.kill()
                broken += 1
                if broken > 2:
                    raise
                continue
            base = pos
            while pos < len(pairs):
                msg = self._read(time.monotonic() + timeout_s)
                if msg is None or msg.get("i") != pos - base:
                    self.kill()  # timed out or died: this pair is wrong, the rest go to a fresh worker
                    pos += 1
                    break
                results[pos] = bool(msg["ok"])
                pos += 1
        return results


class _Pool:
    """At most MAX_WORKERS workers; each one is checked out by one thread at a time."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._all: list[_Worker] = []
        self._waiting = 0  # threads blocked in acquire()
        self._pid = os.getpid()

    def _check_fork(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's pipes are not ours
            self._idle, self._all, self._waiting, self._pid = [], [], 0, os.getpid()

    def _take(self, start: bool) -> _Worker | None:
        """An idle worker, a running one first; else, with `start` and room left, a new (unstarted) one."""
        for i in range(len(self._idle) - 1, -1, -1):
            if self._idle[i].alive:
                return self._idle.pop(i)
        if self._idle and start:
            return self._idle.pop()
        if start and len(self._all) < MAX_WORKERS:
            worker = _Worker()
            self._all.append(worker)
            return worker
        return None

    def acquire(self) -> _Worker:
        """A worker, waiting for one to come back if all MAX_WORKERS are checked out."""
        with self._cond:
            self._check_fork()
            self._waiting += 1
            try:
                while (worker := self._take(start=True)) is None:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            return worker

    def try_acquire(self, start: bool) -> _Worker | None:
        """A worker without waiting, or None: an idle running one, or with `start` any idle or new one.

        None also while a thread waits in acquire(): a caller's first worker goes before a batch's extra one.
        """
        with self._cond:
            self._check_fork()
            return None if self._waiting else self._take(start)

    def has_waiters(self) -> bool:
        with self._cond:
            return self._waiting > 0

    def release(self, worker: _Worker) -> None:
        with self._cond:
            keep = any(w is worker for w in self._all)
            if keep:
                self._idle.append(worker)
            self._cond.notify()
        if not keep:  # close() ran while it was checked out
            worker.kill()

    def close(self) -> None:
        """Kill the idle workers now; those checked out by other threads die when they come back."""
        with self._cond:
            idle, self._idle, self._all = self._idle, [], []
            self._cond.notify_all()
        if self._pid == os.getpid():
            for worker in idle:
                worker.kill()


_POOL = _Pool()


def close() -> None:
    """Kill the grading workers (also run at interpreter exit); later calls start new ones."""
    _POOL.close()


atexit.register(close)


# --------------------------------------------------------------------------------------------------
# Public API


class _Batch:
    """The pairs of one `_verify_many` call, handed out in chunks to the threads that work on it.

    A thread takes the next chunk under the lock, so one stuck on a hostile pair holds back only the rest
    of its own chunk. A chunk whose helper failed is given back and taken again.
    """

    def __init__(self, pairs: list[tuple[str, str]], timeout_s: float, chunk: int) -> None:
        self.pairs, self.timeout_s, self.chunk = pairs, timeout_s, chunk
        self.results = [False] * len(pairs)
        self.done = threading.Event()  # set when the caller is finished with the batch (or gave up)
        self._cond = threading.Condition()
        self._next = 0  # the first pair not yet handed out
        self._returned: list[tuple[int, int]] = []  # chunks given back by a failed helper
        self._in_flight = 0

    @property
    def chunks(self) -> int:
        return -(-len(self.pairs) // self.chunk)

    def pending(self) -> bool:
        with self._cond:
            return not self.done.is_set() and (bool(self._returned) or self._next < len(self.pairs))

    def _take(self) -> tuple[int, int] | None:
        with self._cond:
            if self.done.is_set():
                return None
            if self._returned:
                span = self._returned.pop()
            elif self._next < len(self.pairs):
                span = (self._next, min(len(self.pairs), self._next + self.chunk))
                self._next = span[1]
            else:
                return None
            self._in_flight += 1
            return span

    def _put(self, span: tuple[int, int], verdicts: list[bool] | None) -> None:
        with self._cond:
            self._in_flight -= 1
            if verdicts is None:
                self._returned.append(span)
            else:
                self.results[span[0] : span[1]] = verdicts
            self._cond.notify_all()

    def work(self, worker: _Worker, helper: bool) -> None:
        """Take chunks and grade them on `worker` until none is left (a helper also stops for a waiting caller)."""
        while True:
            if helper:
                if _POOL.has_waiters() or not self.pending():
                    return
                worker.ensure_started()  # outside a chunk: the caller never waits for a helper's start-up
            span = self._take()
            if span is None:
                return
            try:
                verdicts = worker.run(self.pairs[span[0] : span[1]], self.timeout_s)
            except BaseException:
                self._put(span, None)
                raise
            self._put(span, verdicts)

    def wait_in_flight(self) -> bool:
        """Wait until no chunk is out; True if a failed helper gave one back (there is work again)."""
        with self._cond:
            while self._in_flight and not self._returned:
                self._cond.wait()
            return bool(self._returned)


def _helper(batch: _Batch) -> None:
    """Work on `batch` with an extra worker: an idle running one now, else a new one after FANOUT_DELAY_S.

    Never waits for a worker (its caller holds one already: waiting could deadlock two callers).
    """
    worker = _POOL.try_acquire(start=False)
    if worker is None:
        if batch.done.wait(FANOUT_DELAY_S) or not batch.pending():
            return
        worker = _POOL.try_acquire(start=True)
        if worker is None:
            return
    try:
        batch.work(worker, helper=True)
    except Exception as e:  # its chunk was given back; the caller's own worker carries on (or fails itself)
        _log.debug("a grading helper stopped: %s", e)
    finally:
        _POOL.release(worker)


def _chunk_size(n: int) -> int:
    """Pairs per message: at least 4 chunks per worker, so the work spreads; at most CHUNK_SIZE."""
    return max(1, min(CHUNK_SIZE, n // (4 * MAX_WORKERS)))


def _verify_many(pairs: list[tuple[str, str]], timeout_s: float) -> list[bool]:
    """math-verify verdicts for (pred, gold) pairs, in order: the caller's worker, plus helpers if slow."""
    if not pairs:
        return []
    worker = _POOL.acquire()
    try:
        worker.ensure_started()  # FANOUT_DELAY_S counts from here, not from this worker's start-up
        batch = _Batch(pairs, timeout_s, _chunk_size(len(pairs)))
        for _ in range(min(MAX_WORKERS, batch.chunks) - 1):
            threading.Thread(target=_helper, args=(batch,), name="thinkrl-grading", daemon=True).start()
        try:
            batch.work(worker, helper=False)
            while batch.wait_in_flight():
                batch.work(worker, helper=False)
        finally:
            batch.done.set()
        return batch.results
    finally:
        _POOL.release(worker)


def _match_many(preds: list[str | None], golds: list[str], timeout_s: float) -> list[bool]:
    if len(preds) != len(golds):
        raise ThinkrlError(f"grading needs one gold answer per prediction, got {len(preds)} and {len(golds)}")
    if not timeout_s > 0:
        raise ThinkrlError(f"grading timeout_s must be > 0, got {timeout_s}")
    bad = next((g for g in golds if not isinstance(g, str)), None)
    if bad is not None:
        raise ThinkrlError(
            f"gold answers must be strings, got {type(bad).__name__} {bad!r} (stringify AMC's floats)"
        )
    verdicts: list[bool | None] = []
    for pred, gold in zip(preds, golds, strict=True):
        if pred is None or not gold.strip() or _too_hard(pred) or _too_hard(gold):
            verdicts.append(False)
        else:
            verdicts.append(_fast_match(pred, gold))
    todo = [i for i, v in enumerate(verdicts) if v is None]
    slow = _verify_many([(preds[i], golds[i]) for i in todo], timeout_s)  # type: ignore[misc]
    for i, ok in zip(todo, slow, strict=True):
        verdicts[i] = ok
    return [bool(v) for v in verdicts]


def answers_match(pred: str | None, gold: str, timeout_s: float = 5.0) -> bool:
    """Whether the predicted answer equals the gold one; False on None, refusal or timeout.

    Safe to call from any thread; at most about `timeout_s` is spent on the comparison itself.
    """
    return _match_many([pred], [gold], timeout_s)[0]


def grade(completion: str, gold: str, timeout_s: float = 5.0) -> Grade:
    """Extract the final answer of `completion` and compare it with `gold`."""
    pred = extract_answer(completion)
    return Grade(pred_answer=pred, correct=answers_match(pred, gold, timeout_s))


def grade_many(completions: list[str], golds: list[str], timeout_s: float = 5.0) -> list[Grade]:
    """`grade` over aligned lists; the math-verify work goes to pooled workers in chunks, `timeout_s` per pair."""
    preds = [extract_answer(c) for c in completions]
    if len(preds) != len(golds):
        raise ThinkrlError(
            f"grade_many needs one gold per completion, got {len(completions)} and {len(golds)}"
        )
    return [Grade(p, ok) for p, ok in zip(preds, _match_many(preds, golds, timeout_s), strict=True)]
