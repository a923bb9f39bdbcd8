"""The rule judge (intrinsic-signal protocol on arithmetic steps) and the oracle judge.

    pytest tests/test_rule_judge.py -q
"""

from __future__ import annotations

import random
import time
from fractions import Fraction

import pytest

from thinkrl.judge.oracle import OracleJudge
from thinkrl.judge.protocol import CORRECT, INCORRECT, LABELS_FOR, MATCHED, UNKNOWN, UNMATCHED, JudgeRequest
from thinkrl.judge.rule import RuleJudge, analyse_step, final_value
from thinkrl.steps import split_steps
from thinkrl.tasks.arith import make_corpus, oracle_label, problem_from_question

Q = "Start at 17. Add 28. Multiply by 3. Subtract 9. What is the result?"  # 45, 135, 126
C, X, M, U = CORRECT, INCORRECT, MATCHED, UNMATCHED
ERROR_LABELS = (INCORRECT, MATCHED)


def request(completion: str, correct: bool, question: str = Q, pred: str | None = None, gold: str = "126",
            splitter: str = "blank") -> JudgeRequest:
    steps, _ = split_steps(completion, splitter)
    return JudgeRequest("r0", question, completion, tuple(steps), correct, pred, gold)


def judge(completion: str, correct: bool, **kw):
    return RuleJudge().judge_many([request(completion, correct, **kw)])[0]


def steps_text(*steps: str, answer: int | str) -> str:
    return "\n\n".join([*steps, f"The answer is \\boxed{{{answer}}}."])


# ---------------------------------------------------------------------------------------------------
# Equations


@pytest.mark.parametrize("text, ok, result", [
    ("17 + 28 = 45", True, 45),
    ("45 * 3 = 125", False, 125),
    ("48/2 = 24", True, 24),
    ("$5 \\times 3 = \\$15$", True, 15),
    ("She makes 9 * 2 = $18 every day.", True, 18),
    ("Natalia sold <<48/2=24>>24 clips in May.", True, 24),
    ("3 + 4 + 5 = 12", True, 12),
    ("3 + 4 = 7 + 5 = 12", True, 12),
    ("1,000 + 2,500 = 3,500", True, 3500),
    ("10 / 3 = 3.33", True, Fraction(333, 100)),
    ("10 / 3 = 3.4", False, Fraction(34, 10)),
    ("50 * 20% = 10", True, 10),
    ("20% of 50 = 10", True, 10),
    ("5 x 3 = 15", True, 15),
    ("6 \u00f7 2 = 3 and 2 \u00d7 3 = 6", True, 3),
    ("\\frac{3}{4} \\cdot 8 = 6", True, 6),
    ("2(3 + 4) = 14", True, 14),
    ("45 times 3 is 135", True, 135),
    ("5 apples + 3 apples = 8 apples", True, 8),
    ("**Step 2:** (2) 3 + 4 = 7.", True, 7),
    ("10**10**10 = 5", None, 5),
    ("9999999999999999999999 * 99999999999999999 = 1", False, 1),
    ("3 / 4 * 2 = 1 1/2 square feet", True, Fraction(3, 2)),
    ("There are 60 students x 2/3 = <<60*2/3=40>>40 students", True, 40),
    ("72 cubic feet * 3/4 = 54 cubic feet", True, 54),
    ("so S + 143 = 200 - 16 = 184.", True, 184),  # `S + 143` is not all numbers: the chain starts after it
    ("0900 - 0130 = 0730 hours", None, None),  # leading zeros: a clock time, not a value
])
def test_equations_are_found_and_checked(text, ok, result):
    eqs = analyse_step(0, text).eqs
    assert eqs, text
    assert (eqs[0].ok, eqs[0].result) == (ok, None if result is None else Fraction(result))


@pytest.mark.parametrize("text", ["x = 5", "45 = 45", "Step 1: add them", "", "\\boxed{63}", "a = b + c",
                                  "He works M + 4 + 2 = 8 hours a day.", "So 7S = 847 people."])
def test_statements_are_not_equations(text):
    assert analyse_step(0, text).eqs == []


def test_cues_and_named_values():
    s = analyse_step(0, "Wait, 45 * 3 = 135, not 125.")
    assert s.hes and s.named_wrong == 125 and s.eqs[0].result == 135
    assert analyse_step(0, "I made a mistake: 125 is wrong.").neg
    assert analyse_step(0, "Let me re-check: 45 * 3 = 135.").check
    assert analyse_step(0, "It should be 135.").named_right == 135
    assert final_value("$1,234.50") == Fraction(123450, 100)
    assert final_value("\\frac{1}{2}") == Fraction(1, 2)
    assert final_value(None) is None and final_value("none") is None


