"""Tests for thinkrl.grading: answer extraction, equivalence, the hard time limit, threads, real gold answers.

Run: `.venv/bin/python -m pytest tests/test_grading.py -q`. Takes about 30 s on 2 busy cores (a math-verify
worker starts a few times; each hostile answer costs its time limit). The data test needs the benchmark
files (THINKRL_DATA_DIR or ../shared/data) and skips without them.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from thinkrl import grading
from thinkrl.errors import ThinkrlError
from thinkrl.grading import Grade, answers_match, extract_answer, grade, grade_many

pytestmark = pytest.mark.timeout(120)

HANG = "10^{10^{10}}"  # passes the pre-screen, then sympy works on it for minutes: a real timeout
T, F = True, False


@pytest.fixture(scope="module", autouse=True)
def _workers():
    yield
    grading.close()


def _warm() -> None:
    """Start a worker in this thread's pool slot, so a timing below measures grading, not start-up."""
    assert answers_match("\\sqrt{12}", "2\\sqrt{3}")


# (pred, gold, expected): answer forms from MATH-500, AIME 24/25, AMC 23 and GSM8K gold answers
# fmt: off
CASES = [
    # AIME leading zeros, AMC floats
    ("25", "025", T), ("025", "25", T), ("73", "073", T), ("27", "27.0", T), ("27.0", "27", T),
    ("-1", "-1.0", T), ("-50", "-50.0", T), ("3159", "3159.0", T),
    # fractions, mixed numbers, decimals
    ("0.5", "\\frac{1}{2}", T), ("1/2", "\\frac{1}{2}", T), ("\\dfrac{1}{2}", "\\frac12", T),
    ("\\tfrac{3}{56}", "\\frac{3}{56}", T), ("\\frac{17}{50}", "\\dfrac{17}{50}", T), ("0.34", "\\dfrac{17}{50}", T),
    ("1.8", "1\\frac{4}{5}", T), ("\\frac{275}{2}", "137 \\frac{1}{2}", T), ("-35/9", "-\\frac{35}{9}", T),
    ("\\frac{9}{19}", "\\frac9{19}", T), ("0.0000672", ".0000672", T), ("6.72 \\times 10^{-5}", ".0000672", T),
    # radicals
    ("\\sqrt{12}", "2\\sqrt{3}", T), ("\\frac{1}{\\sqrt{3}}", "\\frac{\\sqrt{3}}{3}", T), ("11\\sqrt{2}", "11\\sqrt2", T),
    ("\\sqrt{242}", "11\\sqrt2", T), ("\\sqrt{21}/5", "\\frac{\\sqrt{21}}{5}", T),
    ("3+2\\sqrt{2}, 3-2\\sqrt{2}", "3 \\pm 2 \\sqrt{2}", T),
    # tuples, points, intervals, sets
    ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", T), ("(1.5, -13)", "\\left( \\frac{3}{2}, -13 \\right)", T),
    ("(6, 31, -1)", "(6,31,-1)", T), ("(-\\infty,0]", "(-\\infty, 0]", T),
    ("(0.6, 8/3]", "\\left(\\frac{3}{5},\\frac{8}{3}\\right]", T),
    ("(-\\infty,2)\\cup(3,\\infty)", "(-\\infty, 2) \\cup (3, \\infty)", T), ("[-2,7]", "x \\in [-2,7]", T),
    ("-2, 1", "1,-2", T), ("7, 5, 3", "3, 5, 7", T), ("\\{-2, 1+\\sqrt5, 1-\\sqrt5\\}", "\\{1\\pm\\sqrt{5},-2\\}", T),
    # text answers: names, words, multiple choice
    ("Evelyn", "\\text{Evelyn}", T), ("C", "\\text{(C)}", T), ("(C)", "\\text{(C)}", T), ("\\textbf{(C)}", "\\text{(C)}", T),
    ("East", "\\text{east}", T), ("\\text{even}", "\\text{even}", T),
    # degrees, units, money, percent, thousands separators
    ("90", "90^\\circ", T), ("90°", "90^\\circ", T), ("90^{\\circ}", "90^\\circ", T),
    ("\\frac{270}{7}", "\\frac{270}7\\text{ degrees}", T), ("864", "864 \\mbox{ inches}^2", T),
    ("15 \\text{ cm}^2", "15\\mbox{ cm}^2", T), ("5.4", "5.4 \\text{ cents}", T), ("18 dollars", "18", T),
    ("10080", "10,\\!080", T), ("11111111100", "11,\\! 111,\\! 111,\\! 100", T), ("1600", "1,600", T),
    ("1,450,000", "1450000", T), ("32348", "\\$32,\\!348", T), ("18.9", "\\$18.90", T), ("\\$36.00", "\\$36", T),
    ("$18", "18", T), ("25", "25\\%", T), ("0.25", "25\\%", T), ("25\\%", "25\\%", T),
    # complex numbers, pi, expressions, equations, bases, matrices
    ("6-5i", "6 - 5i", T), ("7i-2", "-2 + 7i", T), ("288\\pi", "288 \\pi", T), ("20000/\\pi", "\\frac{20000}{\\pi}", T),
    ("2\\pi+18", "18+2\\pi", T), ("-1 + x - x^2 + x^3 - x^4 + x^5", "x^5 - x^4 + x^3 - x^2 + x - 1", T),
    ("(b+2)(a+5)", "(a+5)(b+2)", T), ("2(k+1)", "2k+2", T), ("3R^{2}", "3R^2", T),
    ("\\frac{\\cos x}{\\sin x}", "\\cot x", T), ("5", "x=5", T), ("y=2x+3", "y = 2x + 3", T),
    ("52_{8}", "52_8", T), ("4210_5", "4210_{5}", T),
    ("\\begin{pmatrix} -\\frac{1}{3} \\\\ \\frac{2}{3} \\\\ \\frac{5}{3} \\end{pmatrix}",
     "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}", T),
    ("\\begin{pmatrix}-1&0\\\\0&-1\\end{pmatrix}", "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", T),
    # wrong answers that must be rejected
    ("24", "25", F), ("24", "025", F), ("26", "27.0", F), ("-3", "3", F), ("3", "-3", F), ("0.33", "\\frac{1}{3}", F),
    ("\\frac{56}{3}", "\\frac{3}{56}", F), ("\\sqrt{13}", "3\\sqrt{13}", F), ("(2,1)", "(1,2)", F),
    ("[2,5]", "[2,5)", F), ("(2,5)", "[2,5)", F), ("(-\\infty, 0)", "(-\\infty, 0]", F),
    ("Navin", "\\text{Evelyn}", F), ("B", "\\text{(C)}", F), ("\\text{(B)}", "\\text{(C)}", F), ("91", "90^\\circ", F),
    ("6+5i", "6 - 5i", F), ("3.14", "\\pi", F), ("p+q", "p - q", F), ("10800", "10,\\!080", F),
    ("\\tan x", "\\cot x", F), ("x^3+3x+6", "x^3+3x-6", F), ("x=2", "x=5", F), ("19 dollars", "18", F),
    ("1000000000000000001", "1000000000000000000", F),  # exact: math-verify alone compares 15 digits
    ("\\begin{pmatrix} -2 \\\\ -14 \\\\ 7 \\end{pmatrix}", "\\begin{pmatrix} -2 \\\\ -14 \\\\ -7 \\end{pmatrix}", F),
    ("\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}", "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", F),
    ("3, 5", "3, 5, 7", F), ("2\\pi", "2", F), ("", "5", F), (None, "5", F), ("5", "", F),
]
# fmt: on


