"""Tests for thinkrl.lora and LoRA training (thinkrl.trainer with lora_r > 0): the policy moves towards the reward
and only the adapters change, policy/ is a merged plain checkpoint (loads without peft, same logits as the adapted
model), the adapter-free reference is the base, exact resume, continue_from across rounds, DDP, gradient
checkpointing, the errors, and `thinkrl train --lora-r` through the CLI.
The tiny random Llama policy of tests/test_trainer.py (hidden 32, 2 layers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import load_file, load_model
from test_trainer import (
    RESUME_CFG,
    _torchrun,
    load,
    make_data,
    replace_cfg,
    rows_without_timing,
    same_tree,
    state,
    tiny_policy,
    weights,
)

from thinkrl.artifacts import read_manifest, read_table, write_artifact
from thinkrl.errors import ThinkrlError
from thinkrl.lora import adapters_disabled, apply_lora, merged_state_dict
from thinkrl.trainer import TrainConfig, completion_logprobs, reference_logprobs, token_logprobs, train

pytest.importorskip("peft")  # in the dev extra: CI runs these for real

REPO = Path(__file__).resolve().parents[1]
LORA = dict(lora_r=4, lora_targets="q_proj,v_proj,down_proj")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    return tiny_policy(tmp_path_factory.mktemp("policy"))


def adapted(policy: Path, cfg: TrainConfig, state_dir: Path | None = None):
    """The policy with LoRA applied as the trainer does, with a run's state/ weights loaded when given."""
    model = apply_lora(load(policy), cfg)
    if state_dir is not None:
        load_model(model, str(state_dir / "model.safetensors"))
    return model.eval()


def randomise_adapters(model, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


# ------------------------------------------------------------------------------------------ training
def test_lora_moves_towards_the_reward_and_changes_only_adapters(policy, tmp_path):
    """One problem, a rewarded and a punished completion: LoRA steps raise the log-prob of the first and lower
    the second (read from the merged policy/), while every base weight in state/ is the input's, bit for bit."""
    model = load(policy)
    prompt, good, bad = [5, 6, 7], [10, 11, 12, 13], [20, 21, 22, 23]
    before = token_logprobs(model, [prompt, prompt], [good, bad])
    rows = [{"rollout_id": f"p0/s{i}", "problem_id": "p0", "prompt_ids": prompt, "completion_ids": c,
             "advantages": [a] * 4, "outcome_advantage": a, "correct": a > 0, "round": 0, "temperature": 1.0,
             "max_tokens": 8, "finish_reason": "stop", "incorrect_tokens": 0, "behaviour_logprobs": lp.tolist()}
            for i, (c, a, lp) in enumerate(zip([good, bad], [1.0, -1.0], before, strict=True))]
    cfg = TrainConfig(prompts_per_step=1, epochs=8, lr=1e-2, **LORA)
    m = train(policy, pl.DataFrame(rows), cfg, tmp_path / "o")
    after = token_logprobs(load(tmp_path / "o" / "policy"), [prompt, prompt], [good, bad])
    assert after[0].sum() > before[0].sum() + 0.5 and after[1].sum() < before[1].sum() - 0.5
    losses = read_table(tmp_path / "o", "train_metrics")["loss"].to_list()
    assert losses[-1] < losses[0]
    # the adapters (q, v, down: r (in + out) each, 2 layers) are all AdamW trains; n_params is the whole model's
    assert m["trainable_params"] == 2 * 4 * ((32 + 32) + (32 + 16) + (64 + 32)) < m["n_params"]
    base, saved = load(policy).state_dict(), load_file(tmp_path / "o" / "state" / "model.safetensors")
    lora = {k for k in saved if ".lora_" in k}
    assert lora and all(saved[k].abs().sum() > 0 for k in lora if ".lora_B." in k)   # B moved off zero
    for k, w in saved.items():
        if k not in lora:
            assert torch.equal(w, base[k.replace(".base_layer.", ".")]), k                # frozen exactly
    assert len(state(tmp_path / "o")["optimizer"]["state"]) == len(lora)                # adapter moments only


def test_merged_policy_is_a_plain_checkpoint_with_the_adapted_logits(policy, tmp_path):
    """policy/ has the base model's own tensor names (no base_layer, no lora_), transformers loads it in a process
    where peft cannot be imported, and its logits equal the adapted model's (state/) to 1e-5."""
    df = make_data(load(policy), problems=3, group=3, seed=1)
    cfg = TrainConfig(prompts_per_step=1, lr=3e-2, lora_alpha=12, **LORA)
    train(policy, df, cfg, tmp_path / "o")
    w = weights(tmp_path / "o")
    assert w.keys() == load_file(policy / "model.safetensors").keys()
    assert not any(".lora_" in k or "base_layer" in k for k in w)
    code = ("import sys; sys.modules['peft'] = None\n"      # `import peft` fails: the load cannot use it
            "from transformers import AutoModelForCausalLM\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'o' / 'policy')!r})\n"
            "print(type(m).__name__, sum(p.numel() for p in m.parameters()))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["LlamaForCausalLM", str(sum(p.numel() for p in load(policy).parameters()))]

    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13]])
    model = adapted(policy, cfg, tmp_path / "o" / "state")
    with torch.no_grad():
        want = model(input_ids=ids).logits
        got = load(tmp_path / "o" / "policy")(input_ids=ids).logits
        base = load(policy)(input_ids=ids).logits
    assert (want - base).abs().max() > 1e-3                                             # training did something
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # by hand: W + (alpha / r) B A, the training weights themselves untouched by the export
    sd, lw = merged_state_dict(model), load_file(tmp_path / "o" / "state" / "model.safetensors")
    q = "model.layers.0.self_attn.q_proj"
    a, b = lw[f"{q}.lora_A.default.weight"], lw[f"{q}.lora_B.default.weight"]
    torch.testing.assert_close(sd[f"{q}.weight"], lw[f"{q}.base_layer.weight"] + 12 / 4 * b @ a, atol=1e-7, rtol=0)
    assert torch.equal(model.state_dict()[f"{q}.base_layer.weight"], lw[f"{q}.base_layer.weight"])


