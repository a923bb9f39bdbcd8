"""Hand-computed checks of the paper's Propositions 1 and 2 and of every reward scheme."""

from __future__ import annotations

import math

import numpy as np
import pytest

from thinkrl.thoughts import (
    AnswerStart,
    RolloutInput,
    StepLabel,
    group_advantages,
    merge_thoughts,
    outcome_advantages,
)

C, INC, M, U, K = "correct", "incorrect", "matched", "unmatched", "unknown"


def ro(rid, correct, labels, tokens_per_step=3, answer_tokens=2):
    """A rollout whose steps are `tokens_per_step` tokens each (10 characters: 8 of text, a 2-character
    separator), then an answer part."""
    steps = tuple(StepLabel(i * tokens_per_step, (i + 1) * tokens_per_step, lab, 10 * i, 10 * i + 8)
                  for i, lab in enumerate(labels))
    n = len(labels) * tokens_per_step + answer_tokens
    return RolloutInput(rid, correct, n, steps, AnswerStart(len(labels) * tokens_per_step, 10 * len(labels) - 2))


def failed(rid, n):
    return RolloutInput(rid, True, n, None, AnswerStart(n, n))


def test_outcome_advantage_population_std():
    r = outcome_advantages([1, 1, 1, 1, 1, 1, 0, 0])
    # mean 0.75, population std sqrt(0.75 * 0.25) = 0.4330
    assert r[0] == pytest.approx(0.25 / (math.sqrt(0.1875) + 1e-4))
    assert r[0] == pytest.approx(0.577, abs=1e-3)
    assert r[-1] == pytest.approx(-1.732, abs=1e-3)


def test_worked_case_g8_six_correct_alpha1():
    group = [ro("c0", True, [C, INC, INC, C])] + [ro(f"c{i}", True, [C, C]) for i in range(1, 6)] + [
        ro("w0", False, [U, M, M]), ro("w1", False, [M])]
    adv = {a.rollout_id: a for a in group_advantages(group, "thought", alpha=1.0)}
    a = adv["c0"].advantages
    assert a[0:3] == pytest.approx([0.577] * 3, abs=1e-3)            # correct thought
    assert a[3:9] == pytest.approx([-0.173] * 6, abs=1e-3)           # incorrect thought: 0.577 - 0.75
    assert a[9:12] == pytest.approx([0.577] * 3, abs=1e-3)
    assert a[12:] == pytest.approx([0.577] * 2, abs=1e-3)            # answer part gets r_hat
    w = adv["w0"].advantages
    assert w[0:3] == pytest.approx([0.0] * 3)                        # unmatched: not punished
    assert w[3:9] == pytest.approx([-1.732] * 6, abs=1e-3)           # matched
    assert w[9:] == pytest.approx([-1.732] * 2, abs=1e-3)
    assert [t.label for t in adv["c0"].thoughts] == [C, INC, C]        # merged runs
    assert [t.reward for t in adv["c0"].thoughts] == pytest.approx([0.577, -0.173, 0.577], abs=1e-3)


def test_all_correct_group_error_thoughts_get_minus_alpha():
    group = [ro("a", True, [C, INC, C]), ro("b", True, [C]), ro("c", True, [C, C])]
    adv = {a.rollout_id: a for a in group_advantages(group, "thought", alpha=0.5)}
    assert np.all(adv["b"].advantages == 0) and np.all(adv["c"].advantages == 0)
    assert adv["a"].advantages[3:6] == pytest.approx([-0.5] * 3)     # r_hat 0, acc 1 -> -alpha
    assert adv["a"].advantages[:3] == pytest.approx([0] * 3)


def test_all_wrong_group_gives_nothing():
    group = [ro("a", False, [U, M]), ro("b", False, [M])]
    for scheme in ("outcome", "thought", "thought-static"):
        for a in group_advantages(group, scheme):
            assert np.all(a.advantages == 0), scheme


def test_failed_judgment_falls_back_to_outcome():
    group = [failed("f", 7), ro("w", False, [M])]
    adv = {a.rollout_id: a for a in group_advantages(group, "thought")}
    assert adv["f"].unknown_fallback
    assert adv["f"].advantages == pytest.approx([0.5 / (0.5 + 1e-4)] * 7)


def test_unknown_thought_gets_outcome_advantage():
    group = [ro("a", True, [K, INC]), ro("b", False, [K, U])]
    adv = {a.rollout_id: a for a in group_advantages(group, "thought")}
    rh = 0.5 / (0.5 + 1e-4)
    assert adv["a"].advantages[:3] == pytest.approx([rh] * 3)
    assert adv["a"].advantages[3:6] == pytest.approx([rh - 0.5] * 3)
    assert adv["b"].advantages[:3] == pytest.approx([-rh] * 3)
    assert adv["b"].advantages[3:6] == pytest.approx([0] * 3)


def test_thought_static_uses_alpha_not_alpha_acc():
    group = [ro("a", True, [C, INC]), ro("b", False, [M]), ro("c", False, [M]), ro("d", False, [M])]
    rh = outcome_advantages([1, 0, 0, 0])[0]
    a_dyn = group_advantages(group, "thought", alpha=1.0)[0].advantages
    a_sta = group_advantages(group, "thought-static", alpha=1.0)[0].advantages
    assert a_dyn[3:6] == pytest.approx([rh - 0.25] * 3, abs=1e-6)
    assert a_sta[3:6] == pytest.approx([rh - 1.0] * 3, abs=1e-6)


def test_outcome_scheme_ignores_labels():
    group = [ro("a", True, [C, INC]), ro("b", False, [U, M])]
    adv = group_advantages(group, "outcome")
    assert np.all(adv[0].advantages == pytest.approx(0.5 / (0.5 + 1e-4)))
    assert np.all(adv[1].advantages == pytest.approx(-0.5 / (0.5 + 1e-4)))


