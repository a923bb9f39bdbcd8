"""Sharded stages (thinkrl.shards): n shards of sample, judge, segment or eval write into one --out and merge into
the very tables of a 1-process run (bytes compared), with the same manifest config; `thinkrl merge` refuses a
missing shard, a shard of another config, mixed n and a directory with no parts; a shard killed with kill -9
and rerun resumes from its parts; a merge happens once when shards finish together."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest
from conftest import cli_command, cli_env

from thinkrl.artifacts import MANIFEST, PARTS, read_manifest, table_file, write_artifact
from thinkrl.errors import ThinkrlError

REPO = Path(__file__).resolve().parents[1]
TABLES = {"sample": ["rollouts"], "judge": ["judgments"], "segment": ["thoughts", "advantages"],
          "eval": ["eval_samples", "eval_summary"]}
TIMING = {"seconds", "tokens_per_s", "shards"}  # manifest metrics that may differ between 1 process and n shards
RUN = {"new_tokens", "judge_tokens_per_rollout", "failed_rollouts_this_run", "reasons_this_run"}  # of the last runs


@pytest.fixture(scope="module")
def base(tmp_path_factory, one_thread):
    """A tiny policy, 8 problems, and the 1-process artifacts of every stage (in-process, the library path)."""
    from thinkrl.models import init_model
    from thinkrl.problems import arith_task

    root = tmp_path_factory.mktemp("shards")
    init_model("tiny", root / "policy", seed=0)
    write_artifact(root / "problems", "prepare", {}, {"problems": arith_task(n=8, seed=3)})
    for stage in TABLES:
        run_stage(root, stage, root / "one" / stage)
    return root


def args_of(root: Path, stage: str, out: Path, shard: str | None = None) -> list[str]:
    """The CLI arguments of each stage on the fixture (several parts each)."""
    one = root / "one"
    common = {
        "sample": ["--policy", root / "policy", "--problems", root / "problems", "-n", 2, "--max-tokens", 12,
                   "--part-size", 2, "--seed", 7],                                                     # 4 parts
        "judge": ["--rollouts", one / "sample", "--judge", "rule", "--part-size", 3],                 # 6 parts
        "segment": ["--rollouts", one / "sample", "--judgments", one / "judge", "--part-size", 2],    # 4 parts
        "eval": ["--policy", root / "policy", "--bench", f"arith,{root / 'problems'}", "--limit", 3, "-k", 2,
                 "--max-tokens", 12, "--part-size", 2],                                                # 2 + 2 parts
    }[stage]
    return [stage, *map(str, common), "--out", str(out), *(["--shard", shard] if shard else [])]


def run_stage(root: Path, stage: str, out: Path, shard: tuple[int, int] = (0, 1), **changes):
    """The stage's library function with the settings of `args_of` (what the CLI calls)."""
    one = root / "one"
    if stage == "sample":
        from thinkrl.sampling import SampleConfig, run_sample_stage

        cfg = SampleConfig(n=2, max_tokens=12, part_size=2, seed=7, shard=shard, **changes)
        return run_sample_stage(root / "problems", root / "policy", out, cfg)
    if stage == "judge":
        from thinkrl.judge.judging import JudgeConfig, run_judge_stage

        return run_judge_stage(one / "sample", out, JudgeConfig(**{"judge": "rule", "part_size": 3, "shard": shard,
                                                                   **changes}))
    if stage == "segment":
        from thinkrl.segment import SegmentConfig, run_segment_stage

        return run_segment_stage(one / "sample", one / "judge", out,
                                 SegmentConfig(**{"part_size": 2, "shard": shard, **changes}))
    from thinkrl.evaluate import EvalConfig, run_eval_stage
    from thinkrl.problems import problem_sets

    cfg = EvalConfig(k=2, max_tokens=12, part_size=2, limit=3, shard=shard, **changes)
    return run_eval_stage(problem_sets(f"arith,{root / 'problems'}", root, cfg.limit), root / "policy", out, cfg)


def assert_same_as_one_process(root: Path, stage: str, out: Path, one: Path | None = None,
                               resumed: bool = False, shards: int = 2) -> None:
    """The merged artifact holds the 1-process run's tables byte for byte (the fixture's, or `one`), and its
    config, key and metrics (resumed: but the figures of what the last runs did, e.g. new tokens)."""
    one = one or root / "one" / stage
    for table in TABLES[stage]:
        assert (out / table_file(table)).read_bytes() == (one / table_file(table)).read_bytes(), (stage, table)
    m, m1 = read_manifest(out), read_manifest(one)
    assert (m["config"], m["key"]) == (m1["config"], m1["key"])
    strip = lambda d: {k: v for k, v in d.items() if k not in TIMING | (RUN if resumed else set())}  # noqa: E731
    assert strip(m["metrics"]) == strip(m1["metrics"]) and m["metrics"].get("shards", 1) == shards
    assert not (out / PARTS).exists()