# ---------------------------------------------------------------------------------------------------
# Correct solutions


def test_clean_correct_solution_is_all_correct():
    v = judge(steps_text("17 + 28 = 45", "45 * 3 = 135", "135 - 9 = 126", answer=126), True, pred="126")
    assert v.ok and v.labels == (C, C, C)
    assert all(r for r in v.rationales)


def test_reflection_marks_source_to_reflection():
    text = steps_text("17 + 28 = 45", "45 * 3 = 125", "Wait, 45 * 3 = 135, not 125.", "135 - 9 = 126", answer=126)
    v = judge(text, True, pred="126")
    assert v.labels == (C, X, X, C)
    assert "corrected by step 2" in v.rationales[1] and "125" in v.rationales[1]
    assert "correcting step 1" in v.rationales[2]


def test_late_reflection_covers_the_interval_and_the_steps_using_the_wrong_value():
    text = steps_text("17 + 28 = 45", "45 * 3 = 125", "125 - 9 = 116", "Wait, 45 * 3 = 135, not 125.",
                      "135 - 9 = 126", answer=126)
    v = judge(text, True, pred="126")
    assert v.labels == (C, X, X, X, C)
    assert "between the error source (step 1)" in v.rationales[2]


def test_cue_without_values_then_restated_correction():
    text = steps_text("17 + 28 = 45", "45 * 3 = 125", "Hmm, I made a mistake.", "45 * 3 = 135", "135 - 9 = 126",
                      answer=126)
    assert judge(text, True, pred="126").labels == (C, X, X, X, C)


def test_redundant_recheck_is_correct():
    text = steps_text("17 + 28 = 45", "Check: 17 + 28 = 45.", "45 * 3 = 135", "Let me re-check: 45 * 3 = 135.",
                      "135 - 9 = 126", answer=126)
    v = judge(text, True, pred="126")
    assert v.labels == (C, C, C, C, C)
    assert "re-check" in v.rationales[1]


def test_comparison_is_not_a_reflection():
    text = ("He paid it back in 5 * 12 = 60 months.\n\nTo pay it off in 2 years instead of 5, he pays "
            "250 - 100 = $150 more per month.\n\n#### 150")
    assert judge(text, True, question="A loan of $6,000 over 5 years or 2 years?", pred="150",
                 gold="150").labels == (C, C)


def test_uncaught_arithmetic_slip_in_a_correct_solution_is_incorrect():
    # documented departure: a wrong equation is incorrect without a reflection; the silent return too
    text = steps_text("17 + 28 = 44", "45 * 3 = 135", "135 - 9 = 126", answer=126)
    v = judge(text, True, pred="126")
    assert v.labels == (X, X, C)
    assert "no reflection" in v.rationales[0] and "silently" in v.rationales[1]


# ---------------------------------------------------------------------------------------------------
# Incorrect solutions


def test_uncaught_error_is_matched_from_the_error_on():
    text = steps_text("17 + 28 = 45", "45 * 3 = 125", "125 - 9 = 116", answer=116)
    v = judge(text, False, pred="116")
    assert v.labels == (U, M, M)
    assert "before the error source" in v.rationales[0]
    assert "125" in v.rationales[1] and "135" in v.rationales[1]


def test_earlier_corrected_error_is_unmatched():
    text = steps_text("17 + 28 = 44", "Wait, 17 + 28 = 45, not 44.", "45 * 3 = 125", "Check: 45 * 3 = 125.",
                      "125 - 9 = 116", answer=116)
    v = judge(text, False, pred="116")
    assert v.labels == (U, U, M, M, M)
    assert "corrected by step 1" in v.rationales[0]


def test_wrong_operand_departs_from_the_true_value():
    text = steps_text("17 + 28 = 45", "45 * 2 = 90", "90 - 9 = 81", answer=81)  # arithmetic fine, operand wrong
    v = judge(text, False, pred="81", gold="126")
    assert v.labels == (U, M, M)
    assert "departs" in v.rationales[1]


def test_right_chain_but_wrong_boxed_answer_is_unmatched():
    text = steps_text("17 + 28 = 45", "45 * 3 = 135", "135 - 9 = 126", answer=127)
    assert judge(text, False, pred="127").labels == (U, U, U)


# ---------------------------------------------------------------------------------------------------
# GSM8K-style text

