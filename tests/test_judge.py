"""Generative judge: reply parsing that never crashes, and the openai backend end to end through the judge
stage's library code against a real local HTTP server that injects faults."""

from __future__ import annotations

import json
import re

import polars as pl
import pytest
from fault_server import FaultServer

from thinkrl.artifacts import ArtifactWriter, read_manifest, read_table, write_artifact
from thinkrl.errors import IncompleteError, ThinkrlError
from thinkrl.judge import make_judge
from thinkrl.judge.judging import check_fallbacks, fallback_report, judge_rollouts, requests_for
from thinkrl.judge.prompts import TEMPLATES, parse_reply, parse_steps_reply
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
DRAFT = {"labels": ["correct", "correct", "correct"]}  # a verdict drafted inside a thinking judge's <think>


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
    ('{"labels": ["correct", "incorrect", "incorrect", "correct"]}', ("correct", "incorrect", "incorrect"),
     "step index out of range"),                                       # one label too many: not a full verdict
    ('{"labels": [{"step": 0, "label": "correct"}, {"step": 0, "label": "incorrect"}, {"step": 1, "label": '
     '"correct"}, {"step": 2, "label": "correct"}]}', ("incorrect", "correct", "correct"), "duplicate step index"),
    ('{"labels": [', ("unknown",) * 3, "unparseable reply"),
    (None, ("unknown",) * 3, "no reply"),
    ('{"reflections": []} then {"labels": ["correct", "correct", "correct"]}', ("correct",) * 3, ""),
    # a thinking judge (Qwen3): the verdict is read after its <think>...</think>, never from a draft inside it
    ("<think>\nFirst guess: " + json.dumps(DRAFT) + "\nNo, step 1 is wrong.\n</think>\n\n" + json.dumps(GOOD),
     ("correct", "incorrect", "incorrect"), ""),
    ("<think>\nMaybe " + json.dumps(DRAFT) + "\n</think>\n\nI cannot decide.", ("unknown",) * 3,
     "unparseable reply"),
    ("Maybe " + json.dumps(DRAFT) + "\n</think>\n\nI cannot decide.", ("unknown",) * 3,   # <think> opened by
     "unparseable reply"),                                                                 # the chat template
    ("<think>\nSo far: " + json.dumps(DRAFT) + "\nbut step 1", ("unknown",) * 3,          # cut inside it
     "reply cut inside <think>: raise the judge's max tokens or disable thinking"),
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
    user = next(m["content"] for m in messages if m["role"] == "user")  # the request (a reminder may follow)
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
    """Transient faults are retried away; a request that fails for good leaves its part unwritten and the
    artifact unfinished (IncompleteError, no manifest). The same run again, with the server healthy, asks only
    for the failed rollout and finishes."""
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
        with pytest.raises(IncompleteError, match=r"1 of 12 rollouts got no verdict \(http 503: 1\)"):
            judge_rollouts(ro, judge, tokenizer, w, part_size=5)
        assert not (tmp_path / "j" / "_manifest.json").exists()
        parts = sorted(p.name for p in (tmp_path / "j" / "_parts" / "judgments").glob("*.parquet"))
        assert parts == ["000001.parquet", "000002.parquet"]           # ids[3] is in part 0: not written
        assert all("Bearer sk-secret-123" == r.headers.get("Authorization") for r in srv.records)
        first_requests = len(srv.records)
        srv.script(contents[ids[3]], [], then="ok")                   # the server is healthy again
        m = judge_rollouts(ro, judge, tokenizer, ArtifactWriter(tmp_path / "j", "judge", {"judge": "openai"}),
                           part_size=5)
        new = srv.records[first_requests:]
        assert {r.content for r in new} == {contents[ids[3]]} and len(new) == 1  # only what had failed
        df = read_table(tmp_path / "j", "judgments")
        assert set(df["rollout_id"]) == set(ids) and "unknown" not in set(df["label"])  # real verdicts
        assert df["error"].null_count() == df.height and m["failed_rollouts"] == 0
    for f in (tmp_path / "cache").rglob("*"):
        if f.is_file():
            assert "sk-secret-123" not in f.read_text()
    assert "sk-secret-123" not in (tmp_path / "j" / "_manifest.json").read_text()


def test_allow_failed_finishes_with_the_failures_recorded(tmp_path, tokenizer):
    ro = rollouts_frame(tokenizer, 4)
    with FaultServer() as srv:
        srv.mode = "500"
        judge = make_judge(f"openai:{srv.url}", model="judge-m", cache_dir=str(tmp_path / "cache"), timeout_s=5,
                           retries=1, backoff_s=0.01)
        m = judge_rollouts(ro, judge, tokenizer, ArtifactWriter(tmp_path / "j", "judge", {}), allow_failed=True)
    df = read_table(tmp_path / "j", "judgments")
    assert set(df["label"]) == {"unknown"} and set(df["error"]) == {"http 500 after 2 attempts"}
    assert m["failed_rollouts"] == 4 and m["failed_causes"] == {"http 500": 4}
    assert json.loads((tmp_path / "j" / "_manifest.json").read_text())["metrics"]["failed_rollouts"] == 4


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


