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


class EchoEngine:
    """An engine stand-in: sample j of every prompt answers \\boxed{j} (no model; the grading is real)."""
    name = "echo"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def generate(self, prompts, params, seeds, progress=None):
        from thinkrl.engine.base import Completion

        outs = []
        for _ in prompts:
            texts = [f"The answer is \\boxed{{{j}}}" for j in range(params.n)]
            outs.append([Completion(t, self.tokenizer.encode(t, add_special_tokens=False), [-0.5] * 3, "stop")
                         for t in texts])
        return outs


def test_eval_samples_carry_the_prompt_and_the_gold_answer(tmp_path):
    """Each sample row holds the prompt the policy saw (template `raw`: question + instruction + newline) and the
    gold answer, so it can be read or graded again from the artifact alone."""
    from thinkrl.artifacts import ArtifactWriter, read_table
    from thinkrl.evaluate import EvalConfig, evaluate
    from thinkrl.tokenizer import build_tokenizer

    problems = pl.DataFrame({"problem_id": ["t-0", "t-1"], "source": ["t", "t"], "meta": ["{}", "{}"],
                             "question": ["Start at 2. Add 1.", "Start at 5. Subtract 4."], "answer": ["3", "1"]})
    cfg = EvalConfig(k=2, template="raw", max_tokens=8, device="cpu", dtype="float32")
    tok = build_tokenizer([*problems["question"], "The answer is \\boxed{01}"])
    evaluate({"t": problems}, EchoEngine(tok), cfg, ArtifactWriter(tmp_path / "e", "eval", {}), "p")
    got = read_table(tmp_path / "e", "eval_samples").sort("problem_id", "sample_idx")
    instruction = "\nPlease reason step by step, and put your final answer within \\boxed{}.\n"
    assert got.select("problem_id", "sample_idx", "prompt", "answer", "pred_answer", "correct").rows() == [
        ("t-0", 0, "Start at 2. Add 1." + instruction, "3", "0", False),
        ("t-0", 1, "Start at 2. Add 1." + instruction, "3", "1", False),
        ("t-1", 0, "Start at 5. Subtract 4." + instruction, "1", "0", False),
        ("t-1", 1, "Start at 5. Subtract 4." + instruction, "1", "1", True)]
