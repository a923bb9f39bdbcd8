"""Tests for thinkrl.trainer (and the train stage): one step against a hand-written GRPO reference, exact
resume, non-finite steps, token_logprobs against full forwards, micro-batching, DDP under torchrun, the per-step
figures of train_metrics by hand, and the rows a tracker is handed (resume, skip).
Tiny random Llama models (hidden 32, 2 layers) and a one-character-per-token tokenizer built here."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from char_tokenizer import char_tokenizer
from safetensors.torch import load_file
from tb_events import scalars
from transformers import LlamaConfig, LlamaForCausalLM

from thinkrl.artifacts import read_manifest, read_table, write_artifact
from thinkrl.errors import ThinkrlError
from thinkrl.loss import BatchCounts, LossConfig
from thinkrl.trainer import (
    Rollout,
    TrainConfig,
    accumulate_gradients,
    lr_factor,
    pass_permutation,
    plan_micro_batches,
    prepare_groups,
    step_figures,
    step_rollouts,
    token_logprobs,
    train,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    return tiny_policy(tmp_path_factory.mktemp("policy"))


def tiny_policy(d: Path) -> Path:
    """A saved tiny Llama policy directory (hidden 32, 2 layers) with tokenizer and thinkrl.json, in d."""
    tok = char_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    (d / "thinkrl.json").write_text('{"template": "raw"}\n')
    return d


def load(policy: Path, dtype=torch.float32) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_pretrained(policy, dtype=torch.float32).to(dtype).eval()


def make_data(model, problems: int, group: int, seed: int = 0, off_policy: float = 0.0,
              zero: int = 0, max_tokens: int = 16, round_: int = 0) -> pl.DataFrame:
    """Random prompts/completions of varied lengths, outcome advantages (constant per rollout), behaviour
    log-probs from the model itself (+ noise when off_policy > 0); `zero` rollouts per group get A = 0."""
    rng = np.random.default_rng(seed)
    vocab = model.config.vocab_size
    rows = []
    for p in range(problems):
        prompt = rng.integers(4, vocab, int(rng.integers(2, 9))).tolist()
        for s in range(group):
            comp = rng.integers(4, vocab, int(rng.integers(1, 13))).tolist()
            a = 0.0 if s < zero else float(rng.normal())
            rows.append({"rollout_id": f"p{p:02d}/s{s}", "problem_id": f"p{p:02d}", "prompt_ids": prompt,
                         "completion_ids": comp, "advantages": [a] * len(comp), "outcome_advantage": a,
                         "correct": a > 0, "round": round_, "temperature": 1.0, "max_tokens": max_tokens,
                         "finish_reason": "stop", "incorrect_tokens": 0})
    lps = token_logprobs(model, [r["prompt_ids"] for r in rows], [r["completion_ids"] for r in rows], 64)
    for r, lp in zip(rows, lps, strict=True):
        r["behaviour_logprobs"] = (lp + off_policy * rng.normal(size=len(lp))).astype(np.float32).tolist()
    return pl.DataFrame(rows)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "policy" / "model.safetensors")


def state(out: Path) -> dict:
    return torch.load(out / "state" / "trainer.pt", weights_only=True)


def same_tree(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_tree(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same_tree(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def rows_without_timing(out: Path) -> list[dict]:
    return read_table(out, "train_metrics").drop("seconds", "mfu", "tokens_per_s").to_dicts()


# ------------------------------------------------------------------------------------------ (1) reference
def test_one_step_equals_hand_written_grpo(policy, tmp_path):
    """On-policy data (ratio 1), outcome advantages, seq-mean-token-mean, β = 0, float64: the loss and every
    gradient equal those of -mean_i mean_t A_i log π(o_it), written here with one forward per rollout."""
    model = load(policy, torch.float64)
    df = make_data(model, problems=3, group=4, seed=1)
    rollouts = [r for g in prepare_groups(df)[0] for r in g]
    mbs = plan_micro_batches(rollouts, 40)                                   # several micro-batches
    assert len(mbs) > 1
    counts = BatchCounts(sequences=len(rollouts), tokens=sum(len(r.completion_ids) for r in rollouts),
                         micro_batches=len(mbs), norm_len=12)
    reference = copy.deepcopy(model)
    model.zero_grad()
    sums = accumulate_gradients(model, mbs, counts, LossConfig(aggregation="seq-mean-token-mean"))

    per_seq = []
    for row in df.to_dicts():                                                # independent of thinkrl
        prompt, comp = row["prompt_ids"], row["completion_ids"]
        logits = reference(input_ids=torch.tensor([prompt + comp])).logits[0]  # (P + C, V)
        logp = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1)          # (C, V)
        logp = logp[torch.arange(len(comp)), torch.tensor(comp)]                # (C,)
        per_seq.append((row["advantages"][0] * logp).mean())
    objective = -torch.stack(per_seq).mean()
    objective.backward()
    want_loss = -float(np.mean([row["advantages"][0] for row in df.to_dicts()]))  # -mean A_i ρ with ρ = 1

    assert sums["loss"] == pytest.approx(want_loss, abs=1e-6)
    got, want = dict(model.named_parameters()), dict(reference.named_parameters())
    for name, p in want.items():
        assert torch.allclose(got[name].grad, p.grad, atol=1e-6, rtol=0), name
    assert max(p.grad.abs().max().item() for p in want.values()) > 1e-3      # the check is not vacuous

    out = tmp_path / "run"                                                   # the same step through train()
    m = train(policy, df, TrainConfig(prompts_per_step=3, dtype="float64", max_steps=1), out)
    assert m["steps"] == 1
    assert read_table(out, "train_metrics")["loss"][0] == pytest.approx(want_loss, abs=1e-6)


# ------------------------------------------------------------------------------------------ (2) resume
RESUME_CFG = dict(prompts_per_step=2, epochs=2, lr=3e-3, warmup_steps=1, schedule="cosine", weight_decay=0.01,
                  micro_batch_tokens=48, save_every=3)


def test_resume_is_exact(policy, tmp_path):
    df = make_data(load(policy), problems=5, group=3, seed=2, off_policy=0.3)  # 3 steps/pass, 6 in all
    straight, split, killed = tmp_path / "straight", tmp_path / "split", tmp_path / "killed"
    train(policy, df, TrainConfig(**RESUME_CFG, max_steps=4), straight)
    train(policy, df, TrainConfig(**RESUME_CFG, max_steps=2), split)          # returns after 2 steps
    assert len(read_table(split, "train_metrics")) == 2
    train(policy, df, TrainConfig(**RESUME_CFG, max_steps=4), split)          # resumes from state at step 2

    def die_at_4(row, done, total):
        if done == 4:
            raise KeyboardInterrupt                                          # killed after step 4, state at 3
    with pytest.raises(KeyboardInterrupt):
        train(policy, df, TrainConfig(**RESUME_CFG, max_steps=4), killed, progress=die_at_4)
    assert state(killed)["step"] == 3 and not (killed / "_manifest.json").exists()
    train(policy, df, TrainConfig(**RESUME_CFG, max_steps=4), killed)

    w = weights(straight)
    assert not torch.equal(w["model.norm.weight"], load(policy).state_dict()["model.norm.weight"])
    for other in (split, killed):
        wo = weights(other)
        assert w.keys() == wo.keys() and all(torch.equal(w[k], wo[k]) for k in w)
        assert state(other)["step"] == 4
        assert same_tree(state(straight)["optimizer"], state(other)["optimizer"])
        assert rows_without_timing(straight) == rows_without_timing(other)
    lrs = read_table(straight, "train_metrics")["lr"].to_list()
    assert lrs == pytest.approx([3e-3 * lr_factor(s, 6, 1, "cosine") for s in range(4)])


def test_batches_keep_groups_and_follow_seed(policy, tmp_path):
    assert pass_permutation(0, 1, 10).tolist() == pass_permutation(0, 1, 10).tolist()
    assert pass_permutation(0, 0, 10).tolist() != pass_permutation(0, 1, 10).tolist()
    df = make_data(load(policy), problems=4, group=3, seed=3, zero=1)  # 1 of 3 rollouts per group dropped
    groups, dropped = prepare_groups(df.reverse())                            # row order does not matter
    assert dropped == 4 and [len(g) for g in groups] == [2, 2, 2, 2]
    assert [g[0].problem_id for g in groups] == ["p00", "p01", "p02", "p03"]
    m = train(policy, df, TrainConfig(prompts_per_step=3, max_steps=2), tmp_path / "o")
    t = read_table(tmp_path / "o", "train_metrics")
    assert m["dropped_rollouts"] == 4 and t["dropped_rollouts"].to_list() == [4, 4]
    assert t["tokens"].sum() == sum(len(r.completion_ids) for g in groups for r in g)  # 3 groups + the last 1


def test_kl_to_reference(policy, tmp_path):
    """β > 0 loads the reference (default: the input policy): KL is 0 before the first update, then > 0."""
    df = make_data(load(policy), problems=2, group=3, seed=9)
    train(policy, df, TrainConfig(prompts_per_step=1, epochs=2, lr=1e-2, beta=0.5), tmp_path / "kl")
    t = read_table(tmp_path / "kl", "train_metrics")
    assert t["kl"][0] == pytest.approx(0.0, abs=1e-7) and (t["kl"][1:] > 1e-6).all()


# ------------------------------------------------------------------------------------------ (3) non-finite
def test_nan_step_is_skipped_and_counted(policy, tmp_path):
    model = load(policy)
    df = make_data(model, problems=3, group=2, seed=4)
    df = df.with_columns(pl.when(pl.col("problem_id") == "p01").then(pl.col("advantages").list.eval(
        pl.element() * float("nan"))).otherwise(pl.col("advantages")).alias("advantages"))
    m = train(policy, df, TrainConfig(prompts_per_step=1, lr=1e-2), tmp_path / "a")
    t = read_table(tmp_path / "a", "train_metrics")
    assert m["skipped_steps"] == 1 and t["skipped"].sum() == 1
    assert math.isnan(t.filter(pl.col("skipped"))["loss"][0]) and m["steps"] == 3
    assert all(math.isfinite(x) for x in t.filter(~pl.col("skipped"))["loss"])

    only_nan = df.filter(pl.col("problem_id") == "p01")                      # every step non-finite
    train(policy, only_nan, TrainConfig(prompts_per_step=1, epochs=2, lr=1e-2, max_nonfinite_in_row=5),
          tmp_path / "b")
    w0 = model.state_dict()
    assert all(torch.equal(v, w0[k]) for k, v in weights(tmp_path / "b").items())   # no update happened
    with pytest.raises(ThinkrlError, match="3 optimizer steps in a row had a non-finite loss"):
        train(policy, only_nan, TrainConfig(prompts_per_step=1, epochs=5, max_nonfinite_in_row=3),
              tmp_path / "c")


def test_bad_tables_fail_clearly(policy, tmp_path):
    df = make_data(load(policy), problems=2, group=2, seed=5)
    with pytest.raises(ThinkrlError, match="completion_ids but"):
        train(policy, df.with_columns(pl.col("advantages").list.head(1)), TrainConfig(), tmp_path / "x")
    with pytest.raises(ThinkrlError, match="all-zero advantages"):
        zeros = df.with_columns(pl.col("advantages").list.eval(pl.element() * 0))
        train(policy, zeros, TrainConfig(), tmp_path / "x")
    with pytest.raises(ThinkrlError, match="missing column 'temperature'"):
        train(policy, df.drop("temperature"), TrainConfig(), tmp_path / "x")
    with pytest.raises(ThinkrlError, match="no behaviour_logprobs"):             # needed without recompute
        train(policy, df.drop("behaviour_logprobs"), TrainConfig(recompute_logprobs=False), tmp_path / "x")
    with pytest.raises(ThinkrlError, match="aggregation"):
        TrainConfig(aggregation="mean")
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------ (4) log-probs
def test_token_logprobs_match_full_forward(policy):
    model = load(policy)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12], [13, 14, 15], [16, 17], [18, 19, 20, 21]]
    comps = [[22, 23], [24, 25, 26, 27, 28, 29, 30, 31], [32], [], [33, 34, 35, 36]]
    for budget in (10**6, 12):                                               # one batch / several
        got = token_logprobs(model, prompts, comps, batch_tokens=budget)
        for p, c, lp in zip(prompts, comps, got, strict=True):
            assert lp.dtype == np.float32 and lp.shape == (len(c),)
            if not c:
                continue
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([p + c])).logits[0]
            want = torch.log_softmax(logits[len(p) - 1:-1], -1)[torch.arange(len(c)), torch.tensor(c)]
            np.testing.assert_allclose(lp, want.numpy(), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ (5) micro-batches
def test_micro_batching_gives_the_same_update(policy, tmp_path):
    model = load(policy)
    df = make_data(model, problems=2, group=5, seed=6, off_policy=0.3)
    rollouts = [r for g in prepare_groups(df)[0] for r in g]
    grads = []
    for budget in (10**6, 16):
        m = copy.deepcopy(model)
        mbs = plan_micro_batches(rollouts, budget)
        n = BatchCounts(len(rollouts), sum(len(r.completion_ids) for r in rollouts), len(mbs), norm_len=12)
        accumulate_gradients(m, mbs, n, LossConfig())
        grads.append({k: p.grad for k, p in m.named_parameters()})
    assert len(plan_micro_batches(rollouts, 16)) >= 5
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-6, rtol=0), k

    for budget in (10**6, 16):
        cfg = TrainConfig(prompts_per_step=2, lr=1e-3, micro_batch_tokens=budget, recompute_logprobs=False)
        train(policy, df, cfg, tmp_path / str(budget))
    a, b = weights(tmp_path / str(10**6)), weights(tmp_path / "16")
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)


# ------------------------------------------------------------------------------------------ outputs, stage
def test_outputs_and_stage_skip(policy, tmp_path):
    from stages.train import train as train_stage

    df = make_data(load(policy), problems=3, group=2, seed=7)
    thoughts = tmp_path / "thoughts"
    write_artifact(thoughts, "segment", {}, {"advantages": df})
    out = tmp_path / "train"
    train_stage(policy=policy, thoughts=thoughts, out=out, prompts_per_step=2, save_every=1)  # tensorboard: the default
    manifest = read_manifest(out)
    assert manifest["stage"] == "train" and manifest["outputs"]["train_metrics"]["rows"] == 2
    assert manifest["config"]["norm_len"] == 16                               # the generation budget
    files = {p.name for p in (out / "policy").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "thinkrl.json"} <= files
    assert json.loads((out / "policy" / "thinkrl.json").read_text()) == {"template": "raw"}
    reloaded = LlamaForCausalLM.from_pretrained(out / "policy")
    assert torch.equal(reloaded.state_dict()["model.norm.weight"], weights(out)["model.norm.weight"])
    mask = os.umask(0o022)  # policy/ and state/ are written through temp dirs (0700) and safetensors (0600)
    os.umask(mask)
    for d in (out / "policy", out / "state"):
        assert {(p.is_dir(), p.stat().st_mode & 0o777) for p in [d, *d.rglob("*")]} <= {
            (True, 0o777 & ~mask), (False, 0o666 & ~mask)}, d
    mtime = (out / "_manifest.json").stat().st_mtime_ns
    train_stage(policy=policy, thoughts=thoughts, out=out, prompts_per_step=2, save_every=1,   # up to date
                report_to="tensorboard")
    assert (out / "_manifest.json").stat().st_mtime_ns == mtime
    rows = read_table(out, "train_metrics")
    assert rows["step"].to_list() == [1, 2] and (rows["mfu"] > 0).all() and (rows["seconds"] > 0).all()
    assert scalars(out / "tb")["train/loss"] == [(s, float(np.float32(v))) for s, v in zip(rows["step"], rows["loss"],
                                                                                            strict=True)]
    assert manifest["metrics"]["tracking"] == {"report_to": "tensorboard", "log_dir": str(out / "tb")}
    behaviour = read_table(out, "behaviour")                                  # log pi_old as recomputed
    assert sorted(behaviour["rollout_id"]) == sorted(df["rollout_id"])
    want = token_logprobs(load(policy), df["prompt_ids"].to_list(), df["completion_ids"].to_list())
    got = dict(zip(behaviour["rollout_id"], behaviour["logprobs"], strict=True))
    for rid, lp in zip(df["rollout_id"], want, strict=True):
        np.testing.assert_allclose(got[rid], lp, atol=1e-5)


# ------------------------------------------------------------------------------------------ (6) DDP
def _torchrun() -> list[str]:
    exe = Path(sys.executable).parent / "torchrun"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


def torchrun_train(policy: Path, df: pl.DataFrame, cfg: dict, out: Path, kill: str | None = None,
                   nproc: int = 2) -> subprocess.CompletedProcess:
    """tests/ddp_worker.py under torchrun with `nproc` CPU ranks (gloo); kill="R:K": rank R SIGKILLs itself
    after its K-th step. Asserts success (and that every rank took part) unless a rank was to be killed."""
    data, cfg_file = out.parent / f"{out.name}.data.parquet", out.parent / f"{out.name}.cfg.json"
    df.write_parquet(data)
    cfg_file.write_text(json.dumps(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("THINKRL_TEST_KILL", None)
    if kill:
        env["THINKRL_TEST_KILL"] = kill
    cmd = [*_torchrun(), "--standalone", "--nproc-per-node", str(nproc), str(REPO / "tests" / "ddp_worker.py"),
           str(policy), str(data), str(out), str(cfg_file)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if not kill:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert all(f"rank {r}/{nproc} ok" in proc.stdout for r in range(nproc))
    return proc


def test_ddp_two_processes_match_one(policy, tmp_path):
    df = make_data(load(policy), problems=3, group=3, seed=8, off_policy=0.3)
    # problem p02 keeps a single rollout: in its step rank 1 has nothing and joins the all-reduce idle
    df = df.filter(~((pl.col("problem_id") == "p02") & (pl.col("rollout_id") != "p02/s0")))
    cfg = dict(prompts_per_step=1, epochs=1, lr=1e-3, micro_batch_tokens=24, save_every=0)
    torchrun_train(policy, df, cfg, tmp_path / "ddp")
    ddp_metrics = json.loads((tmp_path / "ddp.metrics.json").read_text())
    assert ddp_metrics["world_size"] == 2 and ddp_metrics["steps"] == 3

    single = train(policy, df, TrainConfig(**cfg), tmp_path / "single")
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "single")
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=0) for k in a)
    assert not torch.allclose(a["model.norm.weight"], load(policy).state_dict()["model.norm.weight"])
    la, lb = read_table(tmp_path / "ddp", "train_metrics"), read_table(tmp_path / "single", "train_metrics")
    np.testing.assert_allclose(la["loss"].to_numpy(), lb["loss"].to_numpy(), atol=1e-5)
    np.testing.assert_allclose(la["grad_norm"].to_numpy(), lb["grad_norm"].to_numpy(), rtol=1e-5)  # scale too
    assert la["tokens"].to_list() == lb["tokens"].to_list() and single["steps"] == 3
    np.testing.assert_allclose(la["entropy"].to_numpy(), lb["entropy"].to_numpy(), rtol=1e-5)  # summed over ranks
    figures = ["reward_mean", "reward_std", "response_len_mean", "response_len_max", "adv_mean", "adv_std", "adv_max"]
    assert la.select(figures).to_dicts() == lb.select(figures).to_dicts()     # the whole step's, not rank 0's share
    shutil.rmtree(tmp_path / "ddp")


def fsdp_data(policy: Path) -> pl.DataFrame:
    """3 problems: p02 keeps a single rollout, so in its step rank 1 has no micro-batch and must run idle ones
    to keep step with rank 0's forwards (FSDP's all-gathers)."""
    df = make_data(load(policy), problems=3, group=3, seed=8, off_policy=0.3)
    return df.filter(~((pl.col("problem_id") == "p02") & (pl.col("rollout_id") != "p02/s0")))


@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_fsdp_two_processes_match_one(policy, tmp_path, beta):
    """FSDP2 on 2 gloo ranks trains the weights of 1-rank training (to 1e-5): 2 passes (the log pi_old pass
    and unequal micro-batch counts per rank), a sharded reference model with beta > 0; policy/ is a plain
    checkpoint (architectures of the transformers class), state/ a DCP checkpoint."""
    df = fsdp_data(policy)
    cfg = dict(prompts_per_step=1, epochs=2, lr=1e-3, micro_batch_tokens=24, save_every=2, beta=beta,
               strategy="fsdp")
    torchrun_train(policy, df, cfg, tmp_path / "fsdp")
    m = json.loads((tmp_path / "fsdp.metrics.json").read_text())
    assert m["world_size"] == 2 and m["steps"] == 6
    single = train(policy, df, TrainConfig(**{**cfg, "strategy": "ddp"}), tmp_path / "single")
    a, b = weights(tmp_path / "fsdp"), weights(tmp_path / "single")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=0) for k in a)
    assert not torch.allclose(a["model.norm.weight"], load(policy).state_dict()["model.norm.weight"])
    la, lb = read_table(tmp_path / "fsdp", "train_metrics"), read_table(tmp_path / "single", "train_metrics")
    for col in ("loss", "grad_norm", "kl", "entropy"):
        np.testing.assert_allclose(la[col].to_numpy(), lb[col].to_numpy(), rtol=1e-5, atol=1e-6)
    assert la["tokens"].to_list() == lb["tokens"].to_list() and single["steps"] == 6
    assert json.loads((tmp_path / "fsdp" / "policy" / "config.json").read_text())["architectures"] == [
        "LlamaForCausalLM"]
    assert (tmp_path / "fsdp" / "state" / "dcp" / ".metadata").is_file()
    assert "optimizer" not in state(tmp_path / "fsdp")
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "fsdp" / "policy")
    assert torch.equal(reloaded.state_dict()["model.norm.weight"], a["model.norm.weight"])


def test_fsdp_through_the_cli_matches_one_process(policy, tmp_path):
    """`torchrun --nproc-per-node 2 -m stages.cli train ... --strategy fsdp` (the stage itself, tracker and all)
    trains the weights of the in-process `thinkrl train` with one rank."""
    from stages.train import train as train_stage

    thoughts = tmp_path / "thoughts"
    write_artifact(thoughts, "segment", {}, {"advantages": fsdp_data(policy)})
    opts = ["--prompts-per-step", "1", "--epochs", "2", "--lr", "1e-3", "--micro-batch-tokens", "24"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [*_torchrun(), "--standalone", "--nproc-per-node", "2", "-m", "stages.cli", "train", "--policy",
           str(policy), "--thoughts", str(thoughts), "--out", str(tmp_path / "fsdp"), "--strategy", "fsdp", *opts]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_manifest(tmp_path / "fsdp")["config"]["strategy"] == "fsdp"
    train_stage(policy=policy, thoughts=thoughts, out=tmp_path / "one", prompts_per_step=1, epochs=2, lr=1e-3,
                micro_batch_tokens=24, report_to="none")
    assert "strategy" not in read_manifest(tmp_path / "one")["config"]   # the default: old keys stay valid
    a, b = weights(tmp_path / "fsdp"), weights(tmp_path / "one")
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=0) for k in a)


def test_fsdp_state_of_two_ranks_resumes_in_one_process(policy, tmp_path):
    """DCP reshards: a state written by 2 FSDP ranks (stopped after step 2) resumes without torchrun, and the
    run ends where a 1-process run ends (to 1e-5)."""
    df = fsdp_data(policy)
    cfg = dict(prompts_per_step=1, epochs=2, lr=1e-3, micro_batch_tokens=24, save_every=0, strategy="fsdp")
    torchrun_train(policy, df, {**cfg, "max_steps": 2}, tmp_path / "cut")
    assert state(tmp_path / "cut")["step"] == 2
    m = train(policy, df, TrainConfig(**cfg), tmp_path / "cut")
    assert m["steps"] == 6 and m["world_size"] == 1
    train(policy, df, TrainConfig(**cfg), tmp_path / "one")
    a, b = weights(tmp_path / "cut"), weights(tmp_path / "one")
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=0) for k in a)
    train(policy, df, TrainConfig(**{**cfg, "strategy": "ddp"}), tmp_path / "ddp")
    with pytest.raises(ThinkrlError, match="a ddp state"):   # continue_from across strategies: refused clearly
        train(tmp_path / "one" / "policy", df, TrainConfig(**cfg, continue_from=str(tmp_path / "ddp")),
              tmp_path / "next")


def dcp_state(out: Path) -> dict:
    """The DCP state of out/state as one flat dict (weights and AdamW moments, gathered from the shards)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(out / "state" / "dcp", out / "dcp.pt")
    flat: dict = {}

    def walk(prefix: str, v) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), x)
        else:
            flat[prefix] = v

    walk("", torch.load(out / "dcp.pt", weights_only=False))
    return flat