GSM_Q = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
         "How many clips did Natalia sell altogether in April and May?")
WENG_Q = "Weng earns $9 an hour for babysitting, 2 hours a day. How much does she earn in 7 days?"


def test_gsm8k_annotations_correct():
    text = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n\n"
            "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n\n#### 72")
    v = judge(text, True, question=GSM_Q, pred="72", gold="72")
    assert v.labels == (C, C)


def test_gsm8k_prose_wrong_solution():
    text = ("She makes 9 * 2 = $18 every day.\n\nIn a week she makes 18 * 7 = $116.\n\n"
            "So she has $116 in total.\n\nThe answer is \\boxed{116}.")
    v = judge(text, False, question=WENG_Q, pred="116", gold="126")
    assert v.labels == (U, M, M)
    assert "18*7 = 116 is wrong (126)" in v.rationales[1]


def test_gsm8k_prose_reflection():
    text = ("She makes 9 * 2 = $18 every day.\n\nIn a week she makes 18 * 7 = $116.\n\n"
            "Hold on, that's wrong: 18 * 7 = $126.\n\nThe answer is \\boxed{126}.")
    v = judge(text, True, question=WENG_Q, pred="126", gold="126")
    assert v.labels == (C, X, X)


def test_wrong_solution_without_numbers_is_unknown():
    v = judge("I think it is big.\n\nVery big.\n\nThe answer is \\boxed{x}.", False, question="?", pred="x")
    assert v.labels == (UNKNOWN, UNKNOWN) and v.rationales[0]


# Two slips that cancel (seen in the warm-started policy's own rollouts): on ArithChain a value that is right
# again ends the detour, as in the oracle


def test_correct_solution_detour_ends_where_the_value_is_right_again():
    q = "Start at 15. Divide by 3. Subtract 2. Divide by 3. Subtract 1. Add 25. What is the result?"  # 5 3 1 0 25
    text = steps_text("15 / 3 = 5", "5 - 2 = 2", "2 / 3 = 1", "1 - 1 = 0", "0 + 25 = 25", answer=25)
    v = judge(text, True, question=q, pred="25", gold="25")
    assert v.labels == (C, X, X, C, C)
    p = problem_from_question(q)
    assert v.labels == tuple(oracle_label(p, text).labels)


def test_wrong_solution_error_source_is_where_the_final_wrong_run_begins():
    q = "Start at 31. Subtract 4. Subtract 5. Divide by 2. Subtract 4. Add 8. Add 18. What is the result?"
    # true values 27 22 11 7 15 33: 29 and 24 are wrong, 24 / 2 = 11 lands back on the truth, 11 - 4 = 8 is
    # where the values that reach the answer go wrong for good
    text = steps_text("31 - 4 = 29", "29 - 5 = 24", "24 / 2 = 11", "11 - 4 = 8", "8 + 8 = 26", "26 + 18 = 44",
                      answer=44)
    v = judge(text, False, question=q, pred="44", gold="33")
    assert v.labels == (U, U, U, M, M, M)
    assert v.labels == tuple(oracle_label(problem_from_question(q), text).labels)


# ---------------------------------------------------------------------------------------------------
# Agreement with the oracle on the flawed corpus


def _error_pr(pred: list[tuple[str, ...]], gold: list[tuple[str, ...]]) -> tuple[float, float]:
    tp = fp = fn = 0
    for ps, gs in zip(pred, gold, strict=True):
        for p, g in zip(ps, gs, strict=True):
            tp += p in ERROR_LABELS and g in ERROR_LABELS
            fp += p in ERROR_LABELS and g not in ERROR_LABELS
            fn += p not in ERROR_LABELS and g in ERROR_LABELS
    return tp / max(tp + fp, 1), tp / max(tp + fn, 1)


@pytest.fixture(scope="module")
def corpus_requests():
    reqs, oracle = [], []
    for i, e in enumerate(make_corpus(2000, seed=3)):
        o = oracle_label(e.problem, e.solution_text)
        steps, _ = split_steps(e.solution_text, "blank")
        reqs.append(JudgeRequest(f"r{i}", e.problem.question, e.solution_text, tuple(steps), o.final_correct,
                                 None if o.pred_value is None else str(o.pred_value), str(e.problem.answer)))
        oracle.append(tuple(o.labels))
    return reqs, oracle