# ---------------------------------------------------------------------------------------------------
# Splitter `judge`: the judge groups the lines into steps in the same call


def proposing_reply(messages: list[dict]) -> str:
    """A judge that groups the lines two by two and labels each group."""
    user = messages[-1]["content"]
    n = len(re.findall(r"^\[Line \d+\]$", user, flags=re.M))
    label = "correct" if "CORRECT final answer" in user else "matched"
    groups = [{"first_line": a, "last_line": min(a + 1, n - 1), "label": label, "reason": f"lines {a}+"}
              for a in range(0, n, 2)]
    return "Here are the steps.\n" + json.dumps({"steps": groups})


def test_prompt_in_propose_mode_shows_lines_and_asks_for_steps():
    lines, _ = split_steps(COMPLETION, "judge")
    req = JudgeRequest("r0", "q", COMPLETION, tuple(lines), True, "135", "135", propose_steps=True)
    user = TEMPLATES["intrinsic-v1"].messages(req)[-1]["content"]
    assert "[Line 0]\n17 + 28 = 45" in user and '"first_line"' in user and "[Step" not in user
    assert "numbered lines" in user and "Solution lines:" in user


@pytest.mark.parametrize("reply, labels, starts, problem", [
    ('{"steps": [{"first_line": 0, "last_line": 1, "label": "correct"}, {"first_line": 2, "last_line": 2, '
     '"label": "incorrect"}]}', ("correct", "correct", "incorrect"), (0, 2), ""),
    ('{"steps": [{"first_line": 0, "last_line": 0, "label": "correct"}]}',  # lines 1, 2 in no step
     ("correct", "unknown", "unknown"), (0, 1, 2), "lines in no step"),
    ('{"steps": [{"first_line": 0, "last_line": 2, "label": "correct"}, {"first_line": 1, "last_line": 1, '
     '"label": "incorrect"}]}', ("correct",) * 3, (0,), "step range out of order, overlapping or out of range"),
    ('{"steps": [{"first_line": "x", "label": "correct"}, {"first_line": 0, "last_line": 2, "label": "nope"}]}',
     ("unknown",) * 3, (0,), "bad step range, invalid label"),
    ("no json here", ("unknown",) * 3, (0, 1, 2), "unparseable reply"),
    ('<think>\n{"steps": [{"first_line": 0, "last_line": 2, "label": "correct"}]}', ("unknown",) * 3, (0, 1, 2),
     "reply cut inside <think>: raise the judge's max tokens or disable thinking"),
    ('<think>{"steps": []}</think>{"steps": [{"first_line": 0, "last_line": 2, "label": "correct"}]}',
     ("correct",) * 3, (0,), ""),
])
def test_parse_steps_reply(reply, labels, starts, problem):
    text = "a = 1\nb = 2\nc = 3"
    lines, _ = split_steps(text, "judge")
    req = JudgeRequest("r0", "q", text, tuple(lines), True, "1", "1", propose_steps=True)
    got = parse_steps_reply(reply, req)
    assert got[0] == labels and got[3] == starts and got[2] == problem


