"""Artifacts: round trips of every schema, validation errors, skip/resume, killed writes, docs freshness."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from artifact_edit import rehash, rewrite_table

from thinkrl import artifacts as A
from thinkrl.artifacts import table_file
from thinkrl.errors import ThinkrlError

REPO = Path(__file__).resolve().parents[1]

SAMPLE_VALUES = {
    pl.String(): "x", pl.Int32(): 3, pl.Int64(): 7, pl.Float32(): 0.5, pl.Float64(): 1.25, pl.Boolean(): True,
    pl.List(pl.Int32()): [1, 2, 3], pl.List(pl.Float32()): [-0.5, 0.25, 0.0],
}


ROW_VALUES = {"thoughts": {"char_end": 4}}  # values a schema's rules need: text "x" is chars [3, 4)


def make_rows(schema: A.Schema, n: int = 3) -> list[dict]:
    rows = []
    for i in range(n):
        r = {c.name: c.values[0] if c.values else SAMPLE_VALUES[c.dtype] for c in schema.columns}
        r |= ROW_VALUES.get(schema.name, {})
        for k in schema.key:  # unique keys
            r[k] = f"id-{i}" if schema.column(k).dtype == pl.String() else i
        rows.append(r)
    return rows


@pytest.mark.parametrize("name", list(A.SCHEMAS))
def test_round_trip_every_schema(tmp_path, name):
    schema = A.SCHEMAS[name]
    rows = make_rows(schema)
    m = A.write_artifact(tmp_path / "a", "test", {"x": 1}, {name: rows}, metrics={"m": 1.5})
    df = A.read_table(tmp_path / "a", name)
    assert df.to_dicts() == pl.DataFrame(rows, schema_overrides=schema.polars_schema).select(
        [c.name for c in schema.columns]).to_dicts()
    assert dict(df.schema) == schema.polars_schema
    out = m["outputs"][name]
    assert out["rows"] == 3 and out["schema_version"] == schema.version
    assert out["sha256"] == A.sha256_file(tmp_path / "a" / table_file(name))
    manifest = json.loads((tmp_path / "a" / "_manifest.json").read_text())
    for k in ("stage", "created", "thinkrl_version", "git_commit", "config", "inputs", "outputs", "metrics"):
        assert k in manifest
    assert manifest["metrics"] == {"m": 1.5}


def test_same_rows_give_byte_identical_parquet(tmp_path):
    rows = make_rows(A.ROLLOUTS, 5)
    A.write_artifact(tmp_path / "a", "t", {}, {"rollouts": rows})
    A.write_artifact(tmp_path / "b", "t", {}, {"rollouts": rows})
    assert (tmp_path / "a" / table_file("rollouts")).read_bytes() == (tmp_path / "b" / table_file("rollouts")).read_bytes()


def test_inputs_are_fingerprinted(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"a": 1}\n')
    m = A.write_artifact(tmp_path / "a", "t", {}, {"problems": make_rows(A.PROBLEMS)}, inputs={"src": src})
    assert m["inputs"]["src"]["sha256"] == A.sha256_file(src)
    m2 = A.write_artifact(tmp_path / "b", "t", {}, {"problems": make_rows(A.PROBLEMS)}, inputs={"up": tmp_path / "a"})
    assert m2["inputs"]["up"]["sha256"] == A.sha256_file(tmp_path / "a/_manifest.json")


def test_duplicate_keys_rejected(tmp_path):
    rows = make_rows(A.PROBLEMS, 2)
    rows[1]["problem_id"] = rows[0]["problem_id"]
    with pytest.raises(ThinkrlError, match="stage t produced a table its readers would refuse: .* share a key"):
        A.write_artifact(tmp_path / "a", "t", {}, {"problems": rows})
    assert not (tmp_path / "a/_manifest.json").exists()


def test_a_writer_never_finishes_what_its_readers_refuse(tmp_path):
    """Before: -inf behaviour log-probs were written and the stage said "up to date" ever after, while every
    reader refused the table. Now `finish` runs the readers' checks."""
    rows = make_rows(A.ROLLOUTS, 2)
    rows[1]["logprobs"] = [-0.5, float("-inf"), -0.1]
    with pytest.raises(ThinkrlError, match="stage sample produced a table its readers would refuse: .*'logprobs' "
                                           "has non-finite values"):
        A.write_artifact(tmp_path / "a", "sample", {}, {"rollouts": rows})
    assert not (tmp_path / "a/_manifest.json").exists()


def test_sha256_memo_sees_a_same_size_rewrite_with_its_mtime_restored(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"aaaa")
    before, st = A.sha256_file(f), f.stat()
    f.write_bytes(b"bbbb")
    import os

    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))                  # as cp -p / rsync -t / touch -r leave it
    assert A.sha256_file(f) != before


# ------------------------------------------------------------------------------------------ read errors
def _good(tmp_path) -> Path:
    A.write_artifact(tmp_path / "a", "t", {}, {"problems": make_rows(A.PROBLEMS)})
    return tmp_path / "a"


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_artifact(tmp_path):
    with pytest.raises(ThinkrlError) as e:
        A.read_table(tmp_path / "nope", "problems")
    assert "no such artifact" in _one_line(e)