def test_step_scheme_return_to_go_by_hand():
    # one correct rollout [C, INC] and one wrong [M]; alpha 1, acc 0.5
    group = [ro("a", True, [C, INC], tokens_per_step=2, answer_tokens=1), ro("b", False, [M], 2, 1)]
    raw = np.array([1.0, 0.5, 1.0, 0.0, 0.0])  # a: C, INC, answer(1); b: M, answer(0)
    z = (raw - raw.mean()) / (raw.std() + 1e-4)
    adv = group_advantages(group, "step", alpha=1.0)
    a = adv[0].advantages  # 5 tokens: step0 [0,2), step1 [2,4), answer [4,5)
    assert a[0:2] == pytest.approx([z[0] + z[1] + z[2]] * 2, abs=1e-5)
    assert a[2:4] == pytest.approx([z[1] + z[2]] * 2, abs=1e-5)
    assert a[4] == pytest.approx(z[2], abs=1e-5)
    b = adv[1].advantages
    assert b[0:2] == pytest.approx([z[3] + z[4]] * 2, abs=1e-5)
    assert b[2] == pytest.approx(z[4], abs=1e-5)


def test_step_scheme_unmatched_normalises_to_zero_reward():
    group = [ro("a", True, [C], 1, 1), ro("b", False, [U, M], 1, 1)]
    th = group_advantages(group, "step")[1].thoughts
    assert th[0].label == U and th[0].reward == pytest.approx(0.0, abs=1e-9)


def test_merge_thoughts_separators_go_to_previous_thought():
    steps = [StepLabel(0, 3, C, 0, 5), StepLabel(4, 6, C, 7, 11), StepLabel(7, 9, INC, 13, 17),
             StepLabel(10, 12, C, 19, 23)]
    runs = merge_thoughts(steps, AnswerStart(13, 25))
    assert [(t.token_start, t.token_end, t.label) for t in runs] == [(0, 7, C), (7, 10, INC), (10, 13, C)]
    assert [(t.char_start, t.char_end) for t in runs] == [(0, 13), (13, 19), (19, 25)]  # chars run the same way
    assert [t.steps for t in runs] == [(0, 1), (2,), (3,)]


def test_thought_and_step_schemes_give_each_thought_its_char_span():
    """3 steps in 2 thoughts: the first thought holds its separator (chars 8..10), the last ends at the answer
    part; under `step` each thought is one step with the step's own spans."""
    group = [ro("a", True, [C, INC, INC]), ro("b", False, [M])]
    th = group_advantages(group, "thought")[0].thoughts
    assert [(t.token_start, t.token_end, t.char_start, t.char_end, t.label) for t in th] == [
        (0, 3, 0, 10, C), (3, 9, 10, 28, INC)]
    st = group_advantages(group, "step")[0].thoughts
    assert [(t.token_start, t.token_end, t.char_start, t.char_end) for t in st] == [
        (0, 3, 0, 8), (3, 6, 10, 18), (6, 9, 20, 28)]


def test_step_scheme_failed_judgment_gets_outcome_advantage():
    """A failed judgment gets r̂ on every token under `step` too (before the fix: r_i normalised over the
    group's step rewards, [0.894, -1.118] instead of r̂ [1, -1]); its outcome stays in the normalisation."""
    group = [failed("f", 4), ro("w", False, [M], 2, 1)]
    adv = {a.rollout_id: a for a in group_advantages(group, "step")}
    rh = 0.5 / (0.5 + 1e-4)
    assert adv["f"].unknown_fallback
    assert adv["f"].advantages == pytest.approx([rh] * 4, abs=1e-6)
    # pool: f's answer 1, w's matched step 0 and answer 0 -> mean 1/3, std sqrt(2)/3; z(0) = -1/sqrt(2)
    z0 = (0 - 1 / 3) / (math.sqrt(2) / 3 + 1e-4)
    assert adv["w"].advantages == pytest.approx([2 * z0, 2 * z0, z0], abs=1e-5)


def test_step_scheme_no_answer_rollouts_do_not_erase_the_others():
    """Two clean correct rollouts and two wrong ones with no answer (failed judgments): the correct ones keep a
    positive advantage (with failed rollouts left out of the pool they got 0 and were dropped)."""
    group = [ro("a", True, [C, C], 2, 1), ro("b", True, [C], 2, 1),
             RolloutInput("x", False, 5, None, AnswerStart(5, 5)), RolloutInput("y", False, 5, None,
                                                                                AnswerStart(5, 5))]
    adv = {a.rollout_id: a for a in group_advantages(group, "step")}
    # pool: a: 1, 1, 1; b: 1, 1; x: 0; y: 0 -> mean 5/7, std sqrt(10)/7
    z1 = (1 - 5 / 7) / (math.sqrt(10) / 7 + 1e-4)
    assert adv["a"].advantages == pytest.approx([3 * z1] * 2 + [2 * z1] * 2 + [z1], abs=1e-5)
    assert adv["b"].advantages == pytest.approx([2 * z1] * 2 + [z1], abs=1e-5)
    assert adv["x"].advantages == pytest.approx([-0.5 / (0.5 + 1e-4)] * 5, abs=1e-5)  # r̂: acc 1/2


def test_scheme_registry_records():
    from thinkrl.errors import ThinkrlError
    from thinkrl.thoughts import SCHEMES, scheme_named

    assert [n for n, s in SCHEMES.items() if not s.uses_judgments] == ["outcome"]
    with pytest.raises(ThinkrlError, match="unknown reward scheme 'grpo'"):
        scheme_named("grpo")