def test_fsdp_kill_minus_9_of_one_rank_then_rerun_resumes_exactly(policy, tmp_path):
    """Rank 1 is SIGKILLed after step 3 (a DCP state was saved after step 2); the rerun of the same command
    resumes from step 2 and ends with the weights and AdamW state of a run that was never stopped."""
    df = fsdp_data(policy)
    cfg = dict(prompts_per_step=1, epochs=2, lr=1e-3, micro_batch_tokens=24, save_every=2, strategy="fsdp")
    torchrun_train(policy, df, cfg, tmp_path / "straight")
    proc = torchrun_train(policy, df, cfg, tmp_path / "cut", kill="1:3")
    assert proc.returncode != 0 and state(tmp_path / "cut")["step"] == 2
    torchrun_train(policy, df, cfg, tmp_path / "cut")
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (dcp_state(tmp_path / d) for d in ("straight", "cut"))
    assert sa.keys() == sb.keys() and any(k.startswith("optimizer.state.") for k in sa)
    assert all(torch.equal(sa[k], sb[k]) if isinstance(sa[k], torch.Tensor) else sa[k] == sb[k] for k in sa)
    ta, tb = read_table(tmp_path / "straight", "train_metrics"), read_table(tmp_path / "cut", "train_metrics")
    assert ta.drop("seconds", "mfu", "tokens_per_s").equals(tb.drop("seconds", "mfu", "tokens_per_s"))


