"""Tests for thinkrl.tasks.arith: problem generation, the flawed corpus, and the oracle step labeller."""

import dataclasses
import random

import pytest

from thinkrl.errors import ThinkrlError
from thinkrl.steps import split_steps
from thinkrl.tasks.arith import (
    ArithConfig,
    ArithProblem,
    CorpusConfig,
    apply_op,
    canonical_solution,
    corpus_stats,
    extract_boxed_int,
    flawed_solution,
    generate_problems,
    make_corpus,
    oracle_label,
    problem_from_question,
)

ALL_LABELS = {"correct", "incorrect", "matched", "unmatched"}

# values: 17, 45, 135, 126, 63
P5 = problem_from_question("Start at 17. Add 28. Multiply by 3. Subtract 9. Divide by 2. What is the result?")
# values: 17, 45, 135, 126, 130
P4 = problem_from_question("Start at 17. Add 28. Multiply by 3. Subtract 9. Add 4. What is the result?")


def sol(*steps: str) -> str:
    return "\n\n".join(steps)


def assert_spans(text: str, res) -> None:
    """Exact spans, the project's default splitter's steps and answer part, labels of the right family."""
    pieces, answer = split_steps(text, "blank")
    assert [(s.char_start, s.char_end) for s in res.steps] == [(p.char_start, p.char_end) for p in pieces]
    assert res.answer_span == answer
    for i, s in enumerate(res.steps):
        assert s.idx == i
        assert text[s.char_start:s.char_end] == s.text
        assert s.text == s.text.strip() and s.text
        assert s.label in ALL_LABELS
    if res.answer_span is not None:
        a, b = res.answer_span
        assert text[a:b] == text[a:b].strip() and text[a:b]
    labels = set(res.labels)
    assert labels <= ({"correct", "incorrect"} if res.final_correct else {"matched", "unmatched"})


# --- problems -----------------------------------------------------------------------------------------


def test_hand_problem_parsed():
    assert P5.start == 17 and P5.answer == 63
    assert P5.ops == (("add", 28), ("mul", 3), ("sub", 9), ("div", 2))
    assert P5.values == (17, 45, 135, 126, 63)
    assert canonical_solution(P5) == (
        "17 + 28 = 45\n\n45 * 3 = 135\n\n135 - 9 = 126\n\n126 / 2 = 63\n\nThe answer is \\boxed{63}.")


def test_generation_deterministic_and_prefix_stable():
    a, b = generate_problems(200, seed=1), generate_problems(200, seed=1)
    assert a == b
    assert generate_problems(50, seed=1) == a[:50]
    c = generate_problems(200, seed=2)
    assert [p.question for p in a] != [p.question for p in c]
    assert a[7].problem_id == "arith-s1-000007"
    assert len({p.problem_id for p in a}) == 200


@pytest.mark.parametrize("cfg", [ArithConfig(), ArithConfig(max_value=20, min_ops=1, max_ops=9, addsub_max=7),
                                 ArithConfig(op_weights=(0.0, 0.0, 1.0, 1.0))])
def test_generation_bounds(cfg):
    probs = generate_problems(2000, seed=3, config=cfg)
    n_ops = set()
    for p in probs:
        assert cfg.min_ops <= len(p.ops) <= cfg.max_ops
        n_ops.add(len(p.ops))
        assert cfg.start_min <= p.start <= cfg.start_hi
        v = p.start
        for op, b in p.ops:
            assert b in cfg.operand_range(op)
            if op == "div":
                assert v % b == 0  # exact division
            v = apply_op(v, op, b)
            assert v is not None and 0 <= v <= cfg.max_value
        assert v == p.answer
        assert problem_from_question(p.question, p.problem_id) == p  # question <-> problem round trip
    assert n_ops == set(range(cfg.min_ops, cfg.max_ops + 1))
    if cfg.op_weights == (1.0, 1.0, 1.0, 1.0):
        ops = {op for p in probs for op, _ in p.ops}
        assert ops == {"add", "sub", "mul", "div"}


