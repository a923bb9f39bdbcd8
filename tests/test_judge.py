"""Generative judge: reply parsing that never crashes, and the openai backend end to end through the judge
stage's library code against a real local HTTP server that injects faults."""

from __future__ import annotations

import json
import re

import polars as pl
import pytest
from fault_server import FaultServer

from thinkrl.artifacts import ArtifactWriter, read_table
from thinkrl.judge import make_judge
from thinkrl.judge.judging import judge_rollouts
from thinkrl.judge.prompts import TEMPLATES, parse_reply
from thinkrl.judge.protocol import JudgeRequest
from thinkrl.steps import split_steps
from thinkrl.tasks.arith import generate_problems, make_corpus

COMPLETION = "17 + 28 = 45\n\n45 * 3 = 125\n\nWait, 45 * 3 = 135, not 125.\n\nThe answer is \\boxed{135}."


def request(correct: bool = True, completion: str = COMPLETION) -> JudgeRequest:
    steps, _ = split_steps(completion)
    return JudgeRequest("r0", "Start at 17. Add 28. Multiply by 3. What is the result?", completion, tuple(steps),
                        correct, "135" if correct else "130", "135")


GOOD = {"labels": [{"step": 0, "label": "correct"}, {"step": 1, "label": "incorrect", "reason": "125 wrong"},
                   {"step": 2, "label": "incorrect"}]}


@pytest.mark.parametrize("reply,expected,problem", [
    (json.dumps(GOOD), ("correct", "incorrect", "incorrect"), ""),
    ("Sure! Here is my analysis:\n```json\n" + json.dumps(GOOD) + "\n```\nHope it helps.",
     ("correct", "incorrect", "incorrect"), ""),
    ("The labels are " + json.dumps(GOOD) + " as requested.", ("correct", "incorrect", "incorrect"), ""),
    ('{"labels": ["correct", "Incorrect", "WRONG"]}', ("correct", "incorrect", "incorrect"), ""),
    ('{"labels": {"0": "correct", "2": "incorrect"}}', ("correct", "unknown", "incorrect"), "missing steps"),
    ('{"labels": [{"step": 0, "label": "correct"}, {"step": 7, "label": "incorrect"}]}',
     ("correct", "unknown", "unknown"), "missing steps, step index out of range"),
    ('{"labels": [{"step": "x", "label": "correct"}]}', ("unknown",) * 3, "bad step index, missing steps"),
    ('{"labels": [{"step": 0, "label": "matched"}]}', ("unknown",) * 3, "invalid label"),
    ("I think step 1 is wrong.", ("unknown",) * 3, "unparseable reply"),
    ('{"labels": [', ("unknown",) * 3, "unparseable reply"),
    (None, ("unknown",) * 3, "no reply"),
    ('{"reflections": []} then {"labels": ["correct", "correct", "correct"]}', ("correct",) * 3, ""),
])
def test_parse_reply_never_crashes(reply, expected, problem):
    labels, reasons, got_problem = parse_reply(reply, request())
    assert labels == expected
    assert got_problem == problem
    assert len(reasons) == 3


def test_incorrect_protocol_labels():
    labels, _, _ = parse_reply('{"labels": ["unmatched", "matched", "Matched"]}', request(correct=False))
    assert labels == ("unmatched", "matched", "matched")


def test_prompt_names_protocol_and_steps():
    msgs = TEMPLATES["intrinsic-v1"].messages(request())
    user = msgs[-1]["content"]
    assert "CORRECT final answer (135)" in user and "[Step 2]\nWait, 45 * 3 = 135, not 125." in user
    wrong = TEMPLATES["intrinsic-v1"].messages(request(correct=False))[-1]["content"]
    assert "WRONG final answer (130)" in wrong and '"matched"' in wrong


def judge_reply(messages: list[dict]) -> str:
    """A well-behaved judge: labels every step of the request, in prose + a fenced JSON block."""
    user = messages[-1]["content"]
    n = len(re.findall(r"^\[Step \d+\]$", user, flags=re.M))
    label = "correct" if "CORRECT final answer" in user else "matched"
    return "Let me look.\n```json\n" + json.dumps({"labels": [{"step": i, "label": label} for i in range(n)]}) + "\n```"


