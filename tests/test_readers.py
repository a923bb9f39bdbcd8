"""Every table of every artifact kind reads as exactly that table in polars, duckdb, pandas and Hugging Face
`datasets`, by the paths docs/ARTIFACTS.md prints (`read_snippets`), and a copied run keeps its links.

Before: tables were `<table>.parquet` files side by side with `manifest.json`, so `thoughts/*.parquet` mixed the
thoughts and advantages tables (duckdb counted both, `datasets` failed with a CastError) and
`pandas.read_parquet("rollouts")` failed on the manifest.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import datasets
import duckdb
import pandas as pd
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from thinkrl.artifacts import MANIFEST, SCHEMAS, read_manifest, read_snippets, read_table


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread) -> Path:
    """One round of `thinkrl run` on the tiny policy (every stage's artifact) and a judge-eval artifact."""
    from thinkrl.artifacts import write_artifact
    from thinkrl.experiment import ExperimentConfig
    from thinkrl.judge_eval import JudgeEvalConfig, run_judge_eval_stage
    from thinkrl.models import init_model
    from thinkrl.rounds import run_experiment
    from thinkrl.tasks.arith import ArithConfig, generate_problems
    from thinkrl.warmstart import WarmstartConfig, warmstart

    root = tmp_path_factory.mktemp("readers")
    easy = ArithConfig(min_ops=1, max_ops=1, max_value=9, addsub_max=9)  # some right, some wrong: a real step
    init_model("tiny", root / "init", seed=0)
    warmstart(root / "init", root / "policy", WarmstartConfig(steps=100, warmup_steps=20, corpus_size=1500,
                                                              threads=1), arith_cfg=easy)
    problems = [{"problem_id": p.problem_id, "source": "easy", "question": p.question, "answer": str(p.answer),
                 "meta": "{}"} for p in generate_problems(8, 11, easy)]
    write_artifact(root / "problems", "prepare", {"easy": 11}, {"problems": problems})
    cfg = ExperimentConfig(policy=str(root / "policy"), rounds=1, prompts_per_round=4, n=4, max_tokens=24,
                           part_size=1, prompts_per_step=1, problems=str(root / "problems"), judge="oracle",
                           eval_initial=False, eval_bench=str(root / "problems"), eval_problems=2, eval_k=2)
    run_experiment(cfg, root / "runs" / "r")
    rd = root / "runs" / "r" / "round-000"
    run_judge_eval_stage(rd / "judge-eval", JudgeEvalConfig(judge="oracle"), rd / "rollouts", root)
    return rd


def _artifacts(rd: Path) -> dict[str, Path]:
    found = {}
    for m in sorted(rd.rglob(MANIFEST)):
        for table in read_manifest(m.parent)["outputs"]:
            found[table] = m.parent
    return found


def _rows(df: pl.DataFrame, key: tuple[str, ...]) -> list[dict]:
    return df.sort(list(key)).to_dicts()


def test_every_table_kind_is_written(run):
    assert set(_artifacts(run)) == set(SCHEMAS)
    assert read_table(_artifacts(run)["train_metrics"], "train_metrics").height >= 1  # a real optimizer step


@pytest.mark.parametrize("table", sorted(SCHEMAS))
def test_each_reader_gets_exactly_the_table(run, table, monkeypatch):
    art = _artifacts(run)[table]
    want = read_table(art, table, allow_empty=True)
    schema = SCHEMAS[table]
    monkeypatch.chdir(art.parent)  # the snippets name the artifact directory relative to its parent
    pl_snip, duck_snip, pd_snip, ds_snip = read_snippets(art.name, table)
    env = {"polars": pl, "duckdb": duckdb, "pandas": pd, "datasets": datasets}

    got_pl = eval(pl_snip, env)
    assert_frame_equal(got_pl, want)
    got_duck = pl.from_arrow(eval(duck_snip, env).arrow())
    assert got_duck.height == want.height and got_duck.columns == want.columns
    assert _rows(got_duck, schema.key) == _rows(want, schema.key)
    got_pd = pl.from_pandas(eval(pd_snip, env))
    assert got_pd.height == want.height and got_pd.columns == want.columns
    assert _rows(got_pd.cast(want.schema), schema.key) == _rows(want, schema.key)
    if want.height:  # `datasets` cannot build a dataset from a file without rows
        got_ds = pl.from_arrow(eval(ds_snip, env).data.table)
        assert got_ds.columns == want.columns and _rows(got_ds.cast(want.schema), schema.key) == _rows(want, schema.key)


@pytest.mark.parametrize("art", ["rollouts", "judgments"])
def test_a_one_table_artifact_reads_whole_in_pandas_and_duckdb(run, art, monkeypatch):
    """The artifact directory itself: pandas (pyarrow) and a recursive duckdb glob skip `_manifest.json`."""
    monkeypatch.chdir(run)
    want = read_table(art, art)
    assert pd.read_parquet(art).shape == (want.height, want.width)
    assert duckdb.sql(f"SELECT count(*) FROM '{art}/**/*.parquet'").fetchall()[0][0] == want.height


def test_a_copied_run_keeps_its_links(run, tmp_path):
    """Manifests store inputs relative to the artifact, so a run copied elsewhere finds its policy (the rollout
    view shows tokens, not the char-level fallback) and its related artifacts."""
    from thinkrl.lineage import policy_of
    from thinkrl.rollout_view import open_view

    copy = tmp_path / "elsewhere"
    shutil.copytree(run.parents[2], copy, ignore=shutil.ignore_patterns("init"))  # policy/, problems/, runs/
    moved = copy / "runs" / "r" / "round-000"
    shutil.rmtree(run.parents[2] / "policy.moved", ignore_errors=True)
    (run.parents[2] / "policy").rename(run.parents[2] / "policy.moved")  # the original policy is gone
    try:
        ro = read_table(moved / "rollouts", "rollouts")
        assert policy_of(moved / "rollouts", ro["policy"][0]) == copy / "policy"
        view = open_view(moved / "thoughts")
        assert not any("char-level" in n or "is gone" in n for n in view.notes), view.notes
        assert view.sources["judgments"] is not None
    finally:
        (run.parents[2] / "policy.moved").rename(run.parents[2] / "policy")