def test_question_format_and_bad_questions():
    p = generate_problems(1, seed=0)[0]
    assert p.question.startswith(f"Start at {p.start}. ") and p.question.endswith(" What is the result?")
    assert problem_from_question(p.question).answer == p.answer
    assert problem_from_question(p.question).problem_id.startswith("arith-q")
    for bad in ["", "Start at 5.", "Start at 5. Add 3.", "Start at 5. Divide by 2. What is the result?",
                "Start at 5. Add three. What is the result?", "Start at 5. Divide by 0. What is the result?",
                "What is 2 + 2?", None]:
        assert problem_from_question(bad) is None


@pytest.mark.parametrize("kw", [dict(min_ops=5, max_ops=2), dict(max_value=0), dict(start_max=500),
                                dict(muldiv_min=0), dict(op_weights=(0, 0, 0, 0)), dict(op_weights=(1, 1))])
def test_config_validation(kw):
    with pytest.raises(ThinkrlError):
        ArithConfig(**kw)


def test_corpus_config_validation():
    with pytest.raises(ThinkrlError):
        CorpusConfig(p_err=1.5)
    with pytest.raises(ThinkrlError):
        CorpusConfig(near_miss_max=0)


def test_configs_have_help():
    for cls in (ArithConfig, CorpusConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), (cls.__name__, f.name)


# --- oracle: clean and hand-written cases --------------------------------------------------------------


def test_canonical_solution_all_correct():
    for p in generate_problems(300, seed=5):
        text = canonical_solution(p)
        res = oracle_label(p, text)
        assert res.final_correct and res.pred_value == p.answer
        assert res.labels == ["correct"] * len(p.ops)
        assert [s.kind for s in res.steps] == ["equation"] * len(p.ops)
        assert [s.op_idx for s in res.steps] == list(range(len(p.ops)))
        assert all(s.arith_ok and s.value_ok and s.fixes is None for s in res.steps)
        assert_spans(text, res)
        a, b = res.answer_span
        assert text[a:b] == f"The answer is \\boxed{{{p.answer}}}."


def test_a_correct_with_reflection():
    text = sol("17 + 28 = 45", "45 * 3 = 125", "Wait, 45 * 3 = 135, not 125.", "135 - 9 = 126", "126 / 2 = 63",
               "The answer is \\boxed{63}.")
    res = oracle_label(P5, text)
    assert res.final_correct
    assert res.labels == ["correct", "incorrect", "incorrect", "correct", "correct"]
    assert [s.kind for s in res.steps] == ["equation", "equation", "reflection", "equation", "equation"]
    r = res.steps[2]
    assert r.fixes == 1 and r.not_value == 125 and r.result == 135 and r.value_ok and r.op_idx == 1
    assert res.steps[1].arith_ok is False and res.steps[1].value_ok is False
    assert all(s.fixes is None for i, s in enumerate(res.steps) if i != 2)
    assert_spans(text, res)


def test_correct_with_interval_between_error_and_reflection():
    # the wrong value is used by a step before the reflection catches the error two steps later
    text = sol("17 + 28 = 45", "45 * 3 = 125", "125 - 9 = 116", "Wait, 45 * 3 = 135, not 125.",
               "135 - 9 = 126", "126 / 2 = 63", "The answer is \\boxed{63}.")
    res = oracle_label(P5, text)
    assert res.labels == ["correct", "incorrect", "incorrect", "incorrect", "correct", "correct"]
    assert res.steps[3].fixes == 1


def test_b_uncaught_error_step_2_of_4():
    text = sol("17 + 28 = 45", "45 * 3 = 125", "125 - 9 = 116", "116 + 4 = 120", "The answer is \\boxed{120}.")
    res = oracle_label(P4, text)
    assert not res.final_correct and res.pred_value == 120
    assert res.labels == ["unmatched", "matched", "matched", "matched"]
    assert [s.arith_ok for s in res.steps] == [True, False, True, True]
    assert [s.value_ok for s in res.steps] == [True, False, False, False]
    res = oracle_label(P4, text[:text.index("\n\nThe answer")])  # no answer line: same labels
    assert res.pred_value is None and res.labels == ["unmatched", "matched", "matched", "matched"]
    res = oracle_label(P4, text[:text.index("116 +") + 3])  # cut mid-step: the fragment carries on the run
    assert res.steps[-1].kind == "other" and res.labels == ["unmatched", "matched", "matched", "matched"]