@pytest.mark.parametrize(("pred", "gold", "expected"), CASES, ids=[f"{p}|{g}" for p, g, _ in CASES])
def test_answers_match(pred, gold, expected):
    assert answers_match(pred, gold) is expected


EXTRACTIONS = [
    ("so $\\boxed{\\frac{1}{\\sqrt{2}}}$.", "\\frac{1}{\\sqrt{2}}"),
    ("first \\boxed{1}, on reflection \\boxed{2}", "2"),
    ("\\boxed{\\boxed{7}}", "7"),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
    ("\\boxed{\\text{(C)}}", "\\text{(C)}"),
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("the answer is \\boxed 5.", "5"),
    ("\\fbox{7}", "7"),
    ("\\boxed{$12$.}", "12"),
    ("done: \\boxed{5} and then \\boxed{", "5"),  # an unclosed box is no answer
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
    ("#### 1,000\n", "1,000"),
    ("Answer: 42", "42"),
    ("The answer is $\\frac{3}{4}$.", "\\frac{3}{4}"),
    ("Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.", "\\frac{3}{4}"),
    ("the answer is 3.5. Next we check it.", "3.5"),
    ("The answer is 4.\nWait, no. The answer is 5.", "5"),
    ("no final answer here", None),
    ("\\boxed{}", None),
    ("\\boxedx{5}", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACTIONS)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_grade_and_grade_many():
    g = grade("We get $x = 1/2$, so \\boxed{0.5}.", "\\frac{1}{2}")
    assert g == Grade(pred_answer="0.5", correct=True)
    with pytest.raises(FrozenInstanceError):
        g.correct = False  # type: ignore[misc]
    assert grade("I am not sure.", "5") == Grade(None, False)
    completions = ["\\boxed{025}", "\\boxed{\\sqrt{12}}", "no answer", "#### 18", "\\boxed{(2,1)}"]
    golds = ["25", "2\\sqrt{3}", "3", "18", "(1,2)"]
    assert [x.correct for x in grade_many(completions, golds)] == [True, True, False, True, False]
    assert grade_many([], []) == []
    with pytest.raises(ThinkrlError, match="one gold per completion"):
        grade_many(["\\boxed{1}"], ["1", "2"])
    with pytest.raises(ThinkrlError, match="must be strings"):
        answers_match("27", 27.0)  # type: ignore[arg-type]


def _timed(fn, *args, **kwargs):
    t0 = time.monotonic()
    out = fn(*args, **kwargs)
    return out, time.monotonic() - t0


def test_untrusted_code_is_never_run(tmp_path):
    target = tmp_path / "pwned"
    completion = f"\\boxed{{__import__('os').system('touch {target}')}}"
    g, wall = _timed(grade, completion, "1", timeout_s=2.0)
    assert g.correct is False and wall < 2.0 + 2
    assert answers_match(extract_answer(completion), "0") is False
    assert not target.exists()


@pytest.mark.parametrize(
    "completion",
    [
        "\\boxed{10^{10^{10^{10}}}}",
        "\\boxed{10**10**10**10}",
        "\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}",
        "\\boxed{" * 10_000,
        "x" * (1 << 20),
        "\\boxed{" + "1+" * (1 << 19) + "1}",
        "\\boxed{x" * 150_000,
    ],
    ids=["tower", "tower-plain", "nested-10k", "unclosed-10k", "1MB-text", "1MB-box", "1MB-unclosed-boxes"],
)
def test_adversarial_inputs_are_refused_in_time(completion):
    timeout_s = 2.0
    g, wall = _timed(grade, completion, "1", timeout_s=timeout_s)
    assert g.correct is False
    assert wall < timeout_s + 2


def test_hang_is_cut_by_the_soft_timer():
    _warm()
    ok, wall = _timed(answers_match, HANG, "1", timeout_s=1.0)
    assert ok is False and wall < 1.0 + 2


def test_hang_is_killed_and_the_batch_goes_on(monkeypatch):
    monkeypatch.setattr(grading, "SOFT_TIMEOUT_FRACTION", 0.0)  # only the parent's SIGKILL can stop it now
    _warm()
    completions = [
        "\\boxed{\\sqrt{12}}",
        f"\\boxed{{{HANG}}}",
        "\\boxed{0.5}",
        f"\\boxed{{{HANG}}}",
        "\\boxed{(2,1)}",
    ]
    golds = ["2\\sqrt{3}", "1", "\\frac{1}{2}", "1", "(2, 1)"]
    grades, wall = _timed(grade_many, completions, golds, timeout_s=1.0)
    assert [g.correct for g in grades] == [True, False, True, False, True]
    assert wall < 2 * (1.0 + 2)  # two timeouts, plus a restart after each
    assert answers_match("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}")  # the pool still works


def test_threads_agree_with_sequential():
    items = [(p, g) for p, g, _ in CASES if p is not None][::5][:20]
    assert len(items) == 20
    sequential = [answers_match(p, g) for p, g in items]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda pg: answers_match(*pg), items))
        batched = list(pool.map(lambda pg: grade_many([f"\\boxed{{{pg[0]}}}"], [pg[1]])[0].correct, items))
    assert threaded == sequential
    assert batched == sequential