def cli_one_process(base: Path, tmp_path: Path, run_cli, stage: str) -> Path | None:
    """The 1-process run of a model stage through the CLI (the fixture's ran in-process on one torch thread; the
    CLI's threads give other float sums, whatever the sharding); None for judge and segment (no floats summed
    on threads: the fixture's artifacts are the reference)."""
    if stage in ("judge", "segment"):
        return None
    rc, _, err = run_cli(args_of(base, stage, tmp_path / "one"))
    assert rc == 0, err
    return tmp_path / "one"


@pytest.mark.parametrize("stage", list(TABLES))
def test_two_shards_merge_into_the_one_process_tables(base, tmp_path, stage):
    out = tmp_path / "out"
    r = run_stage(base, stage, out, (1, 2))
    assert r.pending and "shard 1/2 done; waiting for shards 0" in r.pending and not (out / MANIFEST).exists()
    marker = json.loads((out / PARTS / "_shards" / "shard-1-of-2.json").read_text())
    assert marker["parts"] == marker["all_parts"][1::2] and marker["n"] == 2
    r = run_stage(base, stage, out, (0, 2))
    assert r.pending is None and not r.skipped
    assert_same_as_one_process(base, stage, out)
    assert run_stage(base, stage, out, (1, 2)).skipped  # merged: every shard of the job is up to date


@pytest.mark.parametrize("stage", ["judge", "segment"])
def test_a_shard_with_no_part_of_its_own_joins_and_merges(base, tmp_path, stage):
    """More shards than parts: shard 7/8 owns nothing (4-6 parts here). Finishing first, it still joins the job (its
    marker, no parts), and the shard that finishes last merges the 1-process tables."""
    out = tmp_path / "out"
    r = run_stage(base, stage, out, (7, 8))
    assert r.pending and "shard 7/8 done; waiting for shards 0, 1, 2, 3, 4, 5, 6" in r.pending
    assert json.loads((out / PARTS / "_shards" / "shard-7-of-8.json").read_text())["parts"] == []
    for k in range(7):
        r = run_stage(base, stage, out, (k, 8))
        assert (r.pending is None) == (k == 6), (k, r.pending)
    assert_same_as_one_process(base, stage, out, shards=8)


@pytest.mark.parametrize("stage", ["judge", "segment", pytest.param("sample", marks=pytest.mark.slow),
                                   pytest.param("eval", marks=pytest.mark.slow)])
def test_cli_shards_wait_merge_and_merge_refuses_a_missing_shard(base, tmp_path, run_cli, stage):
    out, one = tmp_path / "out", cli_one_process(base, tmp_path, run_cli, stage)
    rc, _, err = run_cli(args_of(base, stage, out, "0/2"))
    assert rc == 0, err
    assert "shard 0/2 done; waiting for shards 1" in " ".join(err.split()) and not (out / MANIFEST).exists()
    rc, _, err = run_cli(["merge", out])
    assert rc == 2 and "shard(s) 1 of 2 have not finished" in err and not (out / MANIFEST).exists()
    rc, _, err = run_cli(args_of(base, stage, out, "1/2"))
    assert rc == 0, err
    assert_same_as_one_process(base, stage, out, one)
    rc, _, err = run_cli(["merge", out])
    assert rc == 0 and "already merged" in err


@pytest.mark.parametrize("stage, after", [("segment", 3), pytest.param("judge", 1, marks=pytest.mark.slow),
                                          pytest.param("sample", 1, marks=pytest.mark.slow),
                                          pytest.param("eval", 1, marks=pytest.mark.slow)])
def test_shard_killed_with_kill_9_and_rerun_resumes_and_merges_the_same(base, tmp_path, run_cli, stage, after):
    """Shard 0 is SIGKILLed right after its `after`-th part file (segment: 3 = one whole part and half of the next,
    its advantages without its thoughts); the rerun keeps the finished parts and the merge is the 1-process run."""
    out, one = tmp_path / "out", cli_one_process(base, tmp_path, run_cli, stage)
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "kill_after_parts.py"), str(after),
                           *args_of(base, stage, out, "0/2")], env=cli_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr
    table = TABLES[stage][-1] if stage == "segment" else TABLES[stage][0]
    first = out / PARTS / table / ("000000.parquet" if stage != "eval" else "arith-000000.parquet")
    assert first.is_file() and not (out / PARTS / "_shards").exists()
    stamp = first.stat().st_mtime_ns
    rc, _, err = run_cli(args_of(base, stage, out, "0/2"))
    assert rc == 0 and "waiting for shards 1" in " ".join(err.split()), err
    assert first.stat().st_mtime_ns == stamp  # resumed, not written again
    rc, _, err = run_cli(args_of(base, stage, out, "1/2"))
    assert rc == 0, err
    assert_same_as_one_process(base, stage, out, one, resumed=True)


def segment_shards_unmerged(base: Path, out: Path, monkeypatch) -> None:
    """Both segment shards finished (markers written), the merge not run yet (as when the last died in it)."""
    import thinkrl.shards as shards

    assert run_stage(base, "segment", out, (0, 2)).pending
    real = shards.merge
    monkeypatch.setattr(shards, "merge", lambda out, **kw: shards.StageResult(out, False, {}, pending="x"))
    assert run_stage(base, "segment", out, (1, 2)).pending == "x"
    monkeypatch.setattr(shards, "merge", real)
    assert len(list((out / PARTS / "_shards").glob("*.json"))) == 2 and not (out / MANIFEST).exists()