def test_no_manifest(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(ThinkrlError) as e:
        A.read_table(tmp_path / "d", "problems")
    assert "manifest.json" in _one_line(e)


def test_wrong_schema_version(tmp_path):
    p = _good(tmp_path)
    m = json.loads((p / "_manifest.json").read_text())
    m["outputs"]["problems"]["schema_version"] = 99
    (p / "_manifest.json").write_text(json.dumps(m))
    with pytest.raises(ThinkrlError) as e:
        A.read_table(p, "problems")
    msg = _one_line(e)
    assert "problems/part-00000.parquet" in msg and "99" in msg and "v1" in msg


def test_missing_column(tmp_path):
    p = _good(tmp_path)
    rewrite_table(p, "problems", pl.read_parquet(p / table_file("problems")).drop("answer"))
    with pytest.raises(ThinkrlError) as e:
        A.read_table(p, "problems")
    msg = _one_line(e)
    assert "problems/part-00000.parquet" in msg and "'answer'" in msg and "String" in msg


def test_wrong_column_type(tmp_path):
    p = _good(tmp_path)
    df = pl.read_parquet(p / table_file("problems")).with_columns(pl.lit(1).alias("answer"))
    rewrite_table(p, "problems", df)
    with pytest.raises(ThinkrlError) as e:
        A.read_table(p, "problems")
    assert "'answer'" in _one_line(e) and "expected String" in _one_line(e)


def test_empty_table(tmp_path):
    w = A.ArtifactWriter(tmp_path / "a", "t", {})
    w.set_table("problems", [])
    w.finish(allow_empty=True)
    with pytest.raises(ThinkrlError) as e:
        A.read_table(tmp_path / "a", "problems")
    assert "no rows" in _one_line(e)
    assert A.read_table(tmp_path / "a", "problems", allow_empty=True).height == 0


def test_corrupt_parquet(tmp_path):
    p = _good(tmp_path)
    (p / table_file("problems")).write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ThinkrlError) as e:
        A.read_table(p, "problems")
    assert "changed after its manifest was written" in _one_line(e)   # refused before it is parsed
    rehash(p, "problems")                                              # a writer that hashed garbage
    with pytest.raises(ThinkrlError) as e:
        A.read_table(p, "problems")
    assert "not a readable Parquet file" in _one_line(e)