def test_timeout_in_a_non_main_thread():
    def timed_in_thread():
        _warm()
        return _timed(answers_match, HANG, "1", timeout_s=1.0)

    with ThreadPoolExecutor(max_workers=1) as pool:
        ok, wall = pool.submit(timed_in_thread).result(timeout=30)
    assert ok is False and wall < 1.0 + 2


def test_close_then_reuse():
    _warm()
    grading.close()
    assert answers_match("2\\sqrt{3}", "\\sqrt{12}")


# --------------------------------------------------------------------------------------------------
# Several workers for one batch (hostile answers cost the limit about once per worker, not per answer)

HOSTILE = f"\\boxed{{{HANG}}}"
# pairs that reach math-verify (no fast path decides them), with their verdicts
SLOW_EASY = [
    ("\\sqrt{12}", "2\\sqrt{3}", T), ("(2,1)", "(1,2)", F), ("2(k+1)", "2k+2", T), ("\\tan x", "\\cot x", F),
    ("\\frac{1}{\\sqrt{3}}", "\\frac{\\sqrt{3}}{3}", T), ("x^3+3x+6", "x^3+3x-6", F), ("3.14", "\\pi", F),
    ("(b+2)(a+5)", "(a+5)(b+2)", T),
]  # fmt: skip


def _fresh_pool(n: int = 0) -> None:
    """Kill the pool's workers, then start `n` of them (idle and running: a batch may use them at once).

    Each grades one pair first: a fresh worker's first pair costs ~0.2 s more (math-verify's parser loads).
    """
    grading.close()
    workers = [grading._POOL.acquire() for _ in range(n)]
    for w in workers:
        assert w.run([("\\sqrt{12}", "2\\sqrt{3}")], 60.0) == [True]
    for w in workers:
        grading._POOL.release(w)