def test_c_wrong_answer_with_corrected_error_earlier():
    text = sol("17 + 28 = 46", "Wait, 17 + 28 = 45, not 46.", "45 * 3 = 135", "135 - 9 = 116", "116 / 2 = 58",
               "The answer is \\boxed{58}.")
    res = oracle_label(P5, text)
    assert not res.final_correct
    assert res.labels == ["unmatched", "unmatched", "unmatched", "matched", "matched"]
    assert res.steps[1].fixes == 0


def test_wrong_answer_caught_slip_inside_the_wrong_run():
    # an uncaught error, then a slip on the wrong value that a reflection fixes: the slip is unmatched
    text = sol("17 + 28 = 46", "46 * 3 = 148", "Wait, 46 * 3 = 138, not 148.", "138 - 9 = 129", "129 / 3 = 43",
               "The answer is \\boxed{43}.")
    res = oracle_label(P5, text)
    assert res.steps[2].fixes == 1
    assert res.labels == ["matched", "unmatched", "matched", "matched", "matched"]
    assert res.steps[4].op_idx is None and res.steps[4].value_ok is False  # wrong operand: unaligned


def test_d_redundant_recheck():
    text = sol("17 + 28 = 45", "Check: 17 + 28 = 45.", "45 * 3 = 135", "135 - 9 = 126", "126 / 2 = 63",
               "The answer is \\boxed{63}.")
    res = oracle_label(P5, text)
    assert res.labels == ["correct"] * 5
    assert res.steps[1].kind == "recheck" and res.steps[1].value_ok and res.steps[1].fixes is None
    # in a wrong solution: a re-check of a right value is unmatched, of a carried wrong value matched
    text = sol("17 + 28 = 45", "Check: 17 + 28 = 45.", "45 * 3 = 125", "Check: 45 * 3 = 125.", "125 - 9 = 116",
               "116 / 2 = 58", "The answer is \\boxed{58}.")
    res = oracle_label(P5, text)
    assert res.labels == ["unmatched", "unmatched", "matched", "matched", "matched", "matched"]


def test_slip_back_on_track_is_incorrect():
    text = sol("17 + 28 = 46", "46 * 3 = 135", "135 - 9 = 126", "126 / 2 = 63", "The answer is \\boxed{63}.")
    res = oracle_label(P5, text)
    assert res.final_correct
    assert res.labels == ["incorrect", "incorrect", "correct", "correct"]
    assert res.steps[1].arith_ok is False and res.steps[1].value_ok is True


def test_skipped_op_and_wrong_operator():
    res = oracle_label(P5, sol("17 + 28 = 45", "45 - 9 = 36", "36 / 2 = 18", "The answer is \\boxed{18}."))
    assert res.steps[1].op_idx == 2 and res.steps[1].value_ok is False and res.steps[1].arith_ok
    assert res.labels == ["unmatched", "matched", "matched"]
    res = oracle_label(P5, sol("17 + 28 = 45", "45 + 3 = 48", "48 - 9 = 39", "39 / 3 = 13", "\\boxed{13}"))
    assert res.labels == ["unmatched", "matched", "matched", "matched"]


def test_right_chain_wrong_or_missing_answer_is_all_unmatched():
    steps = ["17 + 28 = 45", "45 * 3 = 135", "135 - 9 = 126", "126 / 2 = 63"]
    for text in [sol(*steps), sol(*steps, "The answer is \\boxed{64}."), sol(*steps[:2], "The answer is 135."),
                 sol(*steps, "The answer is \\boxed{sixty-three}.")]:
        res = oracle_label(P5, text)
        assert not res.final_correct
        assert res.labels == ["unmatched"] * len(res.steps)
        assert_spans(text, res)
    res = oracle_label(P5, sol(*steps))
    assert res.pred_value is None and res.answer_span is None and len(res.steps) == 4