# ------------------------------------------------------------------------------------------ (7) lr schedule
def test_lr_factor_by_hand():
    """Hand values: linear warm-up (step + 1) / warmup, then the schedule over the remaining steps."""
    assert [lr_factor(s, 12, 4, "cosine") for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # cosine after 4 warm-up steps of 12: p = (s - 4) / 8
    assert lr_factor(4, 12, 4, "cosine") == pytest.approx(1.0)                    # p = 0
    assert lr_factor(6, 12, 4, "cosine") == pytest.approx(0.5 * (1 + math.sqrt(0.5)))  # p = 1/4: 0.85355
    assert lr_factor(8, 12, 4, "cosine") == pytest.approx(0.5)                    # p = 1/2
    assert lr_factor(12, 12, 4, "cosine") == pytest.approx(0.0)                   # p = 1
    assert lr_factor(6, 12, 4, "linear") == pytest.approx(0.75)
    assert lr_factor(6, 12, 4, "constant") == 1.0 and lr_factor(0, 12, 0, "cosine") == 1.0


def test_lrs_of_a_run_by_hand(policy, tmp_path):
    df = make_data(load(policy), problems=5, group=2, seed=2)               # 3 steps per pass, 6 in all
    cfg = TrainConfig(prompts_per_step=2, epochs=2, lr=1e-3, warmup_steps=2, schedule="cosine")
    train(policy, df, cfg, tmp_path / "o")
    lrs = read_table(tmp_path / "o", "train_metrics")["lr"].to_list()
    # warm-up 1/2, 2/2; then cosine over 4 steps: p = 0, 1/4, 1/2, 3/4
    want = [0.5, 1.0, 1.0, 0.5 * (1 + math.sqrt(0.5)), 0.5, 0.5 * (1 - math.sqrt(0.5))]
    assert lrs == pytest.approx([1e-3 * w for w in want])


# ------------------------------------------------------------------------------------------ (8) continuity
def adam_steps(out: Path) -> set[float]:
    return {float(v["step"]) for v in state(out)["optimizer"]["state"].values()}


def test_continue_from_carries_optimizer_schedule_and_global_step(policy, tmp_path):
    """Round 2 continues round 1's AdamW (step counter 6, not 3), the global step and one lr schedule."""
    model = load(policy)
    r0, r1 = make_data(model, 3, 2, seed=11, round_=0), make_data(model, 3, 2, seed=12, round_=1)
    cfg = dict(prompts_per_step=1, lr=1e-3, warmup_steps=2, schedule="linear", schedule_steps=6)
    train(policy, r0, TrainConfig(**cfg), tmp_path / "r0")
    assert adam_steps(tmp_path / "r0") == {3.0}
    cont = TrainConfig(**cfg, continue_from=str(tmp_path / "r0"))
    m = train(tmp_path / "r0" / "policy", r1, cont, tmp_path / "r1")
    assert adam_steps(tmp_path / "r1") == {6.0} and m["global_step"] == 6
    t0, t1 = read_table(tmp_path / "r0", "train_metrics"), read_table(tmp_path / "r1", "train_metrics")
    assert t0["step"].to_list() == [1, 2, 3] and t1["step"].to_list() == [4, 5, 6]
    assert t0["round"].to_list() == [0, 0, 0] and t1["round"].to_list() == [1, 1, 1]
    # warm-up 1/2, 2/2, then linear over 4 steps: 1, 3/4, 1/2, 1/4 -- one schedule over both rounds
    lrs = t0["lr"].to_list() + t1["lr"].to_list()
    assert lrs == pytest.approx([1e-3 * f for f in (0.5, 1.0, 1.0, 0.75, 0.5, 0.25)])
    # exact resume inside a continued round: stopped after 1 step, then resumed == straight
    train(tmp_path / "r0" / "policy", r1, replace_cfg(cont, max_steps=1), tmp_path / "r1b")
    train(tmp_path / "r0" / "policy", r1, cont, tmp_path / "r1b")
    a, b = weights(tmp_path / "r1"), weights(tmp_path / "r1b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert same_tree(state(tmp_path / "r1")["optimizer"], state(tmp_path / "r1b")["optimizer"])
    with pytest.raises(ThinkrlError, match="no trainer state"):
        train(policy, r1, TrainConfig(**cfg, continue_from=str(tmp_path / "nowhere")), tmp_path / "x")


def replace_cfg(cfg: TrainConfig, **kw) -> TrainConfig:
    import dataclasses

    return dataclasses.replace(cfg, **kw)


# ------------------------------------------------------------------------------------------ (9) ratio 1
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "bfloat16-pure", "float64"])
def test_first_step_is_on_policy_in_every_dtype(policy, tmp_path, dtype):
    """log pi_old is recomputed by the run's own model over the first pass's own micro-batches: the first step
    has ratio exactly 1 and clip fraction 0 in every dtype, with steps smaller than the round (different
    padding per step). Before, segment scored in fp32 without autocast, in its own batches."""
    cfg = TrainConfig(prompts_per_step=2, lr=1e-3, dtype=dtype, micro_batch_tokens=40, max_steps=1)
    df = make_data(load(policy), problems=6, group=3, seed=13, off_policy=0.5)  # the table's are ignored
    m = train(policy, df, cfg, tmp_path / "o")
    row = read_table(tmp_path / "o", "train_metrics").row(0, named=True)
    assert row["clip_frac"] == 0.0 and row["ratio_mean"] == 1.0 and m["behaviour_logprobs"] == "recomputed"
    # the on-policy loss is -mean_i mean_t A_i over the step's rollouts (seq-mean-token-mean, rho = 1)
    groups = prepare_groups(df)[0]
    first = step_rollouts(groups, 0, 2, 0)
    assert row["loss"] == pytest.approx(-float(np.mean([r.advantages[0] for r in first])), abs=1e-5)
    if dtype == "bfloat16":  # what segment did before: fp32 scores in other batches, under a bf16 trainer
        fp32 = token_logprobs(load(policy), df["prompt_ids"].to_list(), df["completion_ids"].to_list(), 4096)
        df = df.with_columns(pl.Series("behaviour_logprobs", [lp.tolist() for lp in fp32], dtype=pl.List(pl.Float32)))
        train(policy, df, replace_cfg(cfg, recompute_logprobs=False), tmp_path / "table")
        assert read_table(tmp_path / "table", "train_metrics")["ratio_mean"][0] != 1.0