def test_merge_refuses_no_parts_mixed_n_another_config_and_a_missing_part(base, tmp_path, run_cli, monkeypatch):
    from thinkrl.shards import merge

    rc, _, err = run_cli(["merge", tmp_path / "nothing"])
    assert rc == 2 and "nothing to merge: no _parts/" in err
    # a shard of another config (alpha) is refused before it writes: the parts are a sharded job's
    out = tmp_path / "cfg"
    assert run_stage(base, "segment", out, (0, 2)).pending
    with pytest.raises(ThinkrlError, match="holds the parts of a sharded run of another config"):
        run_stage(base, "segment", out, (1, 2), alpha=0.5)
    # mixed n: 0/2 and 0/3 share the key and parts, but not the split
    with pytest.raises(ThinkrlError, match=r"shards of different n finished \(n=2: shards 0; n=3: shards 0\)"):
        run_stage(base, "segment", out, (0, 3))
    rc, _, err = run_cli(["merge", out])
    assert rc == 2 and "different n" in err
    # a marker of another config (a hand-made or copied marker)
    out = tmp_path / "marker"
    segment_shards_unmerged(base, out, monkeypatch)
    f = out / PARTS / "_shards" / "shard-1-of-2.json"
    good = f.read_text()
    f.write_text(good.replace(json.loads(good)["key"], "0" * 64))
    rc, _, err = run_cli(["merge", out])
    assert rc == 2 and "shard 1/2 (shard-1-of-2.json) belongs to another config or inputs" in err
    f.write_text(good)
    # a part missing (a shard that skipped one): refused, nothing finished
    part = out / PARTS / "advantages" / "000003.parquet"
    part.rename(part.with_suffix(".away"))
    rc, _, err = run_cli(["merge", out])
    assert rc == 2 and "_parts/advantages lacks parts ['000003']" in err and not (out / MANIFEST).exists()
    part.with_suffix(".away").rename(part)
    # a marker that claims less than its share: the parts are not covered once
    m = json.loads(good)
    f.write_text(json.dumps({**m, "parts": m["parts"][:-1]}))
    with pytest.raises(ThinkrlError, match=r"do not cover the input once \(missing \['000003'\]"):
        merge(out)
    f.write_text(good)
    rc, _, err = run_cli(["merge", out])  # all good again: merged by hand, as the last shard would have
    assert rc == 0 and "merged 2 shards of `segment`" in err, err
    assert_same_as_one_process(base, "segment", out)
    # a directory whose shards all died before their markers
    out = tmp_path / "killed"
    (out / PARTS).mkdir(parents=True)
    (out / PARTS / "key").write_text("k\n")
    rc, _, err = run_cli(["merge", out])
    assert rc == 2 and "no shard has finished" in err


def test_cli_shards_started_together_merge_once(base, tmp_path):
    out = tmp_path / "out"
    procs = [subprocess.Popen(cli_command(args_of(base, "segment", out, f"{k}/2")), env=cli_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert sum("waiting for shards" in e for e in errs) <= 1  # the other one merged (or both found it merged)
    assert_same_as_one_process(base, "segment", out)


def test_merge_happens_once_when_shards_finish_together(base, tmp_path, monkeypatch):
    """Two merges at once (the last two shards finishing together): the lock lets one finish the artifact; the
    other finds it merged."""
    import thinkrl.segment as segment
    from thinkrl.shards import merge

    out = tmp_path / "out"
    segment_shards_unmerged(base, out, monkeypatch)
    calls = []
    real = segment.finish_segment

    def slow_finish(writer, runs):
        calls.append(1)
        time.sleep(0.5)  # the other merge arrives while this one holds the lock
        return real(writer, runs)

    monkeypatch.setattr(segment, "finish_segment", slow_finish)
    results = []
    threads = [threading.Thread(target=lambda: results.append(merge(out))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(r.skipped for r in results) == [False, True]
    assert_same_as_one_process(base, "segment", out)


@pytest.mark.parametrize("stage", ["judge", "segment"])
def test_judge_and_segment_tables_and_metrics_do_not_depend_on_the_part_size(base, tmp_path, stage):
    """Their parts cut the rows, not the work (sample and eval: a part is one engine batch, in the key): one
    part of everything gives the fixture's tables and metrics (so a merge that lost some parts' figures shows)."""
    out = tmp_path / "out"
    run_stage(base, stage, out, part_size=1000)
    assert_same_as_one_process(base, stage, out, shards=1)


def test_one_process_resumes_the_parts_of_shards(base, tmp_path):
    """A part is the same part whoever wrote it: a 1-process run finishes what a shard began."""
    out = tmp_path / "out"
    assert run_stage(base, "segment", out, (0, 2)).pending
    r = run_stage(base, "segment", out)
    assert r.pending is None and pl.read_parquet(out / table_file("thoughts")).equals(
        pl.read_parquet(base / "one" / "segment" / table_file("thoughts")))
    assert "shards" not in read_manifest(out)["metrics"]