def test_f_repeated_step_distinct_spans():
    text = sol("17 + 28 = 45", "17 + 28 = 45", "45 * 3 = 135", "135 - 9 = 126", "126 / 2 = 63",
               "The answer is \\boxed{63}.")
    res = oracle_label(P5, text)
    assert res.steps[0].text == res.steps[1].text
    assert res.steps[0].char_start != res.steps[1].char_start
    assert res.steps[0].char_end <= res.steps[1].char_start
    assert res.labels == ["correct"] * 5
    assert_spans(text, res)
    # a problem with the same op twice: the repeat is a redo of op 0, not op 1
    p = problem_from_question("Start at 10. Add 5. Add 5. What is the result?")
    res = oracle_label(p, sol("10 + 5 = 15", "10 + 5 = 15", "15 + 5 = 20", "The answer is \\boxed{20}."))
    assert [s.op_idx for s in res.steps] == [0, 0, 1] and res.labels == ["correct"] * 3


def test_answer_part_and_boxed_extraction():
    # only the last piece can be the answer part: an earlier answer line is an `other` step
    text = sol("17 + 28 = 45", "The answer is \\boxed{45}.", "45 * 3 = 135", "135 - 9 = 126", "126 / 2 = 63",
               "So \\boxed{ 63 }")
    res = oracle_label(P5, text)
    assert res.pred_value == 63 and res.final_correct
    assert [s.kind for s in res.steps] == ["equation", "other", "equation", "equation", "equation"]
    assert res.labels == ["correct"] * 5
    assert text[res.answer_span[0]:res.answer_span[1]] == "So \\boxed{ 63 }"
    assert extract_boxed_int("\\boxed{63.5}") is None and extract_boxed_int("\\boxed{-4}") == -4
    assert extract_boxed_int("no box") is None and extract_boxed_int("\\boxed{1} \\boxed{2}") == 2
    res = oracle_label(P5, sol("17 + 28 = 45", "The answer is \\boxed{63}.", "45 * 3 = 135"))
    assert res.answer_span is None and res.pred_value is None and not res.final_correct  # text after it


def test_e_messy_text_never_raises_and_spans_exact():
    canon = canonical_solution(P5)
    cases = [
        "", "   ", "\n\n\n\n", "\r\n\r\n", "\\boxed{", "\\boxed{}", "The answer is", "Wait", "Wait, that's wrong.",
        "17 + 28 =", "= = =", "+ - * /", "1 / 0 = 0", "0 / 0 = 0", "x" * 5000, "9" * 5000 + " + 1 = 2",
        "17 + 28 = 45\n\n\n\n\n45 * 3 = 135\n \n135 - 9 = 126",
        canon.replace("\n", "\r\n"),
        "  17 + 28 = 45  \n\n\t45 * 3 = 135\u3000\n\n\u00a0The answer is \\boxed{135}.\u2028",
        "17 \u00d7 28 = 476\n\n\u05e9\u05dc\u05d5\u05dd \U0001f600\n\nWait, 17 \u2212 3 = 14, not 15.\n\n\U0001d7d9\U0001d7da",
        "Check:\n\nCheck: 1 + 1 = 2.\n\nWait, 5 * 5 = 25, not 24.\n\nWait, 9 / 2 = 4, not 5.",
        "\\boxed{\\boxed{63}}", "The answer is \\boxed{63}.\n\nThe answer is \\boxed{64}.",
        "\ud800 lone surrogate \n\n 17 + 28 = 45",
    ]
    cases += [canon[:i] for i in range(0, len(canon) + 1, 3)]  # truncated everywhere
    rng = random.Random(0)
    alphabet = ["1", "7", "45", " + ", " - ", " * ", " / ", " = ", "\n", "\n\n", "\r\n", " ", "Wait, ", ", not ",
                "Check: ", "\\boxed{", "}", ".", "The answer is ", "\u00e9", "-"]
    cases += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(500)]
    for text in cases:
        for p in (P5, P4):
            res = oracle_label(p, text)
            assert_spans(text, res)
    assert oracle_label(P5, None).steps == ()  # not even a string: no steps, no exception
    crlf = oracle_label(P5, canon.replace("\n", "\r\n"))
    assert crlf.final_correct and crlf.labels == ["correct"] * 4


def test_whitespace_line_separates_steps_like_the_default_splitter():
    text = "17 + 28 = 45\n \n45 * 3 = 135\r\n\t\r\n135 - 9 = 126\n\n126 / 2 = 63\n\nThe answer is \\boxed{63}."
    res = oracle_label(P5, text)
    assert res.final_correct and res.labels == ["correct"] * 4
    assert_spans(text, res)


