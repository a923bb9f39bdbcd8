"""The noisy judge (thinkrl/judge/noisy.py): the oracle at p = 0, every flippable label inverted at p = 1, a
binomial share in between; flips that are a function of (judge seed, rollout, step) alone, nested over p; its spec
checked before any work; and `thinkrl judge --judge noisy:P` end to end, its P in the judge stage's key."""

from __future__ import annotations

import math

import polars as pl
import pytest

from thinkrl.artifacts import ArtifactWriter, read_table, write_artifact
from thinkrl.errors import ThinkrlError
from thinkrl.judge import judge_kind, make_judge
from thinkrl.judge.judging import JudgeConfig, judge_config, judge_rollouts
from thinkrl.judge.noisy import NoisyJudge
from thinkrl.judge.oracle import ANSWER_PART, OracleJudge
from thinkrl.judge.protocol import LABELS_FOR, UNKNOWN, JudgeRequest
from thinkrl.steps import split_steps
from thinkrl.tasks.arith import make_corpus, oracle_label

Q = "Start at 17. Add 28. Multiply by 3. What is the result?"


def corpus_rollouts(n: int, seed: int = 5) -> list[dict]:
    """Flawed corpus solutions as rollouts, their outcome the oracle's (so every verdict is a real one)."""
    rows = []
    for i, e in enumerate(make_corpus(n, seed=seed)):
        o = oracle_label(e.problem, e.solution_text)
        rows.append({"rollout_id": f"{e.problem.problem_id}/r0/s{i}", "problem_id": e.problem.problem_id,
                     "question": e.problem.question, "completion": e.solution_text, "correct": o.final_correct,
                     "pred_answer": None if o.pred_value is None else str(o.pred_value),
                     "answer": str(e.problem.answer)})
    return rows


def as_request(r: dict, splitter: str = "blank") -> JudgeRequest:
    steps, _ = split_steps(r["completion"], splitter)
    return JudgeRequest(r["rollout_id"], r["question"], r["completion"], tuple(steps), r["correct"],
                        r["pred_answer"], r["answer"])


@pytest.fixture(scope="module")
def requests() -> list[JudgeRequest]:
    return [as_request(r) for r in corpus_rollouts(400)]


def flips(judge, reqs) -> set[tuple[str, int]]:
    oracle = OracleJudge().judge_many(reqs)
    return {(v.rollout_id, i) for v, o in zip(judge.judge_many(reqs), oracle, strict=True)
            for i, (a, b) in enumerate(zip(v.labels, o.labels, strict=True)) if a != b}


def test_p0_is_the_oracle(requests):
    assert NoisyJudge(0.0).judge_many(requests) == OracleJudge().judge_many(requests)


def test_p1_flips_every_flippable_label_and_says_so(requests):
    special = [  # the oracle's answer part as a request step (splitter line); no verdict (outcome mismatch)
        as_request({"rollout_id": "a", "question": Q, "completion": "17 + 28 = 45\n\n45 * 3 = 135\nThe answer is "
                    "\\boxed{135}.", "correct": True, "pred_answer": "135", "answer": "135"}, "line"),
        as_request({"rollout_id": "b", "question": Q, "completion": "17 + 28 = 45\n\n\\boxed{45}", "correct": True,
                    "pred_answer": "45", "answer": "135"}),
    ]
    reqs = requests + special
    n_flippable = 0
    for v, o, req in zip(NoisyJudge(1.0).judge_many(reqs), OracleJudge().judge_many(reqs), reqs, strict=True):
        a, b = LABELS_FOR[req.correct]
        for lab, why, olab, owhy in zip(v.labels, v.rationales, o.labels, o.rationales, strict=True):
            if olab == UNKNOWN or owhy == ANSWER_PART:
                assert (lab, why) == (olab, owhy)          # not flippable: kept as the oracle has it
            else:
                n_flippable += 1
                assert lab == {a: b, b: a}[olab] and why == f"{owhy}; flipped by noisy:1.0:0 (the oracle says {olab})"
    v = NoisyJudge(1.0).judge_many(special)
    assert v[0].labels == ("incorrect", "correct") and v[0].rationales[1] == ANSWER_PART
    assert set(v[1].labels) == {UNKNOWN} and "outcome mismatch" in v[1].reason
    assert n_flippable > 1000


def test_p03_flips_a_binomial_share(requests):
    n = sum(len(r.steps) for r in requests)
    k = len(flips(NoisyJudge(0.3), requests))
    assert n > 1500 and abs(k / n - 0.3) <= 4 * math.sqrt(0.3 * 0.7 / n), (k, n)  # 4 sigma: fails ~1e-4 at random