def _record_pids(monkeypatch) -> list[int]:
    """The pid of the worker process behind every chunk a worker is given, in the order they are given."""
    pids: list[int] = []
    run = grading._Worker.run

    def recording(self, pairs, timeout_s):
        pids.append(self.proc.pid if self.proc is not None else -1)
        return run(self, pairs, timeout_s)

    monkeypatch.setattr(grading._Worker, "run", recording)
    return pids


def _mixed(n_hostile: int) -> list[tuple[str, str, bool]]:
    """SLOW_EASY with `n_hostile` hostile answers (gold 1, verdict False) at 1, 2, 6, 9: two of them adjacent."""
    items = list(SLOW_EASY)
    for at in [1, 2, 6, 9][:n_hostile]:
        items.insert(at, (HANG, "1", F))
    return items


# timeout_s 1.0 where easy answers must come out right: 0.5 s is near an easy pair's time on a loaded machine
@pytest.mark.parametrize(("soft", "n_hostile"), [(0.8, 3), (0.0, 2)], ids=["soft-timer", "killed"])
def test_hostile_batch_agrees_with_one_by_one(monkeypatch, soft, n_hostile):
    monkeypatch.setattr(grading, "SOFT_TIMEOUT_FRACTION", soft)  # 0: only the parent's SIGKILL stops them
    monkeypatch.setattr(grading, "MAX_WORKERS", 2)
    monkeypatch.setattr(grading, "FANOUT_DELAY_S", 0.0)  # a helper restarts a killed worker at once
    _fresh_pool(2)  # both running: the chunks finish out of order
    items = _mixed(n_hostile)
    expected = [e for _, _, e in items]
    if soft:  # one by one, a killed worker restarts after each hostile answer: a second each, skipped
        assert [answers_match(p, g, timeout_s=1.0) for p, g, _ in items] == expected
    grades = grade_many([f"\\boxed{{{p}}}" for p, _, _ in items], [g for _, g, _ in items], timeout_s=1.0)
    assert [x.correct for x in grades] == expected
    assert [x.pred_answer for x in grades] == [p for p, _, _ in items]
    assert len(grading._POOL._all) <= 2


