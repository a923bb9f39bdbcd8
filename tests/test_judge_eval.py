"""Judge evaluation suites (thinkrl.judge_eval): ProcessBench first-error accuracy/F1 and the ArithChain
oracle suite's step precision/recall. Expected values are worked out by hand in the comments.

    pytest tests/test_judge_eval.py -q
"""

from __future__ import annotations

import json
from fractions import Fraction

import polars as pl
import pytest

from thinkrl.judge.protocol import CORRECT, INCORRECT, MATCHED, UNKNOWN, UNMATCHED, JudgeRequest, Verdict
from thinkrl.judge_eval import oracle_suite, processbench_suite
from thinkrl.tasks.arith import oracle_label, problem_from_question

C, X, M, U, Q_ = CORRECT, INCORRECT, MATCHED, UNMATCHED, UNKNOWN


class FakeJudge:
    """Answers each request with the labels chosen for its rollout id (one per request step)."""

    name = "fake"

    def __init__(self, labels: dict[str, tuple[str, ...]]):
        self.labels = labels
        self.seen: list[JudgeRequest] = []

    def judge_many(self, requests: list[JudgeRequest], progress=None) -> list[Verdict]:
        out = []
        for req in requests:
            labs = self.labels[req.rollout_id]
            assert len(labs) == len(req.steps), (req.rollout_id, labs, [s.text for s in req.steps])
            out.append(Verdict(req.rollout_id, labs, ("",) * len(labs)))
        self.seen += requests
        if progress:
            progress(len(requests))
        return out


def approx(x: Fraction | float):
    return pytest.approx(float(x), abs=1e-12)


# ---------------------------------------------------------------------------------------------------
# ProcessBench


def pb_case(pid: str, steps: list[str], label: int, final_answer_correct: bool) -> dict:
    meta = {"steps": steps, "label": label, "final_answer_correct": final_answer_correct, "generator": "test"}
    return {"problem_id": pid, "question": f"Question of {pid}?", "answer": "", "meta": json.dumps(meta)}


def pb_table(*cases: dict) -> pl.DataFrame:
    return pl.DataFrame(list(cases))


def test_processbench_f1_is_the_harmonic_mean():
    cases = pb_table(
        pb_case("pb-e1", ["Let x = 2.", "Then 2x = 5.", "So the answer is \\boxed{5}."], 1, False),
        pb_case("pb-e2", ["1 + 1 = 3.", "The answer is \\boxed{3}."], 0, False),
        pb_case("pb-c1", ["2 + 2 = 4.", "The answer is \\boxed{4}."], -1, True),
        pb_case("pb-c2", ["3 * 3 = 9.", "9 - 1 = 8.", "The answer is \\boxed{8}."], -1, True),
    )
    judge = FakeJudge({
        "pb-e1": (U, M, M),  # first error at 1 == label 1: hit
        "pb-e2": (U, M),     # first error at 1 != label 0: a miss (wrong index)
        "pb-c1": (C, C),     # no error predicted: hit
        "pb-c2": (C, Q_, C),  # `unknown` is not an error: no error predicted, hit
    })
    res = processbench_suite(cases, judge, "pb_test")
    # acc_erroneous = 1 hit / 2 erroneous = 1/2; acc_correct = 2 hits / 2 correct = 1
    # f1 = 2 * (1/2) * 1 / (1/2 + 1) = 1 / (3/2) = 2/3  (an arithmetic mean would give 3/4)
    assert res["acc_erroneous"] == approx(Fraction(1, 2))
    assert res["acc_correct"] == approx(Fraction(1, 1))
    assert res["f1"] == approx(Fraction(2, 3))
    # steps: 3 + 2 + 2 + 3 = 10, one of them unknown -> 1/10
    assert res["unknown_rate"] == approx(Fraction(1, 10))
    assert (res["suite"], res["subset"], res["items"]) == ("processbench", "pb_test", 4)
    assert res["precision"] is None and res["recall"] is None and res["exact_interval_rate"] is None
    # the protocol follows final_answer_correct; steps are the given ones, joined by blank lines
    seen = {r.rollout_id: r for r in judge.seen}
    assert seen["pb-e1"].correct is False and seen["pb-c1"].correct is True
    assert seen["pb-e2"].completion == "1 + 1 = 3.\n\nThe answer is \\boxed{3}."
    assert [s.text for s in seen["pb-c2"].steps] == ["3 * 3 = 9.", "9 - 1 = 8.", "The answer is \\boxed{8}."]


