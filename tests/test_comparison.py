"""thinkrl.comparison: every figure by hand — interpolated samples to target, the area under the curve, the
paper's efficiency, the paired bootstrap (deterministic, pairing cancels shared seed variance), the exact
sign-flip p of 3 and 4 seeds, `compare` with a censored run, and the mechanism shares of a hand-made round."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from thinkrl.artifacts import ArtifactWriter, write_artifact
from thinkrl.comparison import (
    advantage_shares,
    auc,
    compare,
    curve,
    efficiency,
    paired_difference,
    paired_ratio,
    round_shares,
    samples_to_target,
    sign_flip_p,
)
from thinkrl.segment import Sampling, segment
from thinkrl.summary import EvalPoint, RoundSummary, RunSummary

CURVE = [(0, 0.40), (100, 0.45), (200, 0.55)]


# --------------------------------------------------------------------------------------------- per run
def test_samples_to_target_interpolates_the_first_crossing():
    assert samples_to_target(CURVE, 0.50) == pytest.approx(150)   # 100 + (0.05 / 0.10) * 100
    assert samples_to_target(CURVE, 0.42) == pytest.approx(40)    # 0 + (0.02 / 0.05) * 100
    assert samples_to_target(CURVE, 0.45) == pytest.approx(100)   # exactly at a point
    assert samples_to_target(CURVE, 0.40) == 0                    # the first point is already there
    assert samples_to_target(CURVE, 0.30) == 0
    assert samples_to_target(CURVE, 0.56) is None                 # never reached
    assert samples_to_target(CURVE[::-1], 0.50) == pytest.approx(150)  # points are sorted by samples
    # the first crossing counts, a later dip does not undo it
    assert samples_to_target([(0, 0.4), (100, 0.6), (200, 0.3)], 0.5) == pytest.approx(50)


def test_auc_by_hand():
    # 100 (0.40 + 0.45) / 2 + 100 (0.45 + 0.55) / 2 = 42.5 + 50 = 92.5, over 200
    assert auc(CURVE, 200) == pytest.approx(0.4625)
    # ends between points at the interpolated 0.50: 42.5 + 50 (0.45 + 0.50) / 2 = 66.25, over 150
    assert auc(CURVE, 150) == pytest.approx(66.25 / 150)
    assert auc(CURVE, 50) == pytest.approx(50 * (0.40 + 0.425) / 2 / 50)
    with pytest.raises(ValueError, match="stops at 200"):        # a run that stopped early is not extended
        auc(CURVE, 250)
    with pytest.raises(ValueError, match="eval point at 0"):     # no eval-initial
        auc(CURVE[1:], 200)


def test_efficiency_matches_the_paper():
    # the paper's 1.5B figures from one start accuracy 48.06: TP-GRPO 50.10 on 5.6K solutions, GRPO 49.64 on 34K
    assert efficiency(0.4806, 0.5010, 5600) == pytest.approx(36.43, abs=0.005)
    assert efficiency(0.4806, 0.4964, 34_000) == pytest.approx(4.65, abs=0.005)
    assert efficiency(0.30, 0.40, 20_000) == pytest.approx(50)   # 10 points / 20K * 1e5
    with pytest.raises(ValueError):
        efficiency(0.3, 0.4, 0)


# --------------------------------------------------------------------------------------------- paired statistics
B = [0.10, 0.50, 0.90, 0.30, 0.70, 0.20, 0.80, 0.40]          # large seed-to-seed spread ...
A = [x + 0.05 for x in B]                                     # ... the same +0.05 under every seed


def _unpaired_difference_interval(a, b, n_boot=10_000, seed=0):
    """What resampling a and b independently would give (the break the pairing test guards against)."""
    rng = np.random.default_rng(seed)
    xa, xb = np.asarray(a), np.asarray(b)
    boot = xa[rng.integers(0, len(a), (n_boot, len(a)))].mean(1) - xb[rng.integers(0, len(b), (n_boot, len(b)))].mean(1)
    return np.quantile(boot, [0.025, 0.975])


def test_pairing_cancels_shared_seed_variance():
    d = paired_difference(A, B, seed=0)
    assert d.estimate == pytest.approx(0.05)
    assert d.low == pytest.approx(0.05, abs=1e-12) and d.high == pytest.approx(0.05, abs=1e-12)
    lo, hi = _unpaired_difference_interval(A, B)
    assert hi - lo > 0.3                                      # the unpaired interval spans zero: uninformative
    assert lo < 0 < hi
    r = paired_ratio([2 * x for x in B], B)                   # a constant ratio: zero width too
    assert (r.estimate, r.low, r.high) == pytest.approx((2.0, 2.0, 2.0))


def test_bootstrap_is_deterministic_and_brackets_the_estimate():
    a, b = [0.5213, 0.4717, 0.6101, 0.5529, 0.4893, 0.5807], [0.5031, 0.4852, 0.5277, 0.5119, 0.4968, 0.5243]
    d = paired_difference(a, b, seed=7)
    assert d == paired_difference(a, b, seed=7)
    assert paired_difference(a, b, seed=7, n_boot=500) != paired_difference(a, b, seed=8, n_boot=500)
    assert d.estimate == pytest.approx(np.mean(np.subtract(a, b)))
    assert d.low < d.estimate < d.high and (d.n, d.n_boot, d.level) == (6, 10_000, 0.95)
    assert d.low >= min(np.subtract(a, b)) and d.high <= max(np.subtract(a, b))
    # a ratio of means, not a mean of ratios: (2 + 3) / (1 + 3) = 1.25 (the mean of the ratios is 1.5)
    assert paired_ratio([2, 3], [1, 3]).estimate == pytest.approx(1.25)
    with pytest.raises(ValueError, match="positive"):
        paired_ratio([2, 3], [0, 3])
    with pytest.raises(ValueError, match="equal-length"):
        paired_difference([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        paired_difference([1, float("nan")], [1, 2])


def test_sign_flip_p_by_exact_enumeration():
    # d = (1, 2, 3): |sum| over the 8 sign patterns is 6, 0, 2, 4, 4, 2, 0, 6; two reach 6 -> 2/8
    assert sign_flip_p([1, 2, 3], [0, 0, 0]) == pytest.approx(0.25)
    # d = (1, 2, 3, 4), sum 10: only ++++ and ---- reach it -> 2/16, the smallest p of 4 seeds
    assert sign_flip_p([1, 2, 3, 4], [0, 0, 0, 0]) == pytest.approx(0.125)
    # d = (1, -2, 3, 4), sum 6: flipping a subset S of magnitudes gives 10 - 2 sum(S); |.| >= 6 iff sum(S) <= 2
    # ({}, {1}, {2}) or >= 8 ({1,3,4}, {2,3,4}, {1,2,3,4}) -> 6/16
    assert sign_flip_p([1, 0, 3, 4], [0, 2, 0, 0]) == pytest.approx(0.375)
    assert sign_flip_p([1, 1, 1], [1, 1, 1]) == 1.0          # no difference at all
    # ties in floating point: accuracies on a fixed problem set are multiples of 0.01 here, d = (-.15, .13, .15,
    # -.16), sum -0.03; flipping S gives -0.03 - 2 sum(S), short of |0.03| only for sum(S) in (-0.03, 0):
    # {-.15, .13} and {.15, -.16}. {-.15, .15} (sum 0) and {.13, -.16} (sum -0.03) tie with the observed: count
    assert sign_flip_p([0.52, 0.46, 0.69, 0.37], [0.67, 0.33, 0.54, 0.53]) == pytest.approx(14 / 16)
    assert sign_flip_p([1] * 5, [0] * 5) == pytest.approx(1 / 16)  # 5 seeds can never give p < 0.05
    # 17 seeds: random patterns, p = (1 + hits) / (1 + 10000); only ++..+ and --..- reach (2 of 2^17)
    p = sign_flip_p([1] * 17, [0] * 17, seed=3)
    assert 1 / 10_001 <= p <= 4 / 10_001
    assert p == sign_flip_p([1] * 17, [0] * 17, seed=3)


# --------------------------------------------------------------------------------------------- two schemes
def _run(name: str, scheme: str, seed: int, points, kept: list[int] | None = None) -> RunSummary:
    evals = [EvalPoint(where="eval-initial" if i == 0 else f"round-{i - 1:03d}/eval", trained_rounds=i,
                       samples_consumed=x, avg_at_k=y, pass_at_k=y, maj_at_k=y, mean_tokens=10.0, k=4, problems=50)
             for i, (x, y) in enumerate(points)]
    rounds = [RoundSummary(round=i, rollouts=100, samples_consumed=100 * (i + 1),
                           kept_rollouts=None if kept is None else kept[i]) for i in range(len(points) - 1)]
    return RunSummary(name=name, path=name, scheme=scheme, seed=seed, rounds=rounds, evals=evals)


def test_compare_pairs_by_seed_and_censors_runs_that_never_reach():
    tp = [_run("tp-s1", "thought", 1, [(0, 0.3), (100, 0.5), (200, 0.5)], kept=[50, 50]),
          _run("tp-s0", "thought", 0, [(0, 0.4), (100, 0.5), (200, 0.6)], kept=[40, 60]),
          _run("tp-s2", "thought", 2, [(0, 0.4), (100, 0.5)])]   # no grpo seed 2: left out, its budget too
    grpo = [_run("grpo-s0", "outcome", 0, [(0, 0.4), (100, 0.45), (200, 0.5)], kept=[80, 80]),
            _run("grpo-s1", "outcome", 1, [(0, 0.3), (100, 0.35), (200, 0.4)], kept=[80, 80])]
    c = compare(tp, grpo, n_boot=2000)
    assert c["seeds"] == [0, 1] and c["unpaired_seeds"] == [2]
    assert c["target"] == pytest.approx(0.45) and c["auc_budget"] == 200   # grpo's mean final accuracy
    s = c["samples_to_target"]
    # tp: seed 0 (0.05 / 0.1) * 100 = 50, seed 1 (0.15 / 0.2) * 100 = 75; grpo: seed 0 at 100, seed 1 never: 200
    assert s["a"] == pytest.approx([50, 75]) and s["b"] == pytest.approx([100, 200])
    assert (s["censored_a"], s["censored_b"], s["bound"]) == (0, 1, "lower")
    assert s["fewer_samples"].estimate == pytest.approx(300 / 125)          # mean 150 / mean 62.5
    assert s["difference"].estimate == pytest.approx(-87.5)
    f = c["final_acc"]
    assert f["difference"].estimate == pytest.approx(0.1) and f["p"] == pytest.approx(0.5)   # 2 seeds: 2/4
    assert f["difference"].low == pytest.approx(0.1) and f["difference"].high == pytest.approx(0.1)
    # tp seed 0: (45 + 55) / 200 = 0.5, seed 1: (40 + 50) / 200 = 0.45; grpo: 0.45, 0.35
    assert c["auc"]["a"] == pytest.approx([0.5, 0.45]) and c["auc"]["b"] == pytest.approx([0.45, 0.35])
    # 20 points / 200 samples * 1e5 = 10000; per kept rollout: 20 / 100 * 1e5
    assert c["efficiency"]["a"] == pytest.approx([10_000, 20 / 200 * 1e5])
    assert c["efficiency_kept"]["a"] == pytest.approx([20 / 100 * 1e5, 20 / 100 * 1e5])
    assert c["efficiency_kept"]["b"] == pytest.approx([10 / 160 * 1e5, 10 / 160 * 1e5])
    with pytest.raises(ValueError, match=">= 2 seeds"):
        compare(tp[:1], grpo)
    # an A run that never reaches: the ratio overstates A's advantage, an upper bound
    c = compare(tp[:2], grpo, target=0.55, n_boot=200)
    assert c["samples_to_target"]["bound"] == "mixed"
    c = compare(tp[:2], grpo, target=0.36, n_boot=200)
    assert c["samples_to_target"]["censored_a"] == 0 and c["samples_to_target"]["bound"] is None
    assert curve(tp[0]) == [(0.0, 0.3), (100.0, 0.5), (200.0, 0.5)]


def test_compare_upper_bound_when_only_a_is_censored():
    a = [_run("a0", "thought", 0, [(0, 0.3), (100, 0.4)]), _run("a1", "thought", 1, [(0, 0.3), (100, 0.6)])]
    b = [_run("b0", "outcome", 0, [(0, 0.3), (100, 0.5)]), _run("b1", "outcome", 1, [(0, 0.3), (100, 0.5)])]
    s = compare(a, b, target=0.5, n_boot=200)["samples_to_target"]
    assert (s["censored_a"], s["censored_b"], s["bound"]) == (1, 0, "upper")
    assert s["a"] == pytest.approx([100, 200 / 3]) and s["b"] == pytest.approx([100, 100])


# --------------------------------------------------------------------------------------------- mechanism
ADVANTAGES = [  # r̂ = ±1; the thought scheme's changes: c1's error thought, w1's unmatched thought; w2 one token
    {"rollout_id": "c1", "correct": True, "outcome_advantage": 1.0, "advantages": [1.0, 1.0, 0.5, 0.5, 1.0, 1.0]},
    {"rollout_id": "c2", "correct": True, "outcome_advantage": 1.0, "advantages": [1.0, 1.0, 1.0, 1.0000001]},
    {"rollout_id": "w1", "correct": False, "outcome_advantage": -1.0, "advantages": [0.0, 0.0, -1.0, -1.0, -1.0]},
    {"rollout_id": "w2", "correct": False, "outcome_advantage": -1.0, "advantages": [-1.5, -1.0, -1.0]},
]
THOUGHTS = [  # (rollout, start, end, label); d1 was dropped (all-zero advantages): in thoughts only
    ("c1", 0, 2, "correct"), ("c1", 2, 4, "incorrect"), ("c2", 0, 3, "correct"),
    ("w1", 0, 2, "unmatched"), ("w1", 2, 4, "matched"), ("w2", 0, 2, "matched"), ("d1", 0, 9, "unmatched"),
]


def _thought_rows():
    return [{"rollout_id": r, "thought_idx": i, "token_start": s, "token_end": e, "label": lab}
            for i, (r, s, e, lab) in enumerate(THOUGHTS)]


def test_advantage_shares_by_hand():
    m = advantage_shares(pl.DataFrame(ADVANTAGES), pl.DataFrame(_thought_rows()))
    # 18 tokens; changed: c1 tokens 2, 3 (error), w1 tokens 0, 1 (unmatched), w2 token 0 (matched: other)
    assert (m["tokens"], m["changed"], m["changed_error"], m["changed_unmatched"], m["changed_other"]) == (18, 5, 2, 2, 1)
    assert (m["error_tokens"], m["unmatched_tokens"]) == (2, 2)
    assert m["share_changed"] == pytest.approx(5 / 18)
    assert (m["share_changed_error"], m["share_changed_unmatched"], m["share_changed_other"]) == pytest.approx(
        (2 / 18, 2 / 18, 1 / 18))
    # GRPO itself (advantages = r̂ everywhere, no thoughts): nothing differs
    grpo = pl.DataFrame(ADVANTAGES).with_columns(
        pl.col("advantages").list.eval(pl.element() * 0) + pl.col("outcome_advantage"))
    g = advantage_shares(grpo, pl.DataFrame(_thought_rows()).clear())
    assert (g["tokens"], g["changed"], g["share_changed"]) == (18, 0, 0)
    empty = advantage_shares(pl.DataFrame(ADVANTAGES).clear(), pl.DataFrame(_thought_rows()).clear())
    assert (empty["tokens"], empty["share_changed"]) == (0, None)


def test_round_shares_reads_a_thoughts_artifact(tmp_path):
    thoughts = [{**t, "char_start": t["token_start"], "char_end": t["token_end"],
                 "text": "x" * (t["token_end"] - t["token_start"]), "reward": 0.0} for t in _thought_rows()]
    advs = [{**a, "problem_id": "p", "round": 0, "prompt_ids": [1], "completion_ids": [7] * len(a["advantages"]),
             "advantages": [float(x) for x in a["advantages"]], "behaviour_logprobs": None, "temperature": 1.0,
             "max_tokens": 16, "finish_reason": "stop", "incorrect_tokens": 2 if a["rollout_id"] == "c1" else 0}
            for a in ADVANTAGES]
    write_artifact(tmp_path / "thoughts", "segment", {"scheme": "thought"}, {"thoughts": thoughts, "advantages": advs})
    m = round_shares(tmp_path / "thoughts")
    assert (m["tokens"], m["changed"], m["changed_error"], m["changed_unmatched"], m["changed_other"]) == (18, 5, 2, 2, 1)


def _segmented(tmp_path, scheme: str) -> dict:
    """round_shares of the thoughts artifact the segment stage writes for one group: a correct rollout with an
    error thought (tokens 3..5), a wrong one with an unmatched thought (0..2), a wrong one with no answer."""
    def rollout(rid, n, correct, pred, finish="stop"):
        return {"rollout_id": rid, "problem_id": "p", "round": 0, "prompt_ids": [1], "completion": "",
                "completion_ids": [9] * n, "logprobs": [-0.5] * n, "correct": correct, "pred_answer": pred,
                "finish_reason": finish}

    def steps(rid, spans):
        return [{"rollout_id": rid, "step_idx": i, "char_start": 0, "char_end": 0, "token_start": a, "token_end": b,
                 "text": "", "label": lab, "judge": "test", "rationale": ""} for i, (a, b, lab) in enumerate(spans)]

    rollouts = [rollout("p/s0", 8, True, "5"), rollout("p/s1", 6, False, "7"), rollout("p/s2", 12, False, None, "length")]
    judgments = (steps("p/s0", [(0, 3, "correct"), (3, 6, "incorrect")])
                 + steps("p/s1", [(0, 3, "unmatched"), (3, 5, "matched")])
                 + steps("p/s2", [(0, 4, "unmatched"), (4, 12, "unmatched")]))
    w = ArtifactWriter(tmp_path / scheme, "segment", {"scheme": scheme})
    segment(pl.DataFrame(rollouts), pl.DataFrame(judgments), scheme, 1.0, w, Sampling(temperature=1.0, max_tokens=12))
    return round_shares(tmp_path / scheme)


def test_round_shares_of_the_segment_stages_artifact(tmp_path):
    tp = _segmented(tmp_path, "thought")  # 26 tokens: s0's 3 error tokens r̂ − acc, s1's 3 unmatched tokens 0
    assert (tp["tokens"], tp["changed"], tp["changed_error"], tp["changed_unmatched"], tp["changed_other"]) == \
        (26, 6, 3, 3, 0)
    assert tp["share_changed"] == pytest.approx(6 / 26)
    assert _segmented(tmp_path, "outcome")["changed"] == 0    # GRPO against itself
    step = _segmented(tmp_path, "step")                        # return-to-go reaches the steps before an error
    assert step["changed_error"] == 3 and step["changed_other"] > 0


def test_rollout_behaviour_by_hand():
    """Three ArithChain rollouts and one other: a clean solution (2 equation steps), a caught error (wrong, then its
    reflection, then right: 3 steps holding an equation, 1 wrong, a reflection), an uncaught error (2 steps, 1
    wrong). Reflection rate 1/3, step error rate 2/7, mean tokens (5 + 9 + 6) / 3; the other question is left out."""
    from thinkrl.comparison import rollout_behaviour

    q = "Start at 76. Add 13. Add 7. What is the result?"
    rows = [(q, "76 + 13 = 89\n\n89 + 7 = 96\n\nThe answer is \\boxed{96}.", 5),
            (q, "76 + 13 = 88\n\nWait, 76 + 13 = 89, not 88.\n\n89 + 7 = 96\n\nThe answer is \\boxed{96}.", 9),
            (q, "76 + 13 = 88\n\n88 + 7 = 95\n\nThe answer is \\boxed{95}.", 6),
            ("What is 2 + 2?", "4", 1)]
    df = pl.DataFrame({"question": [r[0] for r in rows], "completion": [r[1] for r in rows],
                       "completion_ids": [list(range(r[2])) for r in rows]})
    b = rollout_behaviour(df)
    assert (b["rollouts"], b["not_arith"], b["equation_steps"]) == (3, 1, 7)
    assert b["reflection_rate"] == pytest.approx(1 / 3) and b["step_error_rate"] == pytest.approx(2 / 7)
    assert b["mean_tokens"] == pytest.approx(20 / 3)