@pytest.mark.parametrize("workers", [1, 2])
def test_hostile_batch_spreads_over_workers(monkeypatch, workers):
    monkeypatch.setattr(grading, "MAX_WORKERS", workers)
    _fresh_pool(workers)
    pids = _record_pids(monkeypatch)
    grades = grade_many([HOSTILE] * 6, ["1"] * 6, timeout_s=0.5)
    assert [x.correct for x in grades] == [False] * 6
    assert len(pids) == 6  # small batches go one pair per message, so every worker can take a share
    assert len(set(pids)) == workers
    assert len(grading._POOL._all) == workers


def test_a_quick_batch_starts_no_second_worker(monkeypatch):
    monkeypatch.setattr(grading, "MAX_WORKERS", 2)
    monkeypatch.setattr(grading, "FANOUT_DELAY_S", 60.0)
    _fresh_pool()
    pids = _record_pids(monkeypatch)
    verdicts = grading._verify_many([(p, g) for p, g, _ in SLOW_EASY], 5.0)
    assert verdicts == [e for _, _, e in SLOW_EASY]
    assert len(set(pids)) == 1 and len(grading._POOL._all) == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_concurrent_hostile_batches_do_not_deadlock(monkeypatch, workers):
    monkeypatch.setattr(grading, "MAX_WORKERS", workers)
    monkeypatch.setattr(grading, "FANOUT_DELAY_S", 0.0)
    _fresh_pool()  # none running: the callers and their helpers race to start them
    items = _mixed(1)
    completions, golds = [f"\\boxed{{{p}}}" for p, _, _ in items], [g for _, g, _ in items]
    out: dict[int, list[bool]] = {}

    def caller(k: int) -> None:
        out[k] = [x.correct for x in grade_many(completions, golds, timeout_s=1.0)]

    threads = [threading.Thread(target=caller, args=(k,), daemon=True) for k in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a grading call is stuck"
    assert out == {k: [e for _, _, e in items] for k in range(2)}
    assert len(grading._POOL._all) <= workers


def test_try_acquire_never_waits(monkeypatch):
    monkeypatch.setattr(grading, "MAX_WORKERS", 1)
    pool = grading._Pool()  # its own pool: no process is started here
    worker = pool.acquire()
    assert pool.try_acquire(start=True) is None  # the only one is out
    pool.release(worker)
    assert pool.try_acquire(start=False) is None  # idle, but not running: starting one costs a second
    assert pool.try_acquire(start=True) is worker


def _data_dir() -> Path:
    env = os.environ.get("THINKRL_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def _rows(name: str, split: str = "test") -> list[dict]:
    path = _data_dir() / name / f"{split}.jsonl"
    if not path.exists():
        pytest.skip(f"benchmark data not found at {path} (set THINKRL_DATA_DIR to the data directory)")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.data
@pytest.mark.parametrize("name", ["math500", "aime24", "aime25", "amc23", "gsm8k"])
def test_every_gold_matches_itself(name):
    rows = _rows(name)
    if name == "gsm8k":
        rows = rows[:200]
        golds = [r["answer"].split("####")[-1].strip() for r in rows]
        assert [extract_answer(r["answer"]) for r in rows] == golds
    else:
        golds = [str(r["answer"]) for r in rows]  # amc23 stores floats: 27.0
    assert all(answers_match(g, g) for g in golds)
    assert [extract_answer("... so the answer is $\\boxed{" + g + "}$.") for g in golds] == golds
    # the math-verify path on its own must read every gold as equal to itself (no fast path)
    slow = grading._verify_many([(g, g) for g in golds], 5.0)
    assert [g for g, ok in zip(golds, slow, strict=True) if not ok] == []
    # and the plain forms a model writes: AIME 25 for 025, AMC 27 for 27.0, GSM8K 1600 for 1,600
    if name in ("aime24", "aime25", "amc23"):
        assert all(answers_match(str(int(float(g))), g) for g in golds)
    if name == "gsm8k":
        assert all(answers_match(g.replace(",", ""), g) for g in golds)
