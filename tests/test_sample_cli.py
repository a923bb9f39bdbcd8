"""The sample and eval stages through the real CLI: determinism, shards merged, kill -9 and resume, eval scores."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import cli_command, cli_env

from thinkrl.artifacts import read_table, table_file

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from thinkrl.models import init_model
    from thinkrl.problems import arith_task

    root = tmp_path_factory.mktemp("s")
    policy = init_model("tiny", root / "policy", seed=0)
    from thinkrl.artifacts import write_artifact

    write_artifact(root / "problems", "prepare", {}, {"problems": arith_task(n=12, seed=3)})
    return root, policy


def sample_args(root: Path, policy: Path, out: Path, *extra: str) -> list[str]:
    return ["sample", "--policy", str(policy), "--problems", str(root / "problems"), "-n", "4",
            "--max-tokens", "40", "--part-size", "1", "--seed", "7", "--out", str(out), *extra]


def test_same_seed_byte_identical_and_shards_merge_into_it(setup, run_cli):
    root, policy = setup
    for name in ("a", "b"):
        rc, _, err = run_cli(sample_args(root, policy, root / name))
        assert rc == 0, err
    assert (root / "a" / table_file("rollouts")).read_bytes() == (root / "b" / table_file("rollouts")).read_bytes()
    df = read_table(root / "a", "rollouts")
    assert df.height == 48 and df["rollout_id"].n_unique() == 48
    m = json.loads((root / "a/_manifest.json").read_text())
    assert {"accuracy", "mean_tokens", "truncation_rate"} <= set(m["metrics"])
    if not torch.cuda.is_available():  # auto resolved before the key: what the engine really ran on
        assert (m["config"]["device"], m["config"]["dtype"]) == ("cpu", "float32")
    # two shards into one --out: the last merges into the unsharded run's very file, under the same key
    for k in range(2):
        rc, _, err = run_cli(sample_args(root, policy, root / "sharded", "--shard", f"{k}/2"))
        assert rc == 0, err
    assert "waiting" not in err and (root / "sharded" / table_file("rollouts")).read_bytes() == (
        root / "a" / table_file("rollouts")).read_bytes()
    ms = json.loads((root / "sharded/_manifest.json").read_text())
    assert (ms["key"], ms["config"], ms["metrics"]["shards"]) == (m["key"], m["config"], 2)
    # rerun: up to date, skipped; the same device and dtype named explicitly have the same key
    rc, _, err = run_cli(sample_args(root, policy, root / "a"))
    assert rc == 0 and "up to date" in err
    if not torch.cuda.is_available():
        rc, _, err = run_cli(sample_args(root, policy, root / "a", "--device", "cpu", "--dtype", "float32"))
        assert rc == 0 and "up to date" in err
        rc, _, err = run_cli(sample_args(root, policy, root / "c", "--device", "cuda"))
        assert rc == 2 and "CUDA is not available" in err and not (root / "c").exists()
    rc, _, err = run_cli(sample_args(root, policy, root / "c", "--gpu-memory-utilization", "0.5"))
    assert rc == 2 and "apply to --engine vllm only" in err


def test_kill_9_mid_run_then_rerun_gives_the_same_rows(setup, run_cli):
    root, policy = setup
    out = root / "killed"
    proc = subprocess.Popen(cli_command(sample_args(root, policy, out)), env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = out / "_parts" / "rollouts"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(parts.glob("*.parquet"))) < 2:
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "_manifest.json").exists(), "the run finished before it could be killed"
    done = len(list(parts.glob("*.parquet")))
    assert 1 <= done < 12
    rc, _, err = run_cli(sample_args(root, policy, out))
    assert rc == 0, err
    if not (root / "a").exists():
        assert run_cli(sample_args(root, policy, root / "a"))[0] == 0
    assert (out / table_file("rollouts")).read_bytes() == (root / "a" / table_file("rollouts")).read_bytes()


def test_eval_writes_samples_and_summary(setup, run_cli):
    root, policy = setup
    rc, _, err = run_cli(["eval", "--policy", str(policy), "--bench", "arith", "--limit", "5", "-k", "3",
                          "--max-tokens", "32", "--out", str(root / "e")])
    assert rc == 0, err
    assert "avg@3" in err and "arith" in err
    s = read_table(root / "e", "eval_summary").to_dicts()[0]
    samples = read_table(root / "e", "eval_samples")
    assert samples.height == 15 and s["problems"] == 5 and s["k"] == 3
    assert s["avg_at_k"] == pytest.approx(samples["correct"].mean())
    m = json.loads((root / "e/_manifest.json").read_text())
    assert m["config"]["template"] == "chat-plain" and m["config"]["temperature"] == 0.6