def test_reference_with_adapters_disabled_is_the_base(policy, tmp_path):
    """The LoRA policy's own reference (adapters disabled) gives the separately loaded base's log-probs to 1e-6,
    though its adapters are far from zero; they are enabled and trainable again afterwards. In training, the KL
    is 0 at the first step and grows after: the reference does not move with the adapters."""
    model = adapted(policy, TrainConfig(**LORA)).train()
    randomise_adapters(model)
    prompts, comps = [[5, 6, 7], [8, 9], [10]], [[11, 12, 13, 14], [15], [16, 17]]
    temps = [1.0, 0.7, 1.0]
    ref = reference_logprobs(model, prompts, comps, temps, chunk=2)
    with torch.no_grad():
        base, _ = completion_logprobs(load(policy), prompts, comps, temps, chunk=2)
        lora, _ = completion_logprobs(model, prompts, comps, temps, chunk=2)
    torch.testing.assert_close(ref, base, atol=1e-6, rtol=0)
    assert (lora - base).abs().max() > 1e-2
    assert all(p.requires_grad for n, p in model.named_parameters() if ".lora_" in n)
    with adapters_disabled(model), torch.no_grad():                                    # the context by itself
        torch.testing.assert_close(completion_logprobs(model, prompts, comps, temps)[0], base, atol=1e-6, rtol=0)

    df = make_data(load(policy), problems=2, group=3, seed=9)
    m = train(policy, df, TrainConfig(prompts_per_step=1, epochs=2, lr=3e-2, beta=0.5, **LORA), tmp_path / "kl")
    t = read_table(tmp_path / "kl", "train_metrics")
    assert t["kl"][0] == pytest.approx(0.0, abs=1e-7) and (t["kl"][1:] > 1e-6).all() and m["steps"] == 4


# ------------------------------------------------------------------------------------------ resume, rounds
def test_lora_resume_is_exact(policy, tmp_path):
    """Straight, stopped after 2 steps then resumed, killed after 4 then rerun: the same state weights (adapters
    and base), merged policy, optimizer and rows."""
    df = make_data(load(policy), problems=5, group=3, seed=2, off_policy=0.3)
    cfg = TrainConfig(**RESUME_CFG, **LORA, max_steps=4)
    straight, split, killed = tmp_path / "straight", tmp_path / "split", tmp_path / "killed"
    train(policy, df, cfg, straight)
    train(policy, df, replace_cfg(cfg, max_steps=2), split)
    train(policy, df, cfg, split)

    def die_at_4(row, done, total):
        if done == 4:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(policy, df, cfg, killed, progress=die_at_4)
    assert state(killed)["step"] == 3
    train(policy, df, cfg, killed)
    w, sw = weights(straight), load_file(straight / "state" / "model.safetensors")
    for other in (split, killed):
        wo, so = weights(other), load_file(other / "state" / "model.safetensors")
        assert w.keys() == wo.keys() and all(torch.equal(w[k], wo[k]) for k in w)
        assert sw.keys() == so.keys() and all(torch.equal(sw[k], so[k]) for k in sw)
        assert same_tree(state(straight)["optimizer"], state(other)["optimizer"])
        assert rows_without_timing(straight) == rows_without_timing(other)