def test_judge_splitter_stage_writes_the_judges_steps(tmp_path, tokenizer):
    ro = rollouts_frame(tokenizer, 4)
    with FaultServer() as srv:
        srv.reply_fn = proposing_reply
        judge = make_judge(f"openai:{srv.url}", model="judge-m", cache_dir=str(tmp_path / "cache"), timeout_s=5)
        judge_rollouts(ro, judge, tokenizer, ArtifactWriter(tmp_path / "j", "judge", {}), splitter="judge")
    df = read_table(tmp_path / "j", "judgments")
    ids = dict(zip(ro["rollout_id"], ro["completion_ids"], strict=True))
    for rid, completion in zip(ro["rollout_id"], ro["completion"], strict=True):
        lines, _ = split_steps(completion, "line")
        rows = df.filter(pl.col("rollout_id") == rid).sort("step_idx")
        assert rows.height == -(-len(lines) // 2)  # one row per proposed step: lines two by two
        for k, r in enumerate(rows.iter_rows(named=True)):
            a, b = lines[2 * k], lines[min(2 * k + 1, len(lines) - 1)]
            assert (r["char_start"], r["char_end"]) == (a.char_start, b.char_end)
            assert completion[r["char_start"]:r["char_end"]] == r["text"] and r["rationale"] == f"lines {2 * k}+"
            assert r["text"] in tokenizer.decode(ids[rid][r["token_start"]:r["token_end"]])
        assert set(rows["label"]) <= {"correct", "matched"}


def test_judge_splitter_needs_a_proposing_judge(tmp_path, tokenizer):
    with pytest.raises(ThinkrlError, match="needs a judge that proposes steps"):
        judge_rollouts(rollouts_frame(tokenizer, 2), make_judge("rule"), tokenizer,
                       ArtifactWriter(tmp_path / "j", "judge", {}), splitter="judge")


def test_judge_config_keys_what_the_judge_depends_on():
    from thinkrl.judge.judging import JudgeConfig, judge_config
    from thinkrl.judge.rule import RuleJudge

    rule = judge_config(JudgeConfig("rule", "blank", judge_model="m", prompt="intrinsic-v1", max_tokens=9,
                                    concurrency=3), "tok")
    assert rule == {"judge": "rule", "splitter": "blank", "tokenizer": "tok", "judge_version": RuleJudge.version}
    gen = judge_config(JudgeConfig("openai:http://h", "judge", judge_model="m", max_tokens=9, retries=1), "tok")
    assert gen["prompt_version"] == TEMPLATES["intrinsic-v1"].version and gen["max_tokens"] == 9
    assert gen["judge_model"] == "m" and "judge_version" not in gen and "retries" not in gen
    # temperature and extra_body change the replies, so the key; at their defaults the key is the one older
    # versions wrote (they always asked at temperature 0 with no extra keys): finished judgments stay up to date
    openai = JudgeConfig("openai:http://h", judge_model="m")
    assert judge_config(openai, "tok") == {"judge": "openai:http://h", "splitter": "blank", "tokenizer": "tok",
                                           "judge_model": "m", "prompt": "intrinsic-v1", "prompt_version": 1,
                                           "max_tokens": 1024}
    hot = judge_config(JudgeConfig("openai:http://h", judge_model="m", temperature=0.6), "tok")
    assert hot != judge_config(openai, "tok") and hot["temperature"] == 0.6
    no_think = judge_config(JudgeConfig("openai:http://h", judge_model="m", extra_body='{"chat_template_kwargs": '
                                        '{"enable_thinking": false}}'), "tok")
    assert no_think["extra_body"] == {"chat_template_kwargs": {"enable_thinking": False}}
    assert judge_config(JudgeConfig("openai:http://h", judge_model="m", extra_body=' {"chat_template_kwargs":{'
                                    '"enable_thinking" : false} }'), "tok") == no_think  # the object, not its text
    assert judge_config(JudgeConfig("openai:http://h", judge_model="m", extra_body="{}"), "tok") == \
        judge_config(openai, "tok")
    assert judge_config(JudgeConfig("rule", temperature=0.6, extra_body='{"top_k": 5}'), "tok") == rule
    with pytest.raises(ThinkrlError, match="unknown judge prompt"):
        JudgeConfig("hf:d", "blank", prompt="nope")
    with pytest.raises(ThinkrlError, match="unknown splitter"):
        JudgeConfig("rule", "words")
    with pytest.raises(ThinkrlError, match="needs judge_model"):
        JudgeConfig("openai:http://h")
    with pytest.raises(ThinkrlError, match="needs a generative judge"):
        JudgeConfig("oracle", "judge")
    with pytest.raises(ThinkrlError, match="--extra-body must not set `messages`: thinkrl sets it itself"):
        JudgeConfig("openai:http://h", judge_model="m", extra_body='{"messages": []}')
    with pytest.raises(ThinkrlError, match="judge hf:d: a local hf: judge sends no request: of extra_body only "
                                           "chat_template_kwargs applies .*not top_k"):
        JudgeConfig("hf:d", extra_body='{"top_k": 5, "chat_template_kwargs": {}}')


def test_judge_eval_key_follows_the_judges_temperature_and_extra_body():
    from thinkrl.judge_eval import JudgeEvalConfig, judge_eval_key

    base = judge_eval_key(JudgeEvalConfig(judge="openai:http://h", judge_model="m", processbench="gsm8k"))
    hot = judge_eval_key(JudgeEvalConfig(judge="openai:http://h", judge_model="m", processbench="gsm8k",
                                         temperature=0.6, extra_body='{"top_p": 0.95}'))
    assert "temperature" not in base and (hot["temperature"], hot["extra_body"]) == (0.6, {"top_p": 0.95})


def test_useless_replies_are_asked_again_never_cached_and_never_finish_the_judgments(tmp_path, tokenizer):
    """Before: valid JSON or prose without a full verdict was cached as a success: 93/93 steps `unknown`, exit
    0, and a healthy --force rerun never asked again. Now each such reply is asked again with a format reminder
    (parse_retries), is never cached, and leaves the judgments unfinished; with the judge fixed, the same run
    asks again and finishes with real verdicts."""
    ro = rollouts_frame(tokenizer, 6)
    with FaultServer() as srv:
        srv.reply_fn = lambda messages: "I think step 1 is wrong."      # valid HTTP, useless text
        judge = make_judge(f"openai:{srv.url}", model="judge-m", cache_dir=str(tmp_path / "cache"), timeout_s=5,
                           parse_retries=2)
        with pytest.raises(IncompleteError, match=r"6 of 6 rollouts got no verdict \(unusable reply "
                                                  r"\(unparseable reply\): 6\)"):
            judge_rollouts(ro, judge, tokenizer, ArtifactWriter(tmp_path / "j", "judge", {"judge": "openai"}))
        assert len(srv.records) == 18                                    # 6 requests x (1 + 2 parse retries)
        retry = srv.records[-1].body["messages"]
        assert retry[-2] == {"role": "assistant", "content": "I think step 1 is wrong."}
        assert "could not be used: unparseable reply" in retry[-1]["content"]
        assert not list((tmp_path / "cache").rglob("*.json")) and not (tmp_path / "j" / "_manifest.json").exists()
        srv.reply_fn = lambda messages: ('{"labels": []}' if len(messages) == 2 else judge_reply(messages))
        m = judge_rollouts(ro, judge, tokenizer, ArtifactWriter(tmp_path / "j", "judge", {"judge": "openai"}))
        assert len(srv.records) == 18 + 12            # no labels, then the reminder gets a full verdict
        assert m["failed_rollouts"] == 0 and "unknown" not in set(read_table(tmp_path / "j", "judgments")["label"])
        asked = len(srv.records)
        judge_rollouts(ro, judge, tokenizer, ArtifactWriter(tmp_path / "j2", "judge", {"judge": "openai"}))
        assert len(srv.records) == asked              # the good replies are cached under the original requests


def test_reply_column_holds_the_used_reply_fresh_and_from_the_cache(tmp_path, tokenizer):
    """Each rollout's first reply is useless and the reminder gets a full verdict: the `reply` of every step is
    the reply its labels were read from (not the useless one). A second run on the same reply cache asks the
    server nothing and writes the same reply column, byte for byte the same judgments table."""
    ro = rollouts_frame(tokenizer, 6)
    expected = {r.rollout_id: judge_reply(TEMPLATES["intrinsic-v1"].messages(r)) for r in requests_for(ro, "blank")}
    with FaultServer() as srv:
        srv.reply_fn = lambda messages: "no labels yet" if len(messages) == 2 else judge_reply(messages)
        judge = make_judge(f"openai:{srv.url}", model="judge-m", cache_dir=str(tmp_path / "cache"), timeout_s=5)
        judge_rollouts(ro, judge, tokenizer, ArtifactWriter(tmp_path / "j", "judge", {"judge": "openai"}))
        asked = len(srv.records)
        assert asked == 12                                               # 6 requests, each asked once again
        judge_rollouts(ro, judge, tokenizer, ArtifactWriter(tmp_path / "j2", "judge", {"judge": "openai"}))
        assert len(srv.records) == asked                                 # every reply from the cache
    fresh, cached = read_table(tmp_path / "j", "judgments"), read_table(tmp_path / "j2", "judgments")
    assert dict(fresh.select("rollout_id", "reply").unique().iter_rows()) == expected
    assert fresh.group_by("rollout_id").agg(pl.col("reply").n_unique())["reply"].to_list() == [1] * 6
    assert cached["reply"].to_list() == fresh["reply"].to_list()
    sha = [read_manifest(tmp_path / d)["outputs"]["judgments"]["sha256"] for d in ("j", "j2")]
    assert sha[0] == sha[1]


def test_a_judge_that_fails_everywhere_is_loud_and_keeps_its_replies(tmp_path, tokenizer):
    """With --allow-failed the share is reported, the raw reply sits beside each verdict, and more than
    --max-unknown fails (exit 2) with the artifact written, so a rerun with a higher threshold reuses it."""
    ro = rollouts_frame(tokenizer, 6)
    with FaultServer() as srv:
        srv.reply_fn = lambda messages: "I think step 1 is wrong."      # valid HTTP, useless text
        judge = make_judge(f"openai:{srv.url}", model="judge-m", cache_dir=str(tmp_path / "cache"), timeout_s=5,
                           parse_retries=0)
        m = judge_rollouts(ro, judge, tokenizer, ArtifactWriter(tmp_path / "j", "judge", {"judge": "openai"}),
                           allow_failed=True)
    df = read_table(tmp_path / "j", "judgments")
    assert set(df["label"]) == {"unknown"} and set(df["reply"]) == {"I think step 1 is wrong."}
    assert m["fallback_rollouts"] == 6 and m["judged_rollouts"] == 6 and m["fallback_share"] == 1.0
    assert "6 of 6 judged rollouts (100.0%) have no usable verdict" in fallback_report(m)
    assert "unparseable reply" in fallback_report(m)
    with pytest.raises(ThinkrlError, match=r"more than --max-unknown 0.5"):
        check_fallbacks(m, 0.5, tmp_path / "j")
    assert (tmp_path / "j" / "_manifest.json").is_file()                # written all the same
    check_fallbacks(m, 1.0, tmp_path / "j")                              # a higher threshold accepts it


def test_wrong_rollouts_without_answer_do_not_count_as_fallbacks(tmp_path, tokenizer):
    """They get the outcome advantage whatever the judge says, so its failure on them costs nothing."""
    ro = rollouts_frame(tokenizer, 6).with_columns(
        pl.when(pl.col("correct")).then(pl.col("pred_answer")).otherwise(None).alias("pred_answer"))
    with FaultServer() as srv:
        srv.reply_fn = lambda messages: "no labels here"
        judge = make_judge(f"openai:{srv.url}", model="judge-m", cache_dir=str(tmp_path / "cache"), timeout_s=5,
                           parse_retries=0)
        m = judge_rollouts(ro, judge, tokenizer, ArtifactWriter(tmp_path / "j", "judge", {"judge": "openai"}),
                           allow_failed=True)
    assert m["judged_rollouts"] == 4 and m["fallback_rollouts"] == 4  # rollouts 0 and 3 are wrong: not counted


def test_rule_judge_has_no_reply_and_no_fallbacks(tmp_path, tokenizer):
    ro = rollouts_frame(tokenizer, 4)
    m = judge_rollouts(ro, make_judge("rule"), tokenizer, ArtifactWriter(tmp_path / "j", "judge", {}))
    df = read_table(tmp_path / "j", "judgments")
    assert df["reply"].null_count() == df.height and m["fallback_share"] == 0.0 and fallback_report(m) == ""
    check_fallbacks(m, 0.0, tmp_path / "j")


def rollouts_artifact(tmp_path, tokenizer, n: int):
    """A rollouts artifact at tmp_path/r of rollouts_frame(tokenizer, n), its policy the tokenizer at tmp_path/tok."""
    tok_dir = tmp_path / "tok"
    tokenizer.save_pretrained(tok_dir)
    ro = rollouts_frame(tokenizer, n).with_columns(
        pl.lit(0).alias("sample_idx"), pl.lit(0).alias("round"), pl.lit(str(tok_dir)).alias("policy"),
        pl.lit("raw").alias("template"), pl.col("question").alias("prompt"), pl.lit([1]).alias("prompt_ids"),
        pl.col("completion_ids").list.eval(pl.lit(-0.5)).alias("logprobs"), pl.lit("stop").alias("finish_reason"),
        pl.lit(0).alias("seed"))
    write_artifact(tmp_path / "r", "sample", {}, {"rollouts": ro})
    return tmp_path / "r"


def test_judge_and_judge_eval_stages_send_the_judges_temperature_and_extra_body(tmp_path, tokenizer):
    """The stages hand temperature and extra_body to the judge: they reach every request. Another temperature
    is another judgment: the stage does not skip, and the replies are asked again (not read from the cache)."""
    from thinkrl.judge.judging import JudgeConfig, run_judge_stage
    from thinkrl.judge_eval import JudgeEvalConfig, run_judge_eval_stage

    rollouts = rollouts_artifact(tmp_path, tokenizer, 3)
    extra = '{"chat_template_kwargs": {"enable_thinking": false}}'
    with FaultServer() as srv:
        srv.reply_fn = judge_reply
        cfg = JudgeConfig(f"openai:{srv.url}", judge_model="m", timeout_s=5, temperature=0.6, extra_body=extra)
        run_judge_stage(rollouts, tmp_path / "j", cfg)
        assert len(srv.records) == 3 and all(r.body["temperature"] == 0.6 and r.body["chat_template_kwargs"] ==
                                             {"enable_thinking": False} for r in srv.records)
        assert run_judge_stage(rollouts, tmp_path / "j", cfg).skipped and len(srv.records) == 3
        cooler = run_judge_stage(rollouts, tmp_path / "j", JudgeConfig(f"openai:{srv.url}", judge_model="m",
                                                                        timeout_s=5, temperature=0.3, extra_body=extra))
        assert not cooler.skipped and len(srv.records) == 6 and srv.records[-1].body["temperature"] == 0.3
        run_judge_eval_stage(tmp_path / "je", JudgeEvalConfig(judge=f"openai:{srv.url}", judge_model="m", timeout_s=5,
                                                              temperature=0.6, extra_body=extra), rollouts, tmp_path)
        assert len(srv.records) == 9 and all(r.body["temperature"] == 0.6 and "chat_template_kwargs" in r.body
                                             for r in srv.records[6:])


def test_judge_cli_never_finishes_on_a_failing_judge_without_allow_failed(tmp_path, tokenizer, run_cli):
    """Through the real command, the server down then useless then healthy: exit 3 and no manifest while
    requests fail; --allow-failed finishes (and more than --max-unknown still exits 2, the artifact written);
    a run that allows failures and a higher --max-unknown reuses it; the plain command asks again for every
    failed rollout once the server is healthy and finishes with real verdicts."""
    rollouts_artifact(tmp_path, tokenizer, 4)
    with FaultServer() as srv:
        srv.mode = "close"                                               # down: every connection dropped
        args = ["judge", "--rollouts", tmp_path / "r", "--out", tmp_path / "j", "--judge", f"openai:{srv.url}",
                "--judge-model", "m", "--timeout", "5", "--retries", "1", "--parse-retries", "0"]
        rc, out, err = run_cli(args)
        assert rc == 3, (out, err)
        assert "4 of 4 rollouts got no verdict" in err and "--allow-failed" in err
        assert not (tmp_path / "j" / "_manifest.json").exists()
        srv.mode = "ok"
        srv.reply_fn = lambda messages: "I think step 1 is wrong."
        rc, out, err = run_cli([*args, "--allow-failed"])
        assert rc == 2, (out, err)
        assert "4 of 4 judged rollouts (100.0%) have no usable verdict" in out + err
        assert "--max-unknown 0.5" in err and (tmp_path / "j" / "_manifest.json").is_file()
        asked = len(srv.records)
        rc, out, err = run_cli([*args, "--allow-failed", "--max-unknown", "1.0"])
        assert rc == 0 and "up to date" in out + err and len(srv.records) == asked
        srv.reply_fn = judge_reply                                       # healthy
        rc, out, err = run_cli(args)
        assert rc == 0, (out, err)
        assert len(srv.records) == asked + 4 and "up to date" not in out + err
        df = read_table(tmp_path / "j", "judgments")
        assert "unknown" not in set(df["label"]) and df["error"].null_count() == df.height
        rc, out, err = run_cli(args)
        assert rc == 0 and "up to date" in out + err and len(srv.records) == asked + 4


def test_judge_registry_records():
    from thinkrl.judge import judge_kind

    assert not judge_kind("rule").generative and judge_kind("rule").version() >= 1
    assert judge_kind("hf:/m").generative and not judge_kind("hf:/m").needs_model_name
    assert judge_kind("openai:http://h").needs_model_name and judge_kind("openai:http://h").version is None
    with pytest.raises(ThinkrlError, match="unknown judge 'gpt'"):
        judge_kind("gpt")


def _eos_first_judge(path) -> None:
    """A tiny model that answers every chat prompt with EOS at once (an empty reply that stops): the layers'
    output projections are zeroed, so the last hidden state depends only on the last prompt token (the
    template's assistant marker, the same for every conversation), and the EOS row of the head points at it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thinkrl.models import init_model

    init_model("tiny", path)
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    last = tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True, tokenize=True,
                                   return_dict=False)[-1]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        h = model.model.norm(model.model.embed_tokens.weight[last])
        model.lm_head.weight[tok.eos_token_id] = 100 * h / h.norm() ** 2
    model.save_pretrained(path)


def test_hf_judge_asks_again_with_the_reminder_until_the_reply_is_usable(tmp_path):
    """The local-model backend's parse retries (a real tiny model, greedy): refused replies are asked again in
    one batch with the reminder appended (a longer prompt), at most parse_retries times; one refused to the end
    is an `unusable reply` failure; a reply cut at max tokens is not asked again (it would be cut again)."""
    from thinkrl.judge.generative import HFChat
    from thinkrl.models import init_model

    _eos_first_judge(tmp_path / "eos")
    chat = HFChat(tmp_path / "eos", max_tokens=4, parse_retries=1)
    seen: list[int] = []

    def validate(i: int, text: str) -> str:
        seen.append(i)
        return "" if i == 2 or (i == 0 and seen.count(0) == 2) else "no labels"   # 0: the reminded reply is good

    convs = [[{"role": "user", "content": f"What is {k} + 1?"}] for k in range(3)]
    plain = chat.complete_many(convs)
    assert {r.finish_reason for r in plain} == {"stop"}
    res = chat.complete_many(convs, validate=validate)
    assert sorted(seen) == [0, 0, 1, 1, 2]                       # only refused replies are asked (and read) again
    assert res[0].error is None and res[0].prompt_tokens > 2 * plain[0].prompt_tokens  # original + reminded prompt
    assert res[1].error == "unusable reply (no labels) after 2 replies" and res[1].text is not None
    assert res[2] == plain[2]
    cut = HFChat(init_model("tiny", tmp_path / "m"), max_tokens=4, parse_retries=2)   # never stops in 4 tokens
    seen.clear()
    res = cut.complete_many(convs, validate=lambda i, t: seen.append(i) or "no labels")
    assert sorted(seen) == [0, 1, 2] and all(r.error == "unusable reply (no labels; reply cut at max tokens)"
                                             for r in res)


def test_too_many_labels_are_a_failed_request_not_a_verdict(tmp_path, tokenizer):
    """Before: a reply with a label for every step plus extra ones passed as a full verdict and was cached."""
    ro = rollouts_frame(tokenizer, 3)

    def too_many(messages):
        reply = json.loads(judge_reply(messages).split("```json\n")[1].split("\n```")[0])
        reply["labels"].append({"step": len(reply["labels"]), "label": "correct"})
        return json.dumps(reply)

    with FaultServer() as srv:
        srv.reply_fn = too_many
        judge = make_judge(f"openai:{srv.url}", model="m", cache_dir=str(tmp_path / "c"), timeout_s=5, parse_retries=1)
        with pytest.raises(IncompleteError, match=r"3 of 3 rollouts got no verdict \(unusable reply \(step index "
                                                  r"out of range\): 3\)"):
            judge_rollouts(ro, judge, tokenizer, ArtifactWriter(tmp_path / "j", "judge", {}))
    assert not list((tmp_path / "c").rglob("*.json"))


class _Interrupt(Exception):
    pass


class _StopAfter:
    """A judge that delegates to another and is interrupted (like kill -9) when asked for part `n`."""

    def __init__(self, judge, n: int):
        self.judge, self.n, self.calls, self.name = judge, n, 0, judge.name

    def judge_many(self, requests, progress=None):
        if self.calls == self.n:
            raise _Interrupt
        self.calls += 1
        return self.judge.judge_many(requests, progress)


def test_parts_an_interrupted_allow_failed_run_wrote_are_asked_again_without_it(tmp_path, tokenizer):
    """Before: resuming without --allow-failed skipped the parts an interrupted --allow-failed run had written
    with failures in them, and finished with them (exit 0)."""
    ro = rollouts_frame(tokenizer, 6)
    with FaultServer() as srv:
        srv.mode = "500"
        judge = make_judge(f"openai:{srv.url}", model="m", cache_dir=str(tmp_path / "c"), timeout_s=5, retries=0)
        with pytest.raises(_Interrupt):
            judge_rollouts(ro, _StopAfter(judge, 1), tokenizer, ArtifactWriter(tmp_path / "j", "judge", {}),
                           part_size=3, allow_failed=True)
        srv.mode, srv.reply_fn = "ok", judge_reply
        asked = len(srv.records)
        m = judge_rollouts(ro, judge, tokenizer, ArtifactWriter(tmp_path / "j", "judge", {}), part_size=3)
    assert len(srv.records) == asked + 6 and m["failed_rollouts"] == 0
    assert read_table(tmp_path / "j", "judgments")["error"].null_count() == m["steps"]


class _BuggyJudge:
    """A judge with a bug: labels for a rollout that has no steps (a request the stage must not pass)."""

    name = "buggy"

    def judge_many(self, requests, progress=None):
        from thinkrl.judge.protocol import Verdict

        return [Verdict(r.rollout_id, ("correct",) * (len(r.steps) or 1), ("",) * (len(r.steps) or 1))
                for r in requests]


def test_a_failed_rollout_without_steps_still_holds_its_part_back(tmp_path, tokenizer):
    ro = rollouts_frame(tokenizer, 2).with_columns(pl.lit("").alias("completion"))   # no steps at all
    with pytest.raises(IncompleteError, match="2 of 2 rollouts got no verdict"):
        judge_rollouts(ro, _BuggyJudge(), tokenizer, ArtifactWriter(tmp_path / "j", "judge", {}))
    assert not list((tmp_path / "j").rglob("*.parquet"))


def _no_labels(messages):
    return '{"verdict": "looks fine"}'


def _one_label_short(messages):
    reply = json.loads(judge_reply(messages).split("```json\n")[1].split("\n```")[0])
    return json.dumps({"labels": reply["labels"][:-1]})


FAULTS = {  # how the server fails one rollout's request: a scripted fault, or a reply function for every request
    "http-500": "500", "hangs-past-timeout": "slow", "malformed-json": "garbage", "cut-body": "truncated",
    "no-choices": "no_choices", "empty-content": "empty", "connection-closed": "close",
    "no-labels": _no_labels, "wrong-label-count": _one_label_short,
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_no_judge_fault_ever_finishes_the_judgments_and_the_healed_rerun_asks_only_for_it(fault, tmp_path, tokenizer):
    """The issue's done-means, fault by fault: one rollout's request fails for good (every attempt and parse
    retry); the judgments stay unfinished; with the server healed the same call asks only for that rollout and
    finishes with real verdicts."""
    ro = rollouts_frame(tokenizer, 4)
    target = ro["rollout_id"][1]
    with FaultServer(slow_s=1.0) as srv:
        srv.reply_fn = judge_reply
        req = requests_for(ro.filter(pl.col("rollout_id") == target), "blank")[0]
        content = TEMPLATES["intrinsic-v1"].messages(req)[-1]["content"]
        how = FAULTS[fault]
        if callable(how):
            srv.reply_fn = lambda m: how(m) if any(x["content"] == content for x in m) else judge_reply(m)
        else:
            srv.script(content, [], then=how)
        judge = make_judge(f"openai:{srv.url}", model="m", cache_dir=str(tmp_path / "c"), timeout_s=0.5, retries=1,
                           backoff_s=0.01, parse_retries=1)
        with pytest.raises(IncompleteError, match="1 of 4 rollouts got no verdict"):
            judge_rollouts(ro, judge, tokenizer, ArtifactWriter(tmp_path / "j", "judge", {}), part_size=2)
        assert not (tmp_path / "j" / "_manifest.json").exists()
        asked = len(srv.records)
        srv.reply_fn = judge_reply
        srv.script(content, [], then="ok")
        m = judge_rollouts(ro, judge, tokenizer, ArtifactWriter(tmp_path / "j", "judge", {}), part_size=2)
        new = srv.records[asked:]
    assert len(new) == 1 and new[0].content == content                 # only the failed request, once
    df = read_table(tmp_path / "j", "judgments")
    assert m["failed_rollouts"] == 0 and "unknown" not in set(df["label"]) and set(df["rollout_id"]) == set(ro["rollout_id"])


def test_a_thinking_judge_gets_its_settings_and_its_verdict_is_read_after_the_thinking(tmp_path, tokenizer):
    """A Qwen3-class judge served by vLLM: temperature and extra_body reach every request body; a reply that
    thinks first (`<think>` with a draft verdict inside) is judged by the answer after the thinking, and the
    `reply` column keeps it whole. A reply cut inside its thinking (max tokens) holds no verdict, even if a draft
    inside looks like one: each rollout fails at once with that cause (asking again would be cut again)."""
    ro = rollouts_frame(tokenizer, 4)
    extra = '{"chat_template_kwargs": {"enable_thinking": true}, "top_p": 0.95}'

    def thinking(messages):  # drafts the opposite labels, then answers properly
        wrong = judge_reply(messages).replace('"correct"', '"incorrect"').replace('"matched"', '"unmatched"')
        return f"<think>\nDraft: {wrong}\nNo, let me check again.\n</think>\n\n{judge_reply(messages)}"

    with FaultServer() as srv:
        srv.reply_fn = thinking
        judge = make_judge(f"openai:{srv.url}", model="judge-m", cache_dir=str(tmp_path / "cache"), timeout_s=5,
                           temperature=0.6, extra_body=json.loads(extra))
        m = judge_rollouts(ro, judge, tokenizer, ArtifactWriter(tmp_path / "j", "judge", {}))
        bodies = [r.body for r in srv.records]
        assert len(bodies) == 4 and m["failed_rollouts"] == 0
        assert all(b["temperature"] == 0.6 and b["top_p"] == 0.95 and b["chat_template_kwargs"] ==
                   {"enable_thinking": True} for b in bodies)
        df = read_table(tmp_path / "j", "judgments")
        assert set(df["label"]) <= {"correct", "matched"}               # the answer, not the draft
        assert all(r.startswith("<think>\nDraft: ") for r in df["reply"])  # the reply as it came
        srv.reply_fn = lambda messages: {"content": "<think>\nDraft: " + judge_reply(messages),
                                         "finish_reason": "length"}
        asked = len(srv.records)
        judge = make_judge(f"openai:{srv.url}", model="judge-m", cache_dir=str(tmp_path / "cache2"), timeout_s=5)
        cut = "reply cut inside <think>: raise the judge's max tokens or disable thinking; reply cut at max tokens"
        with pytest.raises(IncompleteError, match=re.escape(f"4 of 4 rollouts got no verdict (unusable reply ({cut})")):
            judge_rollouts(ro, judge, tokenizer, ArtifactWriter(tmp_path / "j2", "judge", {}))
        assert len(srv.records) == asked + 4                            # once each: not asked again


def test_hf_judge_samples_with_a_seed_of_the_conversation_and_takes_chat_template_kwargs(tmp_path):
    """A local judge: greedy at temperature 0; above it, sampled with a seed of the conversation, so the same
    request gets the same reply in every run and batch; extra_body's chat_template_kwargs reach the chat template."""
    from thinkrl.judge.generative import HFChat
    from thinkrl.models import init_model

    path = init_model("tiny", tmp_path / "m")
    convs = [[{"role": "user", "content": f"What is {k} + 1?"}] for k in range(4)]
    greedy = [r.text for r in HFChat(path, max_tokens=12).complete_many(convs)]
    hot = HFChat(path, max_tokens=12, temperature=1.0, chat_template_kwargs={"enable_thinking": False})
    seen = []
    template = hot.engine.tokenizer.apply_chat_template
    hot.engine.tokenizer.apply_chat_template = lambda c, **kw: seen.append(kw) or template(c, **kw)
    sampled = [r.text for r in hot.complete_many(convs)]
    assert sampled != greedy and [r.text for r in hot.complete_many(convs[::-1])] == sampled[::-1]
    assert seen and all(kw["enable_thinking"] is False for kw in seen)
    judge = make_judge(f"hf:{path}", max_tokens=12, temperature=1.0,
                       extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert (judge.backend.temperature, judge.backend.template_kwargs) == (1.0, {"enable_thinking": False})
