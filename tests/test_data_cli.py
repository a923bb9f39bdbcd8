"""`thinkrl data list|prepare` and `thinkrl inspect` through the real CLI: artifacts written, skips, and every
bad input as exit 2 with one `error:` line, never a traceback, never a damaged good artifact."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest
from artifact_edit import rewrite_table

from thinkrl.artifacts import table_file


def assert_one_line_error(rc: int, stderr: str, *words: str) -> None:
    assert rc == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for w in words:
        assert w in lines[0], stderr


def digests(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def small_set(path: Path, n: int = 3) -> Path:
    path.write_text("".join(json.dumps({"question": f"{i}+1?", "answer": str(i + 1), "level": i}) + "\n"
                            for i in range(n)), encoding="utf-8")
    return path


@pytest.mark.data
def test_prepare_math500_then_inspect_and_skip(run_cli, data_dir, tmp_path):
    out = tmp_path / "p"
    rc, stdout, stderr = run_cli(["data", "prepare", "math500", "--out", out, "--data-dir", data_dir])
    assert rc == 0, stderr
    assert "wrote 500 problems" in stderr and str(out) in stderr
    rc, stdout, stderr = run_cli(["inspect", out, "--json"])
    assert rc == 0, stderr
    summary = json.loads(stdout)
    assert summary["stage"] == "prepare" and summary["metrics"] == {"rows": 500, "source": "math500"}
    assert [(t["table"], t["rows"]) for t in summary["tables"]] == [("problems", 500)]
    assert summary["inputs"]["problems"]["sha256"] == hashlib.sha256(
        (data_dir / "math500" / "test.jsonl").read_bytes()).hexdigest()
    before = digests(out)
    rc, _, stderr = run_cli(["data", "prepare", "math500", "--out", out],
                            env={"THINKRL_DATA_DIR": str(data_dir)})  # same data dir through the env
    assert rc == 0 and "up to date" in stderr and digests(out) == before, stderr


@pytest.mark.data
def test_data_list(run_cli, data_dir):
    rc, stdout, stderr = run_cli(["data", "list", "--data-dir", data_dir])
    assert rc == 0, stderr
    for name in ("math500", "aime24", "aime25", "amc23", "gsm8k", "math_train_hard", "processbench_omnimath"):
        assert name in stdout
    assert "OK" in stdout and "mismatch" not in stdout and "missing" not in stdout
    rc, stdout, _ = run_cli(["data", "list", "--json"], env={"THINKRL_DATA_DIR": str(data_dir)})
    listed = json.loads(stdout)["benchmarks"]
    assert rc == 0 and all(s["ok"] for s in listed) and len(listed) == 12


def test_data_list_missing_and_mismatch(run_cli, tmp_path):
    (tmp_path / "aime24").mkdir()
    small_set(tmp_path / "aime24" / "test.jsonl", 29)
    rc, stdout, stderr = run_cli(["data", "list", "--data-dir", tmp_path, "--json"])
    sets = {s["name"]: s for s in json.loads(stdout)["benchmarks"]}
    assert rc == 0 and sets["aime24"]["rows"] == 29 and not sets["aime24"]["ok"] and not sets["math500"]["found"]
    rc, stdout, _ = run_cli(["data", "list", "--data-dir", tmp_path])
    assert rc == 0 and "mismatch" in stdout and "missing" in stdout


def test_prepare_file_with_mapping_and_force(run_cli, tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text('{"uid": "x1", "prompt": "1+1?", "target": 2}\n{"uid": "x2", "prompt": "2+2?", "target": 4}\n')
    out = tmp_path / "p"
    args = ["data", "prepare", f, "--out", out, "--question-col", "prompt", "--answer-col", "target", "--id-col", "uid"]
    rc, _, stderr = run_cli(args)
    assert rc == 0, stderr
    df = pl.read_parquet(out / table_file("problems"))
    assert df["problem_id"].to_list() == ["x1", "x2"] and df["answer"].to_list() == ["2", "4"]
    assert df["source"].to_list() == ["mine", "mine"]
    rc, _, stderr = run_cli([*args, "--force"])
    assert rc == 0 and "wrote 2 problems" in stderr
    rc, _, stderr = run_cli(["data", "prepare", f, "--out", out, "--question-col", "prompt", "--answer-col",
                             "target", "--limit", "1"])  # another config: rewritten
    assert rc == 0 and pl.read_parquet(out / table_file("problems"))["problem_id"].to_list() == ["mine-0000"]


BAD_INPUTS = {  # case -> (file name or None for a missing file, bytes, words the error must hold)
    "missing-file": ("absent.jsonl", None, ["absent.jsonl", "no such file"]),
    "non-utf8": ("latin.jsonl", b'{"question": "caf\xe9", "answer": "1"}\n', ["latin.jsonl", "line 1", "UTF-8"]),
    "empty-file": ("empty.jsonl", b"", ["empty.jsonl", "no rows"]),
    "invalid-json": ("broken.jsonl", b'{"question": "q", "answer": "1"}\n{"question"\n', ["broken.jsonl", "line 2"]),
    "corrupt-parquet": ("bad.parquet", b"PAR1\x00\x01garbagePAR1", ["bad.parquet", "Parquet"]),
    "missing-column": ("cols.jsonl", b'{"problem": "q", "answer": "1"}\n', ["cols.jsonl", "'question'", "problem"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exit_2_and_good_artifact_untouched(run_cli, tmp_path, case):
    out = tmp_path / "p"
    rc, _, stderr = run_cli(["data", "prepare", small_set(tmp_path / "good.jsonl"), "--out", out])
    assert rc == 0, stderr
    before = digests(out)
    assert set(before) == {"_manifest.json", "problems/part-00000.parquet"}
    name, data, words = BAD_INPUTS[case]
    if data is not None:
        (tmp_path / name).write_bytes(data)
    for force in ([], ["--force"]):
        rc, stdout, stderr = run_cli(["data", "prepare", tmp_path / name, "--out", out, *force])
        assert_one_line_error(rc, stderr, *words)
        assert digests(out) == before


def test_changed_benchmark_file_keeps_the_old_artifact(run_cli, tmp_path):
    d = tmp_path / "data"
    (d / "aime25").mkdir(parents=True)
    src = d / "aime25" / "test.jsonl"
    src.write_text("".join(json.dumps({"id": str(i), "problem": f"p{i}", "answer": str(i)}) + "\n" for i in range(30)))
    out = tmp_path / "p"
    rc, _, stderr = run_cli(["data", "prepare", "aime25", "--out", out, "--data-dir", d, "--limit", "5"])
    assert rc == 0, stderr
    before = digests(out)
    src.write_text("".join(src.read_text().splitlines(keepends=True)[:20]))  # truncated: 20 of 30 rows
    rc, _, stderr = run_cli(["data", "prepare", "aime25", "--out", out, "--data-dir", d, "--limit", "5"])
    assert_one_line_error(rc, stderr, str(src), "20 rows, expected 30")
    assert digests(out) == before
    rc, _, stderr = run_cli(["data", "prepare", "aime25", "--out", out, "--data-dir", tmp_path / "nowhere"])
    assert_one_line_error(rc, stderr, "no such file", "aime25/test.jsonl")
    assert digests(out) == before


def test_prepare_usage_errors(run_cli, tmp_path):
    f = small_set(tmp_path / "s.jsonl")
    rc, _, stderr = run_cli(["data", "prepare", "no_such_set", "--out", tmp_path / "p"])
    assert_one_line_error(rc, stderr, "unknown problem set 'no_such_set'")
    rc, _, stderr = run_cli(["data", "prepare", f, "--out", f])
    assert_one_line_error(rc, stderr, "--out must be a directory")
    assert not (tmp_path / "p").exists()


# --------------------------------------------------------------------------------------------- inspect
def _damage_parquet(art: Path) -> None:
    (art / table_file("problems")).write_bytes(b"PAR1 not really parquet")


def _damage_version(art: Path) -> None:
    m = json.loads((art / "_manifest.json").read_text())
    m["outputs"]["problems"]["schema_version"] = 99
    (art / "_manifest.json").write_text(json.dumps(m))


def _damage_column(art: Path) -> None:
    rewrite_table(art, "problems", pl.read_parquet(art / table_file("problems")).drop("answer"))


DAMAGE = {"corrupt-parquet": (_damage_parquet, "changed after its manifest was written"),
          "schema-version": (_damage_version, "schema version 99, expected problems v1"),
          "missing-column": (_damage_column, "missing column 'answer'")}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_inspect_damaged_artifact(run_cli, tmp_path, case):
    art = tmp_path / "p"
    rc, _, stderr = run_cli(["data", "prepare", small_set(tmp_path / "s.jsonl"), "--out", art])
    assert rc == 0, stderr
    damage, words = DAMAGE[case]
    damage(art)
    rc, stdout, stderr = run_cli(["inspect", art])
    assert_one_line_error(rc, stderr, "problems/part-00000.parquet", words)