# --- corpus --------------------------------------------------------------------------------------------


def expected_labels(roles, is_correct):
    """Labels implied by the generator's own roles (no uncaught error <=> correct answer)."""
    if is_correct:
        return ["incorrect" if r in ("caught_error", "reflection") else "correct" for r in roles]
    u = roles.index("uncaught_error")
    return ["matched" if i >= u and r != "caught_error" else "unmatched" for i, r in enumerate(roles)]


KIND_OF_ROLE = {"ok": "equation", "carried": "equation", "caught_error": "equation", "uncaught_error": "equation",
                "reflection": "reflection", "recheck": "recheck"}


def test_corpus_stats_and_oracle_agree_with_generator():
    corpus = make_corpus(5000, seed=0)
    st = corpus_stats(corpus)
    assert st["n"] == 5000
    assert 0.65 <= st["share_correct"] <= 0.85
    assert 0.18 <= st["share_reflection"] <= 0.35
    assert 0.0 < st["share_recheck"] < 0.5 and 3.5 < st["mean_steps"] < 6.5
    assert 3.8 < st["mean_ops"] < 4.2
    n_reflections = 0
    for ex in corpus:
        res = oracle_label(ex.problem, ex.solution_text)
        assert res.final_correct == ex.is_correct
        assert ex.is_correct == ("uncaught_error" not in ex.step_roles)
        assert len(res.steps) == ex.n_steps
        assert [s.kind for s in res.steps] == [KIND_OF_ROLE[r] for r in ex.step_roles]
        for i, (s, role) in enumerate(zip(res.steps, ex.step_roles, strict=True)):
            if role == "reflection":
                n_reflections += 1
                assert s.fixes == i - 1, ex.solution_text
                assert "Wait, " in s.text and ", not " in s.text
            else:
                assert s.fixes is None
            assert s.arith_ok == (role != "caught_error" and role != "uncaught_error")
        assert res.labels == expected_labels(ex.step_roles, ex.is_correct), ex.solution_text
        assert "\n\n\n" not in ex.solution_text and not ex.solution_text.endswith("\n")
        assert ex.has_reflection == ("reflection" in ex.step_roles)
    assert n_reflections > 1000
    assert_spans(corpus[0].solution_text, oracle_label(corpus[0].problem, corpus[0].solution_text))


def test_corpus_deterministic_and_wrong_values_plausible():
    a = make_corpus(300, seed=4)
    assert a == make_corpus(300, seed=4) and a[:100] == make_corpus(100, seed=4)
    assert [e.solution_text for e in a] != [e.solution_text for e in make_corpus(300, seed=5)]
    for ex in a:
        res = oracle_label(ex.problem, ex.solution_text)
        for s in res.steps:
            assert s.result is not None and s.result >= 0
            if not s.arith_ok:
                assert s.result != apply_op(s.lhs, s.op, s.rhs)


def test_flawed_solution_extremes():
    probs = generate_problems(200, seed=6)
    rng = random.Random(0)
    clean = CorpusConfig(p_err=0.0, p_recheck=0.0)
    assert all(flawed_solution(p, rng, clean) == canonical_solution(p) for p in probs)
    always_caught = CorpusConfig(p_err=1.0, p_reflect=1.0)
    for p in probs:
        text = flawed_solution(p, rng, always_caught)
        res = oracle_label(p, text)
        assert res.final_correct and text.count("Wait, ") == len(p.ops)
        assert res.labels == ["incorrect"] * len(res.steps) or "recheck" in [s.kind for s in res.steps]
    never_caught = CorpusConfig(p_err=1.0, p_reflect=0.0, p_recheck=0.0)
    wrong = [oracle_label(p, flawed_solution(p, rng, never_caught)) for p in probs]
    assert sum(not r.final_correct for r in wrong) >= 190  # a step with no fitting wrong value stays right
    assert all(r.labels[-1] == "matched" for r in wrong if not r.final_correct)


def test_problem_values_reject_inexact():
    bad = ArithProblem("x", 5, (("div", 2),), 2, "Start at 5. Divide by 2. What is the result?")
    with pytest.raises(ThinkrlError):
        _ = bad.values