def test_corrupt_manifest(tmp_path):
    p = _good(tmp_path)
    (p / "_manifest.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ThinkrlError) as e:
        A.read_table(p, "problems")
    assert "manifest.json" in _one_line(e)


def test_missing_table(tmp_path):
    p = _good(tmp_path)
    with pytest.raises(ThinkrlError) as e:
        A.read_table(p, "rollouts")
    assert "no 'rollouts' table" in _one_line(e)


# ------------------------------------------------------------------------------------------ skip / resume
def test_up_to_date_and_config_change(tmp_path):
    src = tmp_path / "src.txt"
    src.write_text("a")
    w = A.ArtifactWriter(tmp_path / "a", "t", {"n": 1}, {"src": src})
    assert not w.up_to_date()
    w.set_table("problems", make_rows(A.PROBLEMS))
    w.finish()
    assert A.ArtifactWriter(tmp_path / "a", "t", {"n": 1}, {"src": src}).up_to_date()
    assert not A.ArtifactWriter(tmp_path / "a", "t", {"n": 2}, {"src": src}).up_to_date()
    src.write_text("b")
    assert not A.ArtifactWriter(tmp_path / "a", "t", {"n": 1}, {"src": src}).up_to_date()


def _write_in_parts(out: Path, rows: list[dict], fail_after: int | None, config=None) -> None:
    w = A.ArtifactWriter(out, "t", config or {"n": 1})
    for i in range(0, len(rows), 2):
        part = f"{i // 2:05d}"
        if w.part_done("problems", part):
            continue
        if fail_after is not None and i // 2 == fail_after:
            raise RuntimeError("killed")
        w.write_part("problems", part, rows[i:i + 2])
    w.finish()


def test_killed_write_leaves_no_manifest_and_rerun_completes(tmp_path):
    rows = make_rows(A.PROBLEMS, 7)
    with pytest.raises(RuntimeError):
        _write_in_parts(tmp_path / "a", rows, fail_after=2)
    assert not (tmp_path / "a/_manifest.json").exists()
    assert len(list((tmp_path / "a" / A.PARTS / "problems").glob("*.parquet"))) == 2
    _write_in_parts(tmp_path / "a", rows, fail_after=None)
    _write_in_parts(tmp_path / "b", rows, fail_after=None)
    assert A.read_table(tmp_path / "a", "problems").to_dicts() == A.read_table(tmp_path / "b", "problems").to_dicts()
    assert (tmp_path / "a" / table_file("problems")).read_bytes() == (tmp_path / "b" / table_file("problems")).read_bytes()
    assert not (tmp_path / "a" / A.PARTS).exists()


def test_parts_of_another_config_are_discarded(tmp_path):
    rows = make_rows(A.PROBLEMS, 6)
    with pytest.raises(RuntimeError):
        _write_in_parts(tmp_path / "a", [dict(r, question="old") for r in rows], fail_after=2)
    _write_in_parts(tmp_path / "a", rows, fail_after=None, config={"n": 2})
    assert set(A.read_table(tmp_path / "a", "problems")["question"]) == {"x"}


def test_failed_rewrite_keeps_old_artifact(tmp_path):
    p = _good(tmp_path)
    before = {f.name: f.read_bytes() for f in p.iterdir() if f.is_file()}
    bad = make_rows(A.PROBLEMS, 2)
    bad[0]["question"] = None  # non-nullable
    with pytest.raises(ThinkrlError):
        A.write_artifact(p, "t", {"other": True}, {"problems": bad})
    assert {f.name: f.read_bytes() for f in p.iterdir() if f.is_file()} == before


def test_artifacts_doc_is_fresh():
    doc = (REPO / "docs" / "ARTIFACTS.md").read_text(encoding="utf-8")
    assert doc == A.docs_markdown(), "docs/ARTIFACTS.md is stale: run `just docs`"


def _written(tmp_path: Path, name: str, n: int = 3) -> tuple[Path, pl.DataFrame]:
    A.write_artifact(tmp_path / "a", "t", {}, {name: make_rows(A.SCHEMAS[name], n)})
    return tmp_path / "a", pl.read_parquet(tmp_path / "a" / table_file(name))


BAD_VALUES = {  # table -> (edit of a good table, what the one-line error must say)
    "duplicate-key": ("rollouts", lambda df: df.with_columns(pl.lit("id-0").alias("rollout_id")),
                      "3 rows share a key (rollout_id), e.g. rollout_id=id-0"),
    "nan-in-list": ("advantages", lambda df: df.with_columns(
        pl.when(pl.col("rollout_id") == "id-1").then(pl.lit([0.1, float("nan"), 0.2], dtype=pl.List(pl.Float32)))
        .otherwise(pl.col("advantages")).alias("advantages")),
        "column 'advantages' has non-finite values (NaN or inf) in 1 rows, e.g. rollout_id=id-1"),
    "inf-scalar": ("thoughts", lambda df: df.with_columns(pl.lit(float("inf"), dtype=pl.Float32).alias("reward")),
                   "column 'reward' has non-finite values"),
    "bad-label": ("judgments", lambda df: df.with_columns(pl.lit("wrongish").alias("label")),
                  "column 'label' holds 'wrongish' in 3 rows; expected one of correct, incorrect"),
    "bad-finish": ("rollouts", lambda df: df.with_columns(pl.lit("abort").alias("finish_reason")),
                   "column 'finish_reason' holds 'abort'"),
    "length-mismatch": ("rollouts", lambda df: df.with_columns(pl.lit([-0.5], dtype=pl.List(pl.Float32))
                                                                 .alias("logprobs")),
                        "3 rows break the rule 'completion_ids, logprobs have the same length'"),
    "span-order": ("judgments", lambda df: df.with_columns(pl.lit(9, dtype=pl.Int32).alias("token_start")),
                   "break the rule '0 <= token_start <= token_end'"),
    "zero-temperature": ("advantages", lambda df: df.with_columns(pl.lit(0.0, dtype=pl.Float32).alias("temperature")),
                         "break the rule 'temperature > 0'"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_read_refuses_values_no_type_check_catches(tmp_path, case):
    """Inputs are never trusted because thinkrl wrote them: values that pass the types are still checked."""
    name, edit, message = BAD_VALUES[case]
    art, df = _written(tmp_path, name)
    assert A.read_table(art, name).height == 3
    rewrite_table(art, name, edit(df))
    with pytest.raises(ThinkrlError) as e:
        A.read_table(art, name)
    assert message in _one_line(e) and table_file(name) in _one_line(e)


def test_non_finite_training_metrics_are_allowed(tmp_path):
    """A skipped step records its NaN loss: that is the record, not a broken input."""
    art, df = _written(tmp_path, "train_metrics")
    rewrite_table(art, "train_metrics", df.with_columns(pl.lit(float("nan")).alias("loss")))
    assert A.read_table(art, "train_metrics")["loss"].is_nan().all()


def test_an_input_changed_after_its_manifest_is_never_up_to_date(tmp_path):
    """Before: the manifest alone keyed an input, so a downstream artifact stayed `up to date` after its input's
    table was swapped. Now keying the input checks its tables' sha256 and refuses the changed one."""
    src, df = _written(tmp_path, "rollouts")
    w = A.ArtifactWriter(tmp_path / "out", "judge", {}, inputs={"rollouts": src})
    w.set_table("judgments", make_rows(A.JUDGMENTS))
    w.finish()
    assert A.ArtifactWriter(tmp_path / "out", "judge", {}, inputs={"rollouts": src}).up_to_date()
    df.with_columns(pl.lit("changed").alias("completion")).write_parquet(src / table_file("rollouts"))
    with pytest.raises(ThinkrlError, match="rollouts/part-00000.parquet: changed after its manifest was written"):
        A.ArtifactWriter(tmp_path / "out", "judge", {}, inputs={"rollouts": src})
