"""thinkrl.problems: benchmarks load with their known counts and ids; files load by column mapping; every bad
input is a one-line ThinkrlError naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from thinkrl import problems as P
from thinkrl.artifacts import PROBLEMS
from thinkrl.errors import ThinkrlError

NO_GOLD = {  # problems whose source has no gold final answer (answer "")
    "math_train": {"math_train-number_theory-7115", "math_train-number_theory-7117"},
    "math_train_hard": {"math_train_hard-number_theory-7115", "math_train_hard-number_theory-7117"},
}


def raises_naming(named: Path, /, *also: str, fn, **kw) -> str:
    with pytest.raises(ThinkrlError) as e:
        fn(**kw)
    msg = str(e.value)
    assert str(named) in msg and "\n" not in msg, msg
    for s in also:
        assert s in msg, msg
    return msg


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------- benchmarks
@pytest.mark.data
@pytest.mark.parametrize("name", list(P.BENCHMARKS))
def test_benchmark_loads(data_dir, name):
    df = P.load_benchmark(name, data_dir)
    assert df.height == P.BENCHMARKS[name].rows
    assert df.schema == pl.Schema(PROBLEMS.polars_schema)
    assert df["problem_id"].n_unique() == df.height
    assert df["problem_id"].str.starts_with(f"{name}-").all() and not df["problem_id"].str.contains("/").any()
    assert (df["source"] == name).all()
    assert (df["question"].str.strip_chars().str.len_chars() > 0).all()
    assert all(isinstance(json.loads(m), dict) for m in df["meta"])
    no_gold = set(df.filter(pl.col("answer").str.strip_chars() == "")["problem_id"])
    expected = set(df["problem_id"]) if name.startswith("processbench") else NO_GOLD.get(name, set())
    assert no_gold == expected


@pytest.mark.data
def test_problem_ids_and_answers(data_dir):
    math500 = P.load_benchmark("math500", data_dir, limit=3)
    assert math500["problem_id"][0] == "math500-precalculus-807"
    assert json.loads(math500["meta"][0])["unique_id"] == "test/precalculus/807.json"
    aime = P.load_benchmark("aime24", data_dir)
    assert sorted(aime["problem_id"]) == sorted(f"aime24-{i}" for i in range(60, 90))
    assert "025" in aime["answer"].to_list()  # leading zeros kept
    assert "question" not in json.loads(aime["meta"][0])  # duplicate of problem, dropped
    assert P.load_benchmark("aime25", data_dir)["problem_id"].n_unique() == 30
    amc = P.load_benchmark("amc23", data_dir)
    assert amc["answer"][0] == "27.0" and amc["answer"].str.ends_with(".0").all()
    gsm = P.load_benchmark("gsm8k", data_dir, limit=2)
    assert gsm["problem_id"].to_list() == ["gsm8k-0000", "gsm8k-0001"] and gsm["answer"][0] == "18"
    assert "#### 18" in json.loads(gsm["meta"][0])["solution"]
    pb = P.load_benchmark("processbench_math", data_dir, limit=1)
    meta = json.loads(pb["meta"][0])
    assert pb["problem_id"][0] == "processbench_math-0" and pb["answer"][0] == ""
    assert {"steps", "label", "final_answer_correct", "generator"} <= set(meta)


@pytest.mark.data
def test_list_benchmarks(data_dir, tmp_path):
    listed = {s["name"]: s for s in P.list_benchmarks(data_dir)}
    assert set(listed) == set(P.BENCHMARKS) and all(s["found"] and s["ok"] for s in listed.values())
    (tmp_path / "aime24").mkdir()
    (tmp_path / "aime24" / "test.jsonl").write_text('{"id": 1}\n')
    empty = {s["name"]: s for s in P.list_benchmarks(tmp_path)}
    assert empty["aime24"]["found"] and empty["aime24"]["rows"] == 1 and not empty["aime24"]["ok"]
    assert not empty["math500"]["found"] and empty["math500"]["rows"] is None


def test_gsm8k_answer_extraction():
    assert P.gsm8k_answer("She pays 2 * 500 = <<2*500=1000>>1000\n#### 1,000") == "1000"
    assert P.gsm8k_answer("x\n#### -3") == "-3"
    assert P.gsm8k_answer("#### 1,234,567 ") == "1234567"


def test_limit_applies_after_the_row_count_check(tmp_path):
    d = tmp_path / "data"
    rows = [{"id": i, "problem": f"q{i}", "answer": str(i)} for i in range(30)]
    write_jsonl((d / "aime24").mkdir(parents=True) or d / "aime24" / "test.jsonl", rows)
    assert P.load_benchmark("aime24", d, limit=4)["problem_id"].to_list() == [f"aime24-{i}" for i in range(4)]
    write_jsonl(d / "aime24" / "test.jsonl", rows[:29])
    raises_naming(d / "aime24" / "test.jsonl", "29 rows, expected 30", fn=P.load_benchmark, name="aime24",
                  data_dir=d, limit=4)


@pytest.mark.data
def test_truncated_copy_of_a_real_set(data_dir, tmp_path):
    src = data_dir / "amc23" / "test.jsonl"
    (tmp_path / "amc23").mkdir()
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp_path / "amc23" / "test.jsonl").write_text("".join(lines[:25]), encoding="utf-8")
    raises_naming(tmp_path / "amc23" / "test.jsonl", "25 rows", "expected 40", fn=P.load_benchmark,
                  name="amc23", data_dir=tmp_path)
    shutil.copy(src, tmp_path / "amc23" / "test.jsonl")
    assert P.load_benchmark("amc23", tmp_path).height == 40


def test_benchmark_bad_rows(tmp_path):
    d = tmp_path
    (d / "gsm8k").mkdir()
    f = write_jsonl(d / "gsm8k" / "test.jsonl", [{"question": "q", "answer": "no marker"}] * 1319)
    raises_naming(f, "line 1", "####", fn=P.load_benchmark, name="gsm8k", data_dir=d)
    write_jsonl(f, [{"question": "q", "answer": "#### 1"}] * 1318 + [{"answer": "#### 2"}])
    raises_naming(f, "line 1319", "missing field 'question'", fn=P.load_benchmark, name="gsm8k", data_dir=d)
    raises_naming(d / "math500" / "test.jsonl", "no such file", "THINKRL_DATA_DIR", fn=P.load_benchmark,
                  name="math500", data_dir=d)
    with pytest.raises(ThinkrlError, match="unknown benchmark 'nope'"):
        P.load_benchmark("nope", d)


# --------------------------------------------------------------------------------------------- files
def test_load_file_jsonl_mapping(tmp_path):
    f = write_jsonl(tmp_path / "mine.jsonl", [
        {"uid": "a", "prompt": "1+1?", "target": 2, "level": 1},
        {"uid": "b", "prompt": "2+2?", "target": "4", "level": 2},
    ])
    df = P.load_file(f, question_col="prompt", answer_col="target", id_col="uid", source="toy")
    assert df.to_dicts() == [
        {"problem_id": "a", "source": "toy", "question": "1+1?", "answer": "2", "meta": '{"level": 1}'},
        {"problem_id": "b", "source": "toy", "question": "2+2?", "answer": "4", "meta": '{"level": 2}'},
    ]
    default = P.load_file(f, question_col="prompt", answer_col="target", limit=1)
    assert default["problem_id"].to_list() == ["mine-0000"] and default["source"][0] == "mine"
    assert json.loads(default["meta"][0]) == {"uid": "a", "level": 1}
    assert P.load_file(f, question_col="prompt", answer_col=None)["answer"].to_list() == ["", ""]


def test_load_file_parquet_and_json_array(tmp_path):
    f = tmp_path / "set.parquet"
    pl.DataFrame({"q": ["x?", "y?"], "a": [27.0, 3.5], "tags": [["t"], []]}).write_parquet(f)
    df = P.load_file(f, question_col="q", answer_col="a")
    assert df["answer"].to_list() == ["27.0", "3.5"] and df["problem_id"].to_list() == ["set-0000", "set-0001"]
    assert json.loads(df["meta"][0]) == {"tags": ["t"]}
    j = tmp_path / "arr.json"
    j.write_text(json.dumps([{"question": "q", "answer": "1"}]), encoding="utf-8")
    assert P.load_file(j).height == 1


def test_load_file_duplicate_ids(tmp_path):
    f = write_jsonl(tmp_path / "dup.jsonl", [{"id": 1, "question": "q", "answer": "a"}] * 2)
    raises_naming(f, "column 'id'", "'1'", fn=P.load_file, path=f, id_col="id")


BAD_FILES = {  # name -> (file name, bytes, words the message must hold)
    "non-utf8": ("bad.jsonl", b'{"question": "q", "answer": "1"}\n{"question": "\xff\xfe"}\n', ["line 2", "UTF-8"]),
    "invalid-json": ("bad.jsonl", b'{"question": "q", "answer": "1"}\n{"question": \n', ["line 2", "invalid JSON"]),
    "empty": ("empty.jsonl", b"", ["no rows"]),
    "blank-lines": ("blank.jsonl", b"\n  \n", ["no rows"]),
    "not-object": ("arr.jsonl", b'{"question": "q", "answer": "1"}\n[1, 2]\n', ["line 2", "JSON object", "array"]),
    "missing-column": ("cols.jsonl", b'{"problem": "q", "answer": "1"}\n', ["'question'", "available: problem, answer"]),
    "blank-question": ("blankq.jsonl", b'{"question": "  ", "answer": "1"}\n', ["line 1", "'question' is empty"]),
    "null-answer": ("null.jsonl", b'{"question": "q", "answer": null}\n', ["line 1", "'answer' is null"]),
    "corrupt-parquet": ("bad.parquet", b"PAR1 this is not parquet", ["not a readable Parquet file"]),
    "unknown-type": ("data.csv", b"question,answer\n", ["unsupported file type"]),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_is_one_line_error(tmp_path, case):
    name, data, words = BAD_FILES[case]
    f = tmp_path / name
    f.write_bytes(data)
    raises_naming(f, *words, fn=P.load_file, path=f)


def test_missing_file_and_directory(tmp_path):
    raises_naming(tmp_path / "nope.jsonl", "no such file", fn=P.load_file, path=tmp_path / "nope.jsonl")
    (tmp_path / "d.jsonl").mkdir()
    raises_naming(tmp_path / "d.jsonl", "is a directory", fn=P.load_file, path=tmp_path / "d.jsonl")


# --------------------------------------------------------------------------------------------- resolving
def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(P.DATA_ENV, str(tmp_path))
    assert P.resolve_data_dir(Path("x")) == Path("x")
    assert P.resolve_data_dir(None) == tmp_path
    monkeypatch.delenv(P.DATA_ENV)
    assert P.resolve_data_dir(None) == Path("data")


def test_resolve_set_and_load_problems(tmp_path, monkeypatch):
    f = write_jsonl(tmp_path / "f.jsonl", [{"question": "q", "answer": "1"}])
    ps = P.resolve_set(str(f), tmp_path)
    assert ps.kind == "file" and P.load_problems(ps, source="s")["problem_id"][0] == "s-0000"
    with pytest.raises(ThinkrlError, match="unknown problem set 'nope'"):
        P.resolve_set("nope", tmp_path)
    (tmp_path / "aime24").mkdir()
    write_jsonl(tmp_path / "aime24" / "test.jsonl", [{"id": i, "problem": "q", "answer": "1"} for i in range(30)])
    bench = P.resolve_set("aime24", tmp_path)
    assert bench.kind == "benchmark" and P.load_problems(bench, limit=2).height == 2
    with pytest.raises(ThinkrlError, match="--question-col apply to a FILE only"):
        P.load_problems(bench, question_col="x")

    def fake_task(n: int = 3) -> pl.DataFrame:  # how a generator plugs in (the lead registers `arith`)
        return pl.DataFrame({"problem_id": [f"t-{i}" for i in range(n)], "source": "t", "question": "q",
                             "answer": "1", "meta": "{}"})

    monkeypatch.setitem(P.TASKS, "toy", fake_task)
    task = P.resolve_set("toy", tmp_path)
    assert task.kind == "task" and task.path is None
    assert P.load_problems(task, limit=2, n=5)["problem_id"].to_list() == ["t-0", "t-1"]
    assert P.named_problems("toy", tmp_path, n=4).height == 4
    assert P.named_problems("aime24", tmp_path, limit=3).height == 3


def test_task_limit_generates_that_many_and_keeps_the_prefix(tmp_path):
    big, default = P.named_problems("arith", tmp_path, limit=500), P.named_problems("arith", tmp_path)
    assert big.height == 500 and default.height == 200
    assert big.head(200)["question"].to_list() == default["question"].to_list()
    assert P.named_problems("arith", tmp_path, limit=10).height == 10


def test_arith_task_chain_lengths():
    """min_ops/max_ops choose the chain lengths (a small real model solves 1-2 operations); the default set,
    the held-out eval set, is unchanged; bad lengths are a one-line error."""
    short = P.arith_task(n=20, seed=3, min_ops=1, max_ops=2)
    assert {len(json.loads(r["meta"])["ops"]) for r in short} <= {1, 2}
    assert P.arith_task(n=5) == P.arith_task(n=5, min_ops=None, max_ops=None)
    assert {len(json.loads(r["meta"])["ops"]) for r in P.arith_task(n=50)} <= set(range(2, 7))
    with pytest.raises(ThinkrlError, match="min_ops <= max_ops"):
        P.arith_task(n=2, min_ops=3, max_ops=2)
    df = P.load_problems(P.resolve_set("arith", Path(".")), limit=4, min_ops=1, max_ops=1)
    assert df.height == 4 and all(len(json.loads(m)["ops"]) == 1 for m in df["meta"])