def test_chunked_logprobs_and_checkpointing_train_the_same_weights(policy, tmp_path):
    """Three steps with the whole-logits path, with tiny LM-head chunks (3 positions: several chunks per
    micro-batch) and with gradient checkpointing: the same losses and weights to float32 rounding."""
    df = make_data(load(policy), problems=6, group=3, seed=21, off_policy=0.3)
    base = TrainConfig(prompts_per_step=2, lr=1e-2, micro_batch_tokens=40, logprob_chunk=0)
    runs = {"whole": base, "chunked": replace_cfg(base, logprob_chunk=3),
            "checkpointed": replace_cfg(base, logprob_chunk=3, gradient_checkpointing=True)}
    weights, losses = {}, {}
    for name, cfg in runs.items():
        train(policy, df, cfg, tmp_path / name)
        weights[name] = load(tmp_path / name / "policy").state_dict()
        losses[name] = read_table(tmp_path / name, "train_metrics")["loss"].to_list()
    for name in ("chunked", "checkpointed"):
        assert losses[name] == pytest.approx(losses["whole"], rel=1e-5, abs=1e-7)
        for k, w in weights["whole"].items():
            assert torch.allclose(weights[name][k], w, rtol=1e-5, atol=1e-5), (name, k)  # Adam: lr-scaled noise
    assert not torch.equal(weights["whole"]["model.norm.weight"], load(policy).state_dict()["model.norm.weight"])
    exported = json.loads((tmp_path / "checkpointed" / "policy" / "config.json").read_text())
    assert exported.get("use_cache", True) is True  # checkpointing turned the cache off for training only