def test_flips_are_a_function_of_seed_rollout_and_step(requests):
    judge = NoisyJudge(0.3)
    whole = {v.rollout_id: v for v in judge.judge_many(requests)}
    assert judge.judge_many(requests) == list(whole.values())                      # the same input, the same labels
    again = NoisyJudge(0.3).judge_many(requests[::-1][:50] + requests[200:210])    # another batch, order, company
    assert all(v == whole[v.rollout_id] for v in again)
    small, big = flips(NoisyJudge(0.1), requests), flips(NoisyJudge(0.3), requests)
    assert small and small < big                                                   # nested over p
    assert flips(NoisyJudge(0.3, seed=1), requests) != big                         # the judge seed matters
    assert flips(NoisyJudge(0.3, seed=1), requests) == flips(NoisyJudge(0.3, seed=1), requests)


def test_a_part_size_or_shard_gives_the_same_judgments(tmp_path, tokenizer):
    ro = rollouts_frame(tokenizer, 30)
    judge = make_judge("noisy:0.3")
    judge_rollouts(ro, judge, tokenizer, ArtifactWriter(tmp_path / "a", "judge", {}), part_size=4)
    judge_rollouts(ro.reverse(), judge, tokenizer, ArtifactWriter(tmp_path / "b", "judge", {}), part_size=7)
    a, b = (read_table(tmp_path / d, "judgments").sort("rollout_id", "step_idx") for d in "ab")
    assert a.equals(b) and "flipped by noisy:0.3" in " ".join(a["rationale"])


@pytest.mark.parametrize("spec", ["noisy", "noisy:", "noisy:x", "noisy:1.5", "noisy:-0.1", "noisy:nan", "noisy:inf",
                                  "noisy:0.1:x", "noisy:0.1:-1", "noisy:0.1:2:3"])
def test_bad_specs_are_one_line_errors_before_any_work(spec):
    for make in (judge_kind, make_judge, JudgeConfig):
        with pytest.raises(ThinkrlError) as e:
            make(spec)
        assert "noisy:P" in str(e.value) and "[0, 1]" in str(e.value) and "\n" not in str(e.value)


def test_spec_seed_name_and_key():
    j = make_judge("noisy:0.25:7")
    assert (j.p, j.seed, j.name) == (0.25, 7, "noisy:0.25:7") and make_judge("noisy:0.1").seed == 0
    keys = [judge_config(JudgeConfig(s), "tok") for s in ("noisy:0.1", "noisy:0.3", "noisy:0.1:1", "oracle")]
    assert len({repr(k) for k in keys}) == 4                    # p and the judge seed are in the stage's key
    assert keys[0]["judge_version"] == NoisyJudge.version and keys[0]["judge_version"] != keys[3]["judge_version"]
    assert not judge_kind("noisy:0.1").generative


# --------------------------------------------------------------------------------------------- through the CLI
@pytest.fixture(scope="module")
def tokenizer():
    from thinkrl.tokenizer import build_tokenizer

    return build_tokenizer([e.solution_text for e in make_corpus(300, 0)])


def rollouts_frame(tokenizer, n: int) -> pl.DataFrame:
    return pl.DataFrame([{**r, "completion_ids": tokenizer.encode(r["completion"], add_special_tokens=False)}
                         for r in corpus_rollouts(n, seed=9)])


def test_judge_cli_with_a_noisy_judge(tmp_path, tokenizer, run_cli):
    tokenizer.save_pretrained(tmp_path / "tok")
    ro = rollouts_frame(tokenizer, 12).with_columns(
        pl.lit(0).alias("sample_idx"), pl.lit(0).alias("round"), pl.lit(str(tmp_path / "tok")).alias("policy"),
        pl.lit("raw").alias("template"), pl.col("question").alias("prompt"), pl.lit([1]).alias("prompt_ids"),
        pl.col("completion_ids").list.eval(pl.lit(-0.5)).alias("logprobs"), pl.lit("stop").alias("finish_reason"),
        pl.lit(0).alias("seed"))
    write_artifact(tmp_path / "r", "sample", {}, {"rollouts": ro})
    args = ["judge", "--rollouts", str(tmp_path / "r"), "--out", str(tmp_path / "j")]
    rc, out, err = run_cli([*args, "--judge", "noisy:0.5"])
    assert rc == 0, (out, err)
    df = read_table(tmp_path / "j", "judgments")
    want = NoisyJudge(0.5).judge_many([as_request(r) for r in ro.to_dicts()])
    assert df["label"].to_list() == [lab for v in want for lab in v.labels]
    assert set(df["judge"]) == {"noisy:0.5"} and df["rationale"].str.contains("flipped by noisy:0.5").any()
    rc, out, err = run_cli([*args, "--judge", "noisy:0.5"])
    assert rc == 0 and "up to date" in out + err
    rc, out, err = run_cli([*args, "--judge", "noisy:0.2"])                 # another p: another key, relabelled
    assert rc == 0 and "up to date" not in out + err, (out, err)
    assert set(read_table(tmp_path / "j", "judgments")["judge"]) == {"noisy:0.2"}
    rc, out, err = run_cli([*args[:-1], str(tmp_path / "bad"), "--judge", "noisy:2"])
    assert rc != 0 and "noisy:P" in err and "Traceback" not in err and not (tmp_path / "bad").exists()