def test_processbench_f1_with_more_correct_than_erroneous_hits():
    # the other way round: acc_erroneous 1, acc_correct 1/3
    cases = pb_table(
        pb_case("e", ["a", "b"], 1, False),
        pb_case("c1", ["a", "b"], -1, True),
        pb_case("c2", ["a", "b"], -1, True),
        pb_case("c3", ["a", "b"], -1, True),
    )
    judge = FakeJudge({"e": (U, M), "c1": (C, C), "c2": (X, C), "c3": (C, X)})
    res = processbench_suite(cases, judge, "s")
    # acc_e = 1/1; acc_c = 1/3; f1 = 2 * 1 * (1/3) / (1 + 1/3) = (2/3) / (4/3) = 1/2  (arithmetic: 2/3)
    assert res["acc_erroneous"] == approx(Fraction(1, 1))
    assert res["acc_correct"] == approx(Fraction(1, 3))
    assert res["f1"] == approx(Fraction(1, 2))
    assert res["unknown_rate"] == 0


@pytest.mark.parametrize("labels, hit", [
    ((U, U, M, M), True),    # first error exactly at the label (2)
    ((U, M, M, M), False),   # first error too early
    ((U, U, U, M), False),   # first error too late
    ((U, U, U, U), False),   # no error predicted
    ((Q_, Q_, Q_, Q_), False),  # all unknown: no error predicted
    ((U, Q_, M, Q_), True),  # an unknown before it is not an error: first error still at 2
    ((Q_, Q_, M, U), True),
])
def test_processbench_first_error_must_match_exactly(labels, hit):
    cases = pb_table(pb_case("e", ["s0", "s1", "s2", "s3"], 2, False))
    res = processbench_suite(cases, FakeJudge({"e": labels}), "s")
    assert res["acc_erroneous"] == (1.0 if hit else 0.0)
    assert res["acc_correct"] is None and res["f1"] is None  # no correct cases
    assert res["unknown_rate"] == approx(Fraction(labels.count(Q_), 4))


def test_processbench_erroneous_case_with_correct_protocol_labels():
    # an erroneous case whose final answer is still correct: `incorrect` marks the error
    cases = pb_table(pb_case("e", ["s0", "s1", "s2"], 1, True), pb_case("c", ["s0", "s1"], -1, True))
    res = processbench_suite(cases, FakeJudge({"e": (C, X, X), "c": (C, C)}), "s")
    # acc_e = 1/1, acc_c = 1/1, f1 = 2 * 1 * 1 / 2 = 1
    assert (res["acc_erroneous"], res["acc_correct"], res["f1"]) == (1.0, 1.0, 1.0)


def test_processbench_without_erroneous_cases():
    cases = pb_table(pb_case("c1", ["a", "b"], -1, True), pb_case("c2", ["a"], -1, True))
    res = processbench_suite(cases, FakeJudge({"c1": (C, C), "c2": (X,)}), "s")
    assert res["acc_erroneous"] is None and res["f1"] is None
    assert res["acc_correct"] == approx(Fraction(1, 2))  # c1 hit, c2 predicted an error at 0: 1/2
    assert res["items"] == 2