def test_continue_from_starts_fresh_adapters_on_the_merged_policy(policy, tmp_path):
    """Round 2 trains new adapters on round 1's merged policy: AdamW's step counter restarts (3, not 6), the global
    step and the one lr schedule carry on; a full fine-tune refuses to continue a LoRA state."""
    model = load(policy)
    r0, r1 = make_data(model, 3, 2, seed=11, round_=0), make_data(model, 3, 2, seed=12, round_=1)
    cfg = dict(prompts_per_step=1, lr=1e-2, warmup_steps=2, schedule="linear", schedule_steps=6, **LORA)
    train(policy, r0, TrainConfig(**cfg), tmp_path / "r0")
    m = train(tmp_path / "r0" / "policy", r1, TrainConfig(**cfg, continue_from=str(tmp_path / "r0")), tmp_path / "r1")
    assert {float(v["step"]) for v in state(tmp_path / "r1")["optimizer"]["state"].values()} == {3.0}
    assert m["global_step"] == 6 and state(tmp_path / "r1")["lora_r"] == 4
    lrs = (read_table(tmp_path / "r0", "train_metrics")["lr"].to_list()
           + read_table(tmp_path / "r1", "train_metrics")["lr"].to_list())
    assert lrs == pytest.approx([1e-2 * f for f in (0.5, 1.0, 1.0, 0.75, 0.5, 0.25)])
    # round 2's base is round 1's merged policy: its frozen weights in state/ are those of r0/policy
    merged, base = weights(tmp_path / "r0"), load_file(tmp_path / "r1" / "state" / "model.safetensors")
    q = "model.layers.1.self_attn.q_proj.weight"
    assert torch.equal(base[q.replace(".weight", ".base_layer.weight")], merged[q])
    assert not torch.equal(merged[q], load(policy).state_dict()[q])
    full = {k: v for k, v in cfg.items() if not k.startswith("lora_")}
    with pytest.raises(ThinkrlError, match="a LoRA run .lora_r 4. has AdamW moments of its adapters only"):
        train(tmp_path / "r0" / "policy", r1, TrainConfig(**full, continue_from=str(tmp_path / "r0")), tmp_path / "x")


# ------------------------------------------------------------------------------------------ DDP, checkpointing
def test_lora_ddp_two_processes_match_one(policy, tmp_path):
    df = make_data(load(policy), problems=2, group=3, seed=8, off_policy=0.3)
    data = tmp_path / "data.parquet"
    df.write_parquet(data)
    cfg = dict(prompts_per_step=1, lr=1e-2, micro_batch_tokens=24, save_every=0, beta=0.1, **LORA)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [*_torchrun(), "--standalone", "--nproc-per-node", "2", str(REPO / "tests" / "ddp_worker.py"),
           str(policy), str(data), str(tmp_path / "ddp"), str(tmp_path / "cfg.json")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 1/2 ok" in proc.stdout
    train(policy, df, TrainConfig(**cfg), tmp_path / "single")
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "single")
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=0) for k in a)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(a[q], load(policy).state_dict()[q])
    la, lb = read_table(tmp_path / "ddp", "train_metrics"), read_table(tmp_path / "single", "train_metrics")
    np.testing.assert_allclose(la["loss"].to_numpy(), lb["loss"].to_numpy(), atol=1e-5)
    np.testing.assert_allclose(la["kl"].to_numpy(), lb["kl"].to_numpy(), atol=1e-6)


def test_lora_with_gradient_checkpointing_trains_the_same_weights(policy, tmp_path):
    """Non-reentrant checkpointing needs no input that requires grad: the adapters get the same gradients."""
    df = make_data(load(policy), problems=4, group=2, seed=21, off_policy=0.3)
    cfg = TrainConfig(prompts_per_step=2, lr=1e-2, micro_batch_tokens=40, logprob_chunk=3, **LORA)
    train(policy, df, cfg, tmp_path / "plain")
    train(policy, df, replace_cfg(cfg, gradient_checkpointing=True), tmp_path / "ckpt")
    a, b = weights(tmp_path / "plain"), weights(tmp_path / "ckpt")
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(a[q], load(policy).state_dict()[q])


