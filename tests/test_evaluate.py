"""Evaluation scores: unbiased pass@k, maj@k, avg@k against hand computations."""

from __future__ import annotations

import math

import polars as pl
import pytest

from thinkrl.evaluate import majority_correct, pass_at_k, summarise


def test_pass_at_k_matches_definition():
    # n = 5, c = 2, k = 2: 1 - C(3, 2) / C(5, 2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0  # n - c < k
    assert pass_at_k(16, 4, 1) == pytest.approx(4 / 16)
    # brute force over all k-subsets
    n, c, k = 6, 2, 3
    import itertools
    hits = [any(i < c for i in s) for s in itertools.combinations(range(n), k)]
    assert pass_at_k(n, c, k) == pytest.approx(sum(hits) / math.comb(n, k))
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_majority_vote():
    assert majority_correct(["5", "5", "7", None], [True, True, False, False])
    assert not majority_correct(["7", "5", "7"], [False, True, False])
    assert majority_correct(["5", "7"], [True, False])          # tie -> first seen
    assert majority_correct([" 5", "5 ", "7"], [True, True, False])  # whitespace-insensitive
    assert not majority_correct([None, None], [False, False])


def test_summarise_by_hand():
    rows = []
    for pid, flags, preds in [("a", [1, 1, 0, 0], ["1", "1", "2", "3"]), ("b", [0, 0, 0, 1], ["4", "4", None, "5"])]:
        for j, (f, p) in enumerate(zip(flags, preds, strict=True)):
            rows.append({"benchmark": "t", "problem_id": pid, "sample_idx": j, "completion": "", "pred_answer": p,
                         "correct": bool(f), "tokens": 10 + j, "finish_reason": "length" if j == 3 else "stop"})
    s = summarise(pl.DataFrame(rows), k=4).to_dicts()[0]
    assert s["problems"] == 2 and s["k"] == 4
    assert s["avg_at_k"] == pytest.approx((0.5 + 0.25) / 2)
    assert s["pass_at_k"] == 1.0
    assert s["maj_at_k"] == pytest.approx(0.5)      # a: "1" wins (correct); b: "4" wins (wrong)
    assert s["mean_tokens"] == pytest.approx(11.5)
    assert s["truncation_rate"] == pytest.approx(0.25)