def test_processbench_all_misses_gives_no_f1():
    cases = pb_table(pb_case("e", ["a", "b"], 0, False), pb_case("c", ["a", "b"], -1, True))
    res = processbench_suite(cases, FakeJudge({"e": (U, U), "c": (X, C)}), "s")
    # acc_e = 0/1, acc_c = 0/1: the harmonic mean 0 * 0 / 0 is undefined -> None
    assert (res["acc_erroneous"], res["acc_correct"], res["f1"]) == (0.0, 0.0, None)


# ---------------------------------------------------------------------------------------------------
# ArithChain oracle suite

Q = "Start at 17. Add 28. Multiply by 3. Subtract 9. What is the result?"  # 45, 135, 126


def solution(*steps: str, answer: int) -> str:
    return "\n\n".join([*steps, f"The answer is \\boxed{{{answer}}}."])


CLEAN = solution("17 + 28 = 45", "45 * 3 = 135", "135 - 9 = 126", answer=126)
# a slip caught by a reflection: the interval from the slip to the reflection is incorrect
REFLECTED = solution("17 + 28 = 45", "45 * 3 = 125", "Wait, 45 * 3 = 135, not 125.", "135 - 9 = 126", answer=126)
# a slip in the last step, never caught: only that step feeds the wrong answer
LAST_SLIP = solution("17 + 28 = 45", "45 * 3 = 135", "135 - 9 = 127", answer=127)


def rollout(rid: str, completion: str, correct: bool, pred: str, question: str = Q) -> dict:
    return {"rollout_id": rid, "question": question, "completion": completion, "correct": correct,
            "pred_answer": pred, "answer": "126"}


def test_oracle_truth_of_the_fixtures():
    # the oracle labels the suite compares against (hand-derived from the oracle_label rules)
    p = problem_from_question(Q)
    assert oracle_label(p, CLEAN).labels == [C, C, C]
    assert oracle_label(p, REFLECTED).labels == [C, X, X, C]
    assert oracle_label(p, LAST_SLIP).labels == [U, U, M]


def test_oracle_suite_precision_recall_exact_and_unknown():
    rollouts = pl.DataFrame([
        rollout("a", CLEAN, True, "126"),
        rollout("b", REFLECTED, True, "126"),
        rollout("d", LAST_SLIP, False, "127"),
        rollout("e", CLEAN, True, "126"),
        rollout("z", "2 + 2 = 4\n\nThe answer is \\boxed{4}.", True, "4", question="What is 2 + 2?"),
    ])
    judge = FakeJudge({
        "a": (C, X, Q_),     # truth C C C:   mine {1}, real {}     -> FP 1;        not exact; 1 unknown
        "b": (C, X, C, C),   # truth C X X C: mine {1}, real {1, 2} -> TP 1, FN 1;  not exact
        "d": (U, U, Q_),     # truth U U M:   mine {},  real {2}    -> FN 1;        not exact; 1 unknown
        "e": (C, C, C),      # truth C C C:   mine {},  real {}     -> exact
        "z": (C,),           # not an ArithChain question: skipped
    })
    res = oracle_suite(rollouts, judge, subset="arith_test")
    # TP = 1, FP = 1, FN = 1 + 1 = 2
    # precision = TP / (TP + FP) = 1 / 2;  recall = TP / (TP + FN) = 1 / 3
    assert res["precision"] == approx(Fraction(1, 2))
    assert res["recall"] == approx(Fraction(1, 3))
    # items: a, b, d, e = 4 (z skipped); exact: only e -> 1/4
    assert res["items"] == 4
    assert res["exact_interval_rate"] == approx(Fraction(1, 4))
    # steps: 3 + 4 + 3 + 3 = 13, unknown: 2 -> 2/13
    assert res["unknown_rate"] == approx(Fraction(2, 13))
    assert (res["suite"], res["subset"]) == ("oracle", "arith_test")
    assert res["acc_erroneous"] is None and res["acc_correct"] is None and res["f1"] is None