def test_resumed_run_keeps_its_recomputed_logprobs(policy, tmp_path):
    """A run stopped after step 1 and resumed uses the log pi_old of its start (saved with the state), not a
    recomputation by the moved weights: the same as a straight run."""
    df = make_data(load(policy), problems=4, group=2, seed=14)
    cfg = TrainConfig(prompts_per_step=1, lr=1e-2, save_every=1)
    train(policy, df, cfg, tmp_path / "straight")
    train(policy, df, replace_cfg(cfg, max_steps=1), tmp_path / "split")
    train(policy, df, cfg, tmp_path / "split")
    assert rows_without_timing(tmp_path / "straight") == rows_without_timing(tmp_path / "split")
    assert read_table(tmp_path / "straight", "train_metrics")["ratio_mean"][1] != 1.0  # off-policy after step 1


# ------------------------------------------------------------------------------------------ (10) temperature
def test_sampler_logprobs_at_temperature_give_ratio_one(policy, tmp_path):
    """Rollouts sampled at T = 0.6: the trainer scores at the recorded temperature (log_softmax(logits / T)),
    so the sampler's own log-probs (`--no-recompute`) give ratio 1 at the first step. Scored at T = 1, most
    tokens fell outside the clip interval."""
    from thinkrl.engine import HFEngine, SamplingParams

    model = load(policy)
    engine = HFEngine(model, char_tokenizer())
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    out = engine.generate(prompts, SamplingParams(n=3, temperature=0.6, max_tokens=12),
                          [[100 * i + j for j in range(3)] for i in range(3)])
    rows = []
    for i, (p, group) in enumerate(zip(prompts, out, strict=True)):
        for j, c in enumerate(group):
            a = float(j - 1)  # -1, 0, 1 per group
            rows.append({"rollout_id": f"p{i}/s{j}", "problem_id": f"p{i}", "prompt_ids": p,
                         "completion_ids": list(c.token_ids), "advantages": [a] * len(c.token_ids),
                         "behaviour_logprobs": list(c.logprobs), "outcome_advantage": a, "correct": a > 0,
                         "round": 0, "temperature": 0.6, "max_tokens": 12, "finish_reason": c.finish_reason,
                         "incorrect_tokens": 0})
    df = pl.DataFrame(rows)
    train(policy, df, TrainConfig(prompts_per_step=3, max_steps=1, recompute_logprobs=False), tmp_path / "o")
    row = read_table(tmp_path / "o", "train_metrics").row(0, named=True)
    assert row["clip_frac"] == 0.0 and row["ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ThinkrlError, match="no behaviour_logprobs"):  # e.g. vLLM's at T != 1: recompute
        train(policy, df.with_columns(pl.lit(None, dtype=pl.List(pl.Float32)).alias("behaviour_logprobs")),
              TrainConfig(prompts_per_step=3, max_steps=1, recompute_logprobs=False), tmp_path / "x")
    at_one = token_logprobs(model, df["prompt_ids"].to_list(), df["completion_ids"].to_list())
    scored = token_logprobs(model, df["prompt_ids"].to_list(), df["completion_ids"].to_list(),
                            temperatures=[0.6] * df.height)
    for lp, s06, one in zip(df["behaviour_logprobs"].to_list(), scored, at_one, strict=True):
        np.testing.assert_allclose(s06, lp, atol=1e-4)
        assert not np.allclose(one, lp, atol=1e-3)  # at T = 1 the ratio would not be 1


# ------------------------------------------------------------------------------------------ (10) per-step figures
def _r(pid: str, i: int, correct: bool, adv: list[float], truncated: bool = False, incorrect: int = 0) -> Rollout:
    n = len(adv)
    return Rollout(f"{pid}/s{i}", pid, [1], [5] * n, np.asarray(adv, np.float32), np.zeros(n, np.float32), 1.0,
                   correct, truncated, incorrect)


def test_step_figures_by_hand():
    """Group a: right (4 tokens, 1 in an incorrect thought), wrong and cut off (2 tokens); group b: right, right.
    r = [1, 0, 1, 1]: mean 0.75; group stds 0.5 and 0 -> 0.25. Lengths [4, 2, 3, 1]. The 10 advantages sum to 3.5
    (mean 0.35), their squares to 10.75 (std sqrt(1.075 - 0.35^2) = sqrt(0.9525))."""
    f = step_figures([_r("a", 0, True, [1, 1, -1, 1], incorrect=1), _r("a", 1, False, [-1, -1], truncated=True),
                      _r("b", 0, True, [0.5, 0.5, 0.5]), _r("b", 1, True, [2.0])])
    assert f == pytest.approx({"reward_mean": 0.75, "reward_std": 0.25, "accuracy": 0.75, "response_len_mean": 2.5,
                               "response_len_max": 4, "truncation_rate": 0.25, "adv_mean": 0.35,
                               "adv_std": math.sqrt(0.9525), "adv_min": -1.0, "adv_max": 2.0,
                               "incorrect_thought_share": 0.1})


def test_train_metrics_figures_come_from_the_steps_data(policy, tmp_path):
    """One step over every group: each figure recomputed here from the table (polars) and the entropy from the
    policy's own full forward at the rollouts' temperature (before the update), token-weighted."""
    df = make_data(load(policy), problems=3, group=3, seed=11)
    df = df.with_columns(temperature=pl.lit(0.7),
                         finish_reason=pl.when(pl.col("rollout_id").str.ends_with("s1")).then(pl.lit("length"))
                         .otherwise(pl.lit("stop")),
                         incorrect_tokens=(pl.col("completion_ids").list.len() // 2).cast(pl.Int32))
    train(policy, df, TrainConfig(prompts_per_step=3, max_steps=1, lr=1e-2), tmp_path / "o")
    row = read_table(tmp_path / "o", "train_metrics").row(0, named=True)
    lengths = df["completion_ids"].list.len()
    adv = np.concatenate([np.asarray(a) for a in df["advantages"].to_list()])
    group_std = df.group_by("problem_id").agg(pl.col("correct").cast(pl.Float64).std(ddof=0))["correct"].mean()
    model = load(policy)
    ent = []
    with torch.no_grad():
        for p, c in zip(df["prompt_ids"].to_list(), df["completion_ids"].to_list(), strict=True):
            logq = torch.log_softmax(model(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1:-1].double() / 0.7, -1)
            ent += (-(logq.exp() * logq).sum(-1)).tolist()                  # (C,)
    want = {"reward_mean": df["correct"].mean(), "accuracy": df["correct"].mean(), "reward_std": group_std,
            "response_len_mean": lengths.mean(), "response_len_max": lengths.max(),
            "truncation_rate": 3 / 9, "adv_mean": adv.mean(), "adv_std": adv.std(), "adv_min": adv.min(),
            "adv_max": adv.max(), "incorrect_thought_share": (lengths // 2).sum() / lengths.sum(),
            "entropy": float(np.mean(ent))}
    assert {k: row[k] for k in want} == pytest.approx(want, rel=1e-5)
    tokens = sum(len(p) + len(c) for p, c in zip(df["prompt_ids"], df["completion_ids"], strict=True))
    assert row["tokens_per_s"] == pytest.approx(tokens / row["seconds"])
    assert 0 < row["reward_std"] < 0.5 and 0 < row["entropy"] < math.log(model.config.vocab_size)  # not vacuous


def test_every_row_reaches_on_row_once_in_step_order(policy, tmp_path):
    """A resumed run hands on the rows its state restored, then the new ones; a stage that is up to date replays
    the finished artifact's rows: each time the whole history, never a step twice."""
    from thinkrl.training import run_train_stage

    df = make_data(load(policy), problems=4, group=2, seed=12)
    seen: list[list[dict]] = [[], [], []]
    cfg = dict(prompts_per_step=1, save_every=1)
    train(policy, df, TrainConfig(**cfg, max_steps=2), tmp_path / "o", on_row=seen[0].append)
    train(policy, df, TrainConfig(**cfg), tmp_path / "o", on_row=seen[1].append)          # resumes after step 2
    final = read_table(tmp_path / "o", "train_metrics").to_dicts()
    assert [r["step"] for r in seen[0]] == [1, 2] and [r["step"] for r in seen[1]] == [1, 2, 3, 4]
    assert seen[1] == final

    class Rows:
        def train_row(self, row):
            seen[2].append(row)

        def record(self):
            return {"report_to": "test"}

    thoughts = tmp_path / "thoughts"
    write_artifact(thoughts, "segment", {}, {"advantages": df})
    for _ in range(2):  # trains, then is up to date
        run_train_stage(policy, thoughts, tmp_path / "stage", TrainConfig(**cfg), tracker=Rows())
    assert [r["step"] for r in seen[2]] == [1, 2, 3, 4] * 2
    assert read_manifest(tmp_path / "stage")["metrics"]["tracking"] == {"report_to": "test"}


# ------------------------------------------------------------------------------------------ (11) π_old from step 1
def _count_passes(monkeypatch) -> list[int]:
    """Rollouts scored by recompute_behaviour's no-grad pass (each call's count)."""
    import thinkrl.trainer as trainer_mod

    calls: list[int] = []
    inner = trainer_mod.completion_logprobs

    def counting(model, prompts, *a, **kw):
        calls.append(len(prompts))
        return inner(model, prompts, *a, **kw)

    monkeypatch.setattr(trainer_mod, "completion_logprobs", counting)
    return calls


@pytest.mark.parametrize("steps_per_round", [1, 3])
def test_first_step_takes_its_pi_old_from_its_forward(policy, tmp_path, monkeypatch, steps_per_round):
    """The first step's rollouts get log pi_old from that step's training forward (detached): one step per
    round (on-policy) makes no separate pass, S steps pass over the other S - 1 steps' rollouts only. The
    trained weights, rows and the behaviour table equal those of a full recompute to float32 rounding, and
    the behaviour table equals an independent forward of the start policy."""
    import thinkrl.trainer as trainer_mod

    df = make_data(load(policy), problems=3 * steps_per_round, group=3, seed=31, off_policy=0.4)
    cfg = TrainConfig(prompts_per_step=3, epochs=2, lr=3e-3, micro_batch_tokens=40)
    calls = _count_passes(monkeypatch)
    m = train(policy, df, cfg, tmp_path / "forward")
    groups = prepare_groups(df)[0]
    first = {r.rollout_id for r in step_rollouts(groups, 0, 3, 0)}
    assert sum(calls) == len(df) - len(first)          # step 0's rollouts are not in the pass
    assert m["behaviour_pass_tokens"] == sum(r.length for g in groups for r in g if r.rollout_id not in first)
    assert (m["behaviour_pass_tokens"] == 0) == (steps_per_round == 1)
    inner = trainer_mod.recompute_behaviour
    monkeypatch.setattr(trainer_mod, "recompute_behaviour", lambda run, **kw: inner(run, first_step_in_forward=False))
    calls.clear()
    train(policy, df, cfg, tmp_path / "pass")
    assert sum(calls) == len(df)

    a, b = (read_table(tmp_path / d, "train_metrics") for d in ("forward", "pass"))
    assert a["ratio_mean"][0] == 1.0 and a["clip_frac"][0] == 0.0
    assert a["loss"].to_list() == pytest.approx(b["loss"].to_list(), rel=1e-5, abs=1e-7)
    assert a.height == b.height == 2 * steps_per_round
    for k, w in weights(tmp_path / "pass").items():
        assert torch.allclose(weights(tmp_path / "forward")[k], w, rtol=1e-5, atol=1e-6), k
    want = token_logprobs(load(policy), df["prompt_ids"].to_list(), df["completion_ids"].to_list())
    got = dict(zip(*read_table(tmp_path / "forward", "behaviour")[["rollout_id", "logprobs"]].to_dict().values(),
                   strict=True))
    assert sorted(got) == sorted(df["rollout_id"])
    for rid, lp in zip(df["rollout_id"], want, strict=True):
        np.testing.assert_allclose(got[rid], lp, atol=1e-5)


def test_resume_after_the_first_step_keeps_its_forward_pi_old(policy, tmp_path):
    """Stopped after step 1, whose log pi_old came from its own forward, and resumed: the saved state holds it,
    and the run equals a straight one (a second pass, 2 epochs, reuses step 1's rollouts)."""
    df = make_data(load(policy), problems=2, group=3, seed=32, off_policy=0.4)  # the table's pi_old is wrong
    cfg = TrainConfig(prompts_per_step=1, epochs=2, lr=1e-2, save_every=1)
    train(policy, df, cfg, tmp_path / "straight")
    train(policy, df, replace_cfg(cfg, max_steps=1), tmp_path / "split")
    assert len(state(tmp_path / "split")["behaviour"]) == len(df)
    train(policy, df, cfg, tmp_path / "split")
    assert rows_without_timing(tmp_path / "straight") == rows_without_timing(tmp_path / "split")
    assert torch.equal(weights(tmp_path / "straight")["model.norm.weight"],
                       weights(tmp_path / "split")["model.norm.weight"])


def test_fsdp_state_before_any_step_carries_no_optimizer_step(policy, tmp_path):
    """A state saved before any optimizer step (max_steps 0) holds no AdamW state: torch would make one by
    stepping at lr 0, and the next run's bias correction would count that step. Continuing from it, AdamW's first
    real step is step 1, as after a state with no optimizer in the ddp format."""
    df = fsdp_data(policy)
    cfg = dict(prompts_per_step=1, lr=1e-3, micro_batch_tokens=24, save_every=0, strategy="fsdp")
    train(policy, df, TrainConfig(**cfg, max_steps=0), tmp_path / "none")
    assert state(tmp_path / "none")["optimizer_saved"] is False
    train(policy, df.with_columns(pl.lit(1).alias("round")),
          TrainConfig(**cfg, max_steps=1, continue_from=str(tmp_path / "none")), tmp_path / "next")
    assert state(tmp_path / "next")["optimizer_saved"] is True
    steps = {float(v) for k, v in dcp_state(tmp_path / "next").items() if k.startswith("optimizer.state.")
             and k.endswith(".step")}
    assert steps == {1.0}
