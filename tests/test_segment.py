"""Tests for thinkrl.segment: the no-answer rule, judged spans checked at the boundary, the thoughts table equal
to the trained advantages, and what each advantages row carries (temperature, budget, round, finish reason,
incorrect-thought tokens)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from thinkrl.artifacts import ArtifactWriter, read_table, write_artifact
from thinkrl.errors import ThinkrlError
from thinkrl.judge.protocol import CORRECT, INCORRECT, MATCHED, UNMATCHED
from thinkrl.segment import Sampling, rollouts_sampling, segment
from thinkrl.thoughts import outcome_advantages

SAMPLING = Sampling(temperature=0.7, max_tokens=12)


def rollout(rid: str, n_tokens: int, correct: bool, pred: str | None, finish: str = "stop",
            completion: str = "") -> dict:
    return {"rollout_id": rid, "problem_id": rid.split("/")[0], "round": 3, "prompt_ids": [1, 2],
            "completion": completion, "completion_ids": list(range(10, 10 + n_tokens)), "logprobs": [-0.5] * n_tokens,
            "correct": correct, "pred_answer": pred, "finish_reason": finish}


def steps(rid: str, spans: list[tuple[int, int, str]], chars: list[tuple[int, int]] | None = None) -> list[dict]:
    chars = chars or [(0, 0)] * len(spans)
    return [{"rollout_id": rid, "step_idx": i, "char_start": ca, "char_end": cb, "token_start": a, "token_end": b,
             "text": "", "label": lab, "judge": "test", "rationale": ""}
            for i, ((a, b, lab), (ca, cb)) in enumerate(zip(spans, chars, strict=True))]


# one group: a correct rollout with an error thought, a wrong one with an answer, a wrong one cut off at
# max_tokens with no answer (every step unmatched, as the rule judge labels it)
ROLLOUTS = [rollout("p/s0", 8, True, "5"), rollout("p/s1", 6, False, "7"),
            rollout("p/s2", 12, False, None, "length")]
JUDGMENTS = (steps("p/s0", [(0, 3, CORRECT), (3, 6, INCORRECT)])
             + steps("p/s1", [(0, 3, UNMATCHED), (3, 5, MATCHED)])
             + steps("p/s2", [(0, 4, UNMATCHED), (4, 8, UNMATCHED), (8, 12, UNMATCHED)]))


def run(tmp_path, rollouts=ROLLOUTS, judgments=JUDGMENTS, scheme="thought") -> tuple[dict, pl.DataFrame, pl.DataFrame]:
    w = ArtifactWriter(tmp_path / "t", "segment", {"scheme": scheme})
    m = segment(pl.DataFrame(rollouts), pl.DataFrame(judgments), scheme, 1.0, w, SAMPLING)
    return m, read_table(tmp_path / "t", "thoughts", allow_empty=True), read_table(tmp_path / "t", "advantages")


@pytest.mark.parametrize("scheme", ["thought", "thought-static", "step"])
def test_wrong_rollout_with_no_answer_gets_the_outcome_advantage(tmp_path, scheme):
    """Before the fix its steps were all `unmatched`: every advantage 0 and the rollout dropped, so looping,
    cut-off outputs were never pushed down under TP-GRPO while GRPO gave them r̂ < 0."""
    m, _, adv = run(tmp_path, scheme=scheme)
    r_hat = outcome_advantages([True, False, False])                        # [1.414, -0.707, -0.707]
    row = adv.filter(pl.col("rollout_id") == "p/s2").row(0, named=True)
    assert row["advantages"] == pytest.approx([r_hat[2]] * 12, abs=1e-5)
    assert m["no_answer_rollouts"] == 1 and m["dropped_rollouts"] == 0 and m["unknown_fallbacks"] == 0


def test_thought_advantages_by_hand_and_thoughts_table_equals_training(tmp_path):
    m, th, adv = run(tmp_path)
    rh = outcome_advantages([True, False, False])
    acc = 1 / 3
    a = {r["rollout_id"]: np.asarray(r["advantages"]) for r in adv.iter_rows(named=True)}
    assert a["p/s0"] == pytest.approx([rh[0]] * 3 + [rh[0] - acc] * 3 + [rh[0]] * 2, abs=1e-5)
    assert a["p/s1"] == pytest.approx([0.0] * 3 + [rh[1]] * 3, abs=1e-5)   # unmatched 0, matched + answer r̂
    assert m["kept_rollouts"] == 3 and m["error_thoughts"] == 1
    for t in th.iter_rows(named=True):                                       # what the table says is trained
        assert a[t["rollout_id"]][t["token_start"]:t["token_end"]] == pytest.approx(
            [t["reward"]] * (t["token_end"] - t["token_start"]), abs=1e-6)


def test_rows_carry_temperature_budget_and_round(tmp_path):
    m, _, adv = run(tmp_path)
    assert adv["temperature"].to_list() == pytest.approx([0.7] * 3)
    assert adv["max_tokens"].to_list() == [12] * 3 and adv["round"].to_list() == [3] * 3
    assert m["temperature"] == pytest.approx(0.7) and m["max_tokens"] == 12
    assert adv["behaviour_logprobs"].to_list()[0] == pytest.approx([-0.5] * 8)  # the sampler's


@pytest.mark.parametrize("scheme, incorrect", [("thought", [3, 0, 0]), ("outcome", [0, 0, 0])])
def test_rows_carry_finish_reason_and_incorrect_tokens(tmp_path, scheme, incorrect):
    """What the trainer's per-step figures need beside the advantages: p/s0's error thought is tokens 3..6 (3
    tokens); p/s2 was cut off at max_tokens. The outcome scheme reads no labels: no incorrect tokens."""
    _, _, adv = run(tmp_path, scheme=scheme)
    rows = {r["rollout_id"]: r for r in adv.iter_rows(named=True)}
    assert [rows[k]["incorrect_tokens"] for k in ("p/s0", "p/s1", "p/s2")] == incorrect
    assert [rows[k]["finish_reason"] for k in ("p/s0", "p/s1", "p/s2")] == ["stop", "stop", "length"]


def test_vllm_logprobs_off_temperature_are_not_passed_on(tmp_path):
    """vLLM's log-probs are taken before temperature: at T = 0.7 they are no log pi_old, so the column is null
    (a trainer told not to recompute then refuses, see tests/test_trainer.py)."""
    w = ArtifactWriter(tmp_path / "t", "segment", {})
    m = segment(pl.DataFrame(ROLLOUTS), pl.DataFrame(JUDGMENTS), "thought", 1.0, w, Sampling(0.7, 12, "vllm"))
    adv = read_table(tmp_path / "t", "advantages")
    assert adv["behaviour_logprobs"].null_count() == adv.height and not m["sampler_logprobs_kept"]
    assert Sampling(1.0, 12, "vllm").logprobs_at_temperature and Sampling(0.6, 12, "hf").logprobs_at_temperature


@pytest.mark.parametrize("spans, words", [
    ([(-2, 3, CORRECT), (3, 6, INCORRECT)], r"step 0: token span \[-2, 3\)"),   # was: adv[-2:3] empty
    ([(0, 3, CORRECT), (3, 9, INCORRECT)], r"step 1: token span \[3, 9\) is invalid for a completion of 8"),
    ([(0, 4, CORRECT), (3, 6, INCORRECT)], "previous step ends at 4"),          # overlapping
    ([(4, 2, CORRECT)], r"\[4, 2\)"),
])
def test_invalid_judged_spans_are_clear_errors(tmp_path, spans, words):
    bad = steps("p/s0", spans) + [j for j in JUDGMENTS if j["rollout_id"] != "p/s0"]
    with pytest.raises(ThinkrlError, match=words):
        run(tmp_path, judgments=bad)
    assert not (tmp_path / "t" / "_manifest.json").exists()


# 3 steps, 2 thoughts: characters [0, 12) [14, 26) [28, 56), the answer part [58, 84); tokens by hand
TEXT = "17 + 28 = 45\n\n45 * 3 = 125\n\nWait, 45 * 3 = 135, not 125.\n\nThe answer is \\boxed{135}."
TEXT_STEPS = [(0, 5, CORRECT), (6, 11, INCORRECT), (12, 25, INCORRECT)]
TEXT_CHARS = [(0, 12), (14, 26), (28, 56)]


@pytest.mark.parametrize("scheme, expected", [
    ("thought", [(0, 6, 0, 14, "17 + 28 = 45\n\n", CORRECT),   # the separator after a thought is its own
                 (6, 25, 14, 56, "45 * 3 = 125\n\nWait, 45 * 3 = 135, not 125.", INCORRECT)]),
    ("step", [(0, 5, 0, 12, "17 + 28 = 45", CORRECT), (6, 11, 14, 26, "45 * 3 = 125", INCORRECT),
              (12, 25, 28, 56, "Wait, 45 * 3 = 135, not 125.", INCORRECT)]),     # no merging: the steps' spans
])
def test_thoughts_carry_char_spans_and_texts(tmp_path, scheme, expected):
    from thinkrl.steps import split_steps

    assert [(s.char_start, s.char_end) for s in split_steps(TEXT)[0]] == TEXT_CHARS   # the hand spans are right
    ro = [rollout("q/s0", 30, True, "135", completion=TEXT), rollout("q/s1", 4, False, "7")]
    jd = steps("q/s0", TEXT_STEPS, TEXT_CHARS) + steps("q/s1", [(0, 3, MATCHED)])
    _, th, _ = run(tmp_path, ro, jd, scheme)
    got = th.filter(pl.col("rollout_id") == "q/s0").sort("thought_idx")
    assert list(got.select("token_start", "token_end", "char_start", "char_end", "text", "label").iter_rows()) \
        == expected
    assert all(TEXT[a:b] == t for a, b, t in got.select("char_start", "char_end", "text").iter_rows())


def test_judged_char_spans_outside_the_completion_are_clear_errors(tmp_path):
    ro = [rollout("q/s0", 30, True, "135", completion=TEXT), rollout("q/s1", 4, False, "7")]
    jd = steps("q/s0", TEXT_STEPS, [(0, 12), (14, 26), (28, 99)]) + steps("q/s1", [(0, 3, MATCHED)])
    with pytest.raises(ThinkrlError, match=r"step 2: char span \[28, 99\) is invalid for a completion of 84 "
                                           "characters"):
        run(tmp_path, ro, jd)


THOUGHT = [{"rollout_id": "p/s0", "thought_idx": 0, "token_start": 0, "token_end": 1, "char_start": 0,
            "char_end": 1, "text": "1", "label": CORRECT, "reward": 0.0}]


def test_rollouts_sampling_reads_the_manifest(tmp_path):
    write_artifact(tmp_path / "r", "sample", {"temperature": 0.6, "max_tokens": 4096}, {"thoughts": THOUGHT})
    assert rollouts_sampling(tmp_path / "r") == Sampling(0.6, 4096)
    write_artifact(tmp_path / "x", "sample", {}, {"thoughts": THOUGHT})
    with pytest.raises(ThinkrlError, match="no temperature/max_tokens"):
        rollouts_sampling(tmp_path / "x")


def test_a_thought_whose_text_is_not_its_span_is_refused(tmp_path):
    bad = [{**THOUGHT[0], "text": "12"}]                           # 2 characters for the span [0, 1)
    write_artifact(tmp_path / "t", "segment", {}, {"thoughts": THOUGHT})
    assert read_table(tmp_path / "t", "thoughts")["text"].to_list() == ["1"]
    with pytest.raises(ThinkrlError, match="break the rule 'text has char_end - char_start characters'"):
        write_artifact(tmp_path / "u", "segment", {}, {"thoughts": bad})