def test_oracle_suite_recall_above_precision():
    # the mirror case: recall above precision
    rollouts = pl.DataFrame([rollout("b", REFLECTED, True, "126"), rollout("d", LAST_SLIP, False, "127")])
    judge = FakeJudge({
        "b": (X, X, C, X),   # truth C X X C: mine {0, 1, 3}, real {1, 2} -> TP 1, FP 2, FN 1; not exact
        "d": (U, U, M),      # truth U U M:   mine {2},       real {2}    -> TP 1;               exact
    })
    res = oracle_suite(rollouts, judge)
    # TP = 2, FP = 2, FN = 1: precision = 2 / (2 + 2) = 1/2; recall = 2 / (2 + 1) = 2/3
    assert res["precision"] == approx(Fraction(1, 2))
    assert res["recall"] == approx(Fraction(2, 3))
    assert res["exact_interval_rate"] == approx(Fraction(1, 2))  # d of b, d
    assert res["unknown_rate"] == 0.0 and res["subset"] == "arith"


def test_oracle_suite_perfect_judge_and_no_error_labels():
    rollouts = pl.DataFrame([rollout("a", CLEAN, True, "126"), rollout("b", REFLECTED, True, "126"),
                             rollout("d", LAST_SLIP, False, "127")])
    perfect = oracle_suite(rollouts, FakeJudge({"a": (C, C, C), "b": (C, X, X, C), "d": (U, U, M)}))
    # TP = 2 + 1 = 3, FP = FN = 0 -> precision = recall = 3/3 = 1; every rollout exact -> 3/3
    assert (perfect["precision"], perfect["recall"], perfect["exact_interval_rate"]) == (1.0, 1.0, 1.0)
    silent = oracle_suite(rollouts, FakeJudge({"a": (C, C, C), "b": (C, C, C, C), "d": (Q_, Q_, Q_)}))
    # no error labels at all: TP + FP = 0 -> precision None; recall = 0 / (0 + 3) = 0
    assert silent["precision"] is None and silent["recall"] == 0.0
    assert silent["exact_interval_rate"] == approx(Fraction(1, 3))  # only a
    assert silent["unknown_rate"] == approx(Fraction(3, 10))  # 3 unknown of 3 + 4 + 3 = 10 steps


def test_failed_requests_are_not_scored_and_do_not_finish_the_evaluation(tmp_path, monkeypatch):
    """Before: with the server answering 500, every label `unknown` meant "no error found" and ProcessBench
    scored acc_correct 1.0 on a finished artifact. Now failed requests are counted, left out of every figure,
    and the stage does not finish without --allow-failed."""
    from fault_server import FaultServer

    from thinkrl.errors import IncompleteError
    from thinkrl.judge import make_judge
    from thinkrl.judge_eval import JudgeEvalConfig, run_judge_eval_stage

    cases = pb_table(pb_case("a", ["1 + 1 = 2", "so 2"], -1, True), pb_case("b", ["1 + 1 = 3", "so 3"], 0, False))
    with FaultServer() as srv:
        srv.mode = "500"
        judge = make_judge(f"openai:{srv.url}", model="m", timeout_s=5, retries=0)
        row = processbench_suite(cases, judge, "gsm8k")
        assert row["failed"] == 2 and row["items"] == 0 and row["acc_correct"] is None and row["f1"] is None
        monkeypatch.setattr("thinkrl.problems.named_problems", lambda name, data_dir, limit=None: cases)
        cfg = JudgeEvalConfig(judge=f"openai:{srv.url}", judge_model="m", processbench="gsm8k", retries=0)
        with pytest.raises(IncompleteError, match="2 judge requests got no verdict"):
            run_judge_eval_stage(tmp_path / "je", cfg, None, tmp_path)
        assert not (tmp_path / "je" / "_manifest.json").exists()
        m = run_judge_eval_stage(tmp_path / "je", JudgeEvalConfig(**{**cfg.__dict__, "allow_failed": True}), None,
                                 tmp_path)
        assert m.metrics["rows"][0]["failed"] == 2 and (tmp_path / "je" / "_manifest.json").exists()