@pytest.fixture(scope="module")
def tokenizer():
    from thinkrl.tokenizer import build_tokenizer

    return build_tokenizer([e.solution_text for e in make_corpus(300, 0)])


def rollouts_frame(tokenizer, n: int = 12) -> pl.DataFrame:
    rows = []
    for i, (p, ex) in enumerate(zip(generate_problems(n, 3), make_corpus(n, 4), strict=True)):
        text = ex.solution_text
        rows.append({"rollout_id": f"{p.problem_id}/r0/s0", "problem_id": p.problem_id, "question": p.question,
                     "completion": text, "completion_ids": tokenizer.encode(text, add_special_tokens=False),
                     "correct": i % 3 != 0, "pred_answer": "1", "answer": str(p.answer)})
    return pl.DataFrame(rows)


def test_openai_judge_stage_with_faults_loses_nothing_and_caches(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-secret-123")
    ro = rollouts_frame(tokenizer)
    with FaultServer() as srv:
        srv.reply_fn = judge_reply
        contents = {}
        for r in ro.iter_rows(named=True):  # the last message of each request identifies the rollout
            req = JudgeRequest(r["rollout_id"], r["question"], r["completion"],
                               tuple(split_steps(r["completion"])[0]), r["correct"], "1", r["answer"])
            contents[r["rollout_id"]] = TEMPLATES["intrinsic-v1"].messages(req)[-1]["content"]
        ids = ro["rollout_id"].to_list()
        srv.script(contents[ids[0]], ["500", "ok"])
        srv.script(contents[ids[1]], ["garbage", "truncated", "ok"])
        srv.script(contents[ids[2]], ["slow", "ok"])
        srv.script(contents[ids[3]], [], then="503")          # never recovers
        judge = make_judge(f"openai:{srv.url}", model="judge-m", cache_dir=str(tmp_path / "cache"),
                           timeout_s=0.5, retries=3, concurrency=4, api_key_env="JUDGE_KEY", backoff_s=0.01)
        w = ArtifactWriter(tmp_path / "j", "judge", {"judge": "openai"})
        m = judge_rollouts(ro, judge, tokenizer, w, part_size=5)
        first_requests = len(srv.records)
        df = read_table(tmp_path / "j", "judgments")
        assert set(df["rollout_id"]) == set(ids)                      # no rollout lost
        failed = df.filter(pl.col("rollout_id") == ids[3])
        assert set(failed["label"]) == {"unknown"} and "503" in failed["rationale"][0]
        ok = df.filter(pl.col("rollout_id") != ids[3])
        assert "unknown" not in set(ok["label"])
        assert m["failed_rollouts_this_run"] == 1
        assert all("Bearer sk-secret-123" == r.headers.get("Authorization") for r in srv.records)
        # a rerun of the same work asks the server again only for the failed rollout
        w2 = ArtifactWriter(tmp_path / "j2", "judge", {"judge": "openai"})
        judge_rollouts(ro, judge, tokenizer, w2, part_size=5)
        new = srv.records[first_requests:]
        assert {r.content for r in new} == {contents[ids[3]]}
    for f in (tmp_path / "cache").rglob("*"):
        if f.is_file():
            assert "sk-secret-123" not in f.read_text()
    assert "sk-secret-123" not in (tmp_path / "j" / "manifest.json").read_text()


def test_judge_spans_and_tokens_line_up(tmp_path, tokenizer):
    ro = rollouts_frame(tokenizer, 6)
    judge = make_judge("oracle")
    judge_rollouts(ro, judge, tokenizer, ArtifactWriter(tmp_path / "j", "judge", {}))
    df = read_table(tmp_path / "j", "judgments")
    comp = dict(zip(ro["rollout_id"], ro["completion"], strict=True))
    ids = dict(zip(ro["rollout_id"], ro["completion_ids"], strict=True))
    for r in df.iter_rows(named=True):
        assert comp[r["rollout_id"]][r["char_start"]:r["char_end"]] == r["text"]
        decoded = tokenizer.decode(ids[r["rollout_id"]][r["token_start"]:r["token_end"]])
        assert r["text"] in decoded