def test_rule_judge_agrees_with_the_oracle_on_the_corpus(corpus_requests):
    reqs, oracle = corpus_requests
    done = []
    verdicts = RuleJudge().judge_many(reqs, progress=done.append)
    assert sum(done) == len(reqs)  # progress(k): k more rollouts done
    assert all(v.ok and len(v.labels) == len(r.steps) for v, r in zip(verdicts, reqs, strict=True))
    assert all(set(v.labels) <= set(LABELS_FOR[r.correct]) for v, r in zip(verdicts, reqs, strict=True))
    precision, recall = _error_pr([v.labels for v in verdicts], oracle)
    assert sum(lab in ERROR_LABELS for labs in oracle for lab in labs) > 1000  # the corpus has flaws
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)


def test_oracle_judge_reproduces_oracle_label(corpus_requests):
    reqs, oracle = corpus_requests
    verdicts = OracleJudge().judge_many(reqs)
    assert [v.labels for v in verdicts] == oracle
    assert all(v.ok and all(v.rationales) for v in verdicts)


def test_oracle_judge_failures_and_overlap():
    v = OracleJudge().judge_many([request("2 + 2 = 4\n\n\\boxed{4}", True, question=GSM_Q)])[0]
    assert v.ok and v.reason == "not an ArithChain problem" and v.labels == (UNKNOWN,)  # an answer, not a failure
    v = OracleJudge().judge_many([request(steps_text("17 + 28 = 45", answer=45), True)])[0]
    assert v.ok and "outcome mismatch" in v.reason
    text = "17 + 28 = 45\n45 * 3 = 125\n\n125 - 9 = 116\n\nThe answer is \\boxed{116}."
    v = OracleJudge().judge_many([request(text, False, pred="116", splitter="line")])[0]
    assert v.ok and v.labels == (U, U, M)  # the oracle's own chunk 0 holds two lines (an `other` step)
    assert "labelled by overlap" in v.rationales[0] and "labelled by overlap" in v.rationales[1]


# ---------------------------------------------------------------------------------------------------
# Robustness

ADVERSARIAL = [
    "", "   ", "\n\n\n", "10**10**10 = 5", "2 ** 100000 = 1", "10 ^ 4097 = 1", "0/0 = 0\n\n5/0 = 1\n\n0^-1 = 3",
    "9999999999999999999999 * 99999999999999999 = 1", "1" * 10000 + " = 5", "(" * 5000 + "1" + ")" * 5000 + " = 1",
    "1+" * 5000 + "1 = 5001", "- " * 3000 + "1 = 1", "2^" * 3000 + "2 = 4", "=" * 10000, "1=" * 5000,
    "9" * 5000 + " is wrong", "\\frac{" * 3000, "<<" * 3000 + ">>" * 3000, "1,000," * 2000, "\u0663 + \u0664 = \u0667",
    "Wait, not " + "9" * 6000, "1.5 * 2 = 3\n\n" * 300, "x" * 10000, "1 x " * 3000 + "1 = 1",
    "Wait, I made a mistake.\n\nOops, that's wrong.", "Wait, 1 + 1 = 3, not 2.\n\n" * 300,
]


def _garbage(rng: random.Random) -> str:
    alphabet = "0123456789+-*/=()^%$.,x\u00d7\u00f7 \n\n\\{}<>Waitnot" + "".join(
        chr(rng.randrange(32, 0x2FFF)) for _ in range(40))
    return "".join(rng.choice(alphabet) for _ in range(rng.choice([3, 40, 400, 2000])))


def test_fuzz_never_raises():
    rng = random.Random(0)
    texts = ADVERSARIAL + [_garbage(rng) for _ in range(300)]
    judge_ = RuleJudge()
    t0 = time.perf_counter()
    for k, text in enumerate(texts):
        for correct in (True, False):
            question = Q if k % 2 else text[:200]
            req = request(text, correct, question=question, pred=text[-30:] or None, gold=text[:10])
            v = judge_.judge_many([req])[0]
            assert v.ok, (v.reason, text[:80])
            assert len(v.labels) == len(v.rationales) == len(req.steps)
            assert set(v.labels) <= {*LABELS_FOR[correct], UNKNOWN}
    assert time.perf_counter() - t0 < 20


def test_bad_requests_do_not_raise():
    req = JudgeRequest("r", None, None, (), True, None, "")  # type: ignore[arg-type]
    assert RuleJudge().judge_many([req])[0].labels == ()
    steps, _ = split_steps("1 + 1 = 3\n\n2 + 2 = 4")
    req = JudgeRequest("r", None, None, tuple(steps), False, None, None)  # type: ignore[arg-type]
    v = RuleJudge().judge_many([req])[0]
    assert len(v.labels) == 2