# ------------------------------------------------------------------------------------------ errors, CLI
def test_lora_errors_are_one_line(policy, tmp_path, monkeypatch):
    df = make_data(load(policy), problems=1, group=2, seed=3)
    with pytest.raises(ThinkrlError, match=r"lora_targets: no module named 'qkv' in the policy "
                                           r"\(LlamaForCausalLM\); its linear layers: down_proj, gate_proj, k_proj"):
        train(policy, df, TrainConfig(lora_r=4, lora_targets="q_proj,qkv"), tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ThinkrlError, match="--lora-r must be >= 0, got -1"):
        TrainConfig(lora_r=-1)
    with pytest.raises(ThinkrlError, match="--lora-targets must be module names separated by commas"):
        TrainConfig(lora_r=4, lora_targets="q_proj,,v proj")
    with pytest.raises(ThinkrlError, match="--lora-alpha must be > 0"):
        TrainConfig(lora_r=4, lora_alpha=0)
    with pytest.raises(ThinkrlError, match="lora_r with strategy fsdp is not supported yet"):
        TrainConfig(lora_r=4, strategy="fsdp")
    monkeypatch.setitem(sys.modules, "peft", None)                                     # peft not installed
    with pytest.raises(ThinkrlError, match=r"^LoRA needs peft: pip install 'thinkrl\[lora\]'$"):
        train(policy, df, TrainConfig(lora_r=4), tmp_path / "x")


def test_train_cli_with_lora(policy, tmp_path, run_cli):
    df = make_data(load(policy), problems=2, group=2, seed=7)
    write_artifact(tmp_path / "thoughts", "segment", {}, {"advantages": df})
    out = tmp_path / "train"
    rc, stdout, err = run_cli(["train", "--policy", policy, "--thoughts", tmp_path / "thoughts", "--out", out,
                               "--lora-r", "4", "--lora-targets", "q_proj,o_proj", "--prompts-per-step", "1",
                               "--report-to", "none"])
    assert rc == 0, err
    config = read_manifest(out)["config"]
    assert (config["lora_r"], config["lora_targets"]) == (4, "q_proj,o_proj")
    assert "lora_alpha" not in config                            # at its default: out of the key (KEYED_WHEN_SET)
    assert read_manifest(out)["metrics"]["trainable_params"] == 2 * 2 * 4 * (32 + 32)
    assert not any(".lora_" in k for k in weights(out))
    rc, stdout, err = run_cli(["train", "--policy", policy, "--thoughts", tmp_path / "thoughts", "--out", out,
                               "--lora-r", "4", "--lora-targets", "wq", "--force", "--report-to", "none"])
    assert rc == 2 and "lora_targets: no module named 'wq'" in err and len(err.strip().splitlines()) == 1


def test_full_fine_tuning_never_imports_peft():
    """The trainer and thinkrl.lora import peft only in apply_lora: a full fine-tune runs without it."""
    code = ("import sys, torch\nfrom thinkrl.trainer import train\nfrom thinkrl.lora import adapters_disabled, has_lora\n"
            "m = torch.nn.Linear(2, 2)\nwith adapters_disabled(m):\n    pass\nprint(has_lora(m), 'peft' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and proc.stdout.split() == ["False", "False"], proc.stderr[-2000:]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "bfloat16-pure", "float64"])
def test_lora_first_step_is_on_policy_in_every_dtype(policy, tmp_path, dtype):
    """B = 0 at the start: the adapted policy is the base, the first step's ratio is exactly 1 in every dtype,
    and the adapters have the base weights' dtype (bf16 for bfloat16-pure: half the memory there too)."""
    df = make_data(load(policy), problems=4, group=2, seed=13, off_policy=0.5)
    cfg = TrainConfig(prompts_per_step=2, lr=1e-2, dtype=dtype, micro_batch_tokens=40, **LORA)
    train(policy, df, cfg, tmp_path / "o")
    t = read_table(tmp_path / "o", "train_metrics")
    assert t["ratio_mean"][0] == 1.0 and t["clip_frac"][0] == 0.0 and t["ratio_mean"][1] != 1.0
    want = {"float64": torch.float64, "bfloat16-pure": torch.bfloat16}.get(dtype, torch.float32)
    saved = load_file(tmp_path / "o" / "state" / "model.safetensors")
    assert {v.dtype for k, v in saved.items() if ".lora_" in k} == {want}


def test_merge_keeps_biases_and_untied_heads_qwen2():
    """Qwen2 (q/k/v biases, untied LM head): the merged state dict loads strictly into a plain Qwen2 and gives
    the adapted model's logits; the adapted model itself is unchanged by the merge."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = apply_lora(Qwen2ForCausalLM(cfg), TrainConfig(lora_r=3, lora_alpha=5)).eval()
    randomise_adapters(model, seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sd = merged_state_dict(model)
    plain = Qwen2ForCausalLM(cfg).eval()
    plain.load_state_dict(sd, strict=True)                                             # every key, no other
    assert "model.layers.0.self_attn.q_proj.bias" in sd and "lm_head.weight" in sd
    ids = torch.tensor([[3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
