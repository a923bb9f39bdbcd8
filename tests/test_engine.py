"""Tests for thinkrl.engine: the HF engine against references (full forward, model.generate), determinism,
batch independence, prefix sharing, stops, top-p; the registry. Tiny random Llama models built here."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from char_tokenizer import char_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from thinkrl.engine import ENGINES, HFEngine, SamplingParams, load_engine
from thinkrl.engine.base import completion_text
from thinkrl.engine.hf import plan_batches, sample_tokens
from thinkrl.errors import ThinkrlError

PAD, BOS, EOS = 0, 1, 2


def tiny_llama(vocab: int, seed: int = 0, eos_boost: float = 0.0, hidden=32, layers=2) -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, initializer_range=0.3,
                      bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    if eos_boost:
        with torch.no_grad():  # make EOS likely enough that sequences end at varied lengths
            model.lm_head.weight[EOS] = model.lm_head.weight[EOS] + eos_boost * model.model.norm.weight.sign()
    return model


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def engine(tok):
    return HFEngine(tiny_llama(len(tok)), tok)


@pytest.fixture(scope="module")
def eos_engine(tok):
    """A model that often ends with EOS: rows finish at different steps and leave the batch."""
    return HFEngine(tiny_llama(len(tok), seed=1, eos_boost=0.25), tok)


def enc(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


PROMPTS = ["Start at 17. Add 28.", "Hi", "What is 3+4?\n", "x"]


def seeds_for(n_prompts, n, base=0):
    return [[1000 * base + 10 * i + j for j in range(n)] for i in range(n_prompts)]


def reference_logprobs(model, prompt, completion, temperature):
    """log_softmax(logits / T) per completion token from one full forward pass over prompt + completion."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
    t = temperature if temperature > 0 else 1.0
    return torch.log_softmax(logits / t, -1).gather(1, torch.tensor(completion)[:, None])[:, 0].tolist()


def test_same_seeds_identical_and_different_seeds_differ(engine, tok):
    prompts = [enc(tok, p) for p in PROMPTS]
    params = SamplingParams(n=3, temperature=1.0, max_tokens=24)
    a = engine.generate(prompts, params, seeds_for(4, 3))
    b = engine.generate(prompts, params, seeds_for(4, 3))
    assert [[(c.token_ids, c.logprobs, c.text, c.finish_reason) for c in row] for row in a] == \
           [[(c.token_ids, c.logprobs, c.text, c.finish_reason) for c in row] for row in b]
    c = engine.generate(prompts, params, seeds_for(4, 3, base=7))
    assert [[x.token_ids for x in row] for row in a] != [[x.token_ids for x in row] for row in c]
    # the n samples of one prompt differ from each other (own seed each)
    assert len({tuple(x.token_ids) for x in a[0]}) == 3
    assert all(len(x.token_ids) == len(x.logprobs) for row in a for x in row)


def test_batch_composition_does_not_change_results(eos_engine, tok):
    prompts = [enc(tok, p) for p in PROMPTS]
    seeds = seeds_for(4, 2)
    params = SamplingParams(n=2, temperature=0.9, top_p=0.95, max_tokens=20)
    together = eos_engine.generate(prompts, params, seeds)
    small = HFEngine(eos_engine.model, tok, batch_tokens=1)  # one prompt per batch
    apart = small.generate(prompts, params, seeds)
    for i in range(len(prompts)):
        alone = eos_engine.generate([prompts[i]], params, [seeds[i]])[0]
        for x, y, z in zip(together[i], apart[i], alone, strict=True):
            assert x.token_ids == y.token_ids == z.token_ids
            assert x.finish_reason == z.finish_reason and x.text == z.text
            assert max(abs(p - q) for p, q in zip(x.logprobs, z.logprobs, strict=True)) < 1e-5
            assert max(abs(p - q) for p, q in zip(y.logprobs, z.logprobs, strict=True)) < 1e-5


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_full_forward_reference(eos_engine, tok, temperature):
    # different prompt lengths (left padding), n=3 (prefix expansion), rows finishing early (row removal)
    prompts = [enc(tok, p) for p in PROMPTS]
    out = eos_engine.generate(prompts, SamplingParams(n=3, temperature=temperature, max_tokens=16),
                              seeds_for(4, 3))
    reasons = {c.finish_reason for row in out for c in row}
    assert reasons == {"stop", "length"}  # both kinds present: rows did leave the batch early
    for prompt, row in zip(prompts, out, strict=True):
        for c in row:
            ref = reference_logprobs(eos_engine.model, prompt, c.token_ids, temperature)
            assert max(abs(a - b) for a, b in zip(c.logprobs, ref, strict=True)) < 1e-4


def test_greedy_equals_model_generate(engine, tok):
    prompts = [enc(tok, p) for p in PROMPTS[:3]]
    out = engine.generate(prompts, SamplingParams(n=2, temperature=0.0, max_tokens=20), seeds_for(3, 2))
    for prompt, row in zip(prompts, out, strict=True):
        with torch.no_grad():
            ids = torch.tensor([prompt])
            ref = engine.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                        max_new_tokens=20, eos_token_id=EOS, pad_token_id=PAD)
        expected = ref[0, len(prompt):].tolist()
        assert row[0].token_ids == row[1].token_ids == expected
        reference = reference_logprobs(engine.model, prompt, expected, 0.0)  # T=0 reports T=1 log-probs
        assert row[0].logprobs == pytest.approx(reference, abs=1e-4)


def test_tiny_top_p_is_greedy(engine, tok):
    prompts = [enc(tok, p) for p in PROMPTS]
    greedy = engine.generate(prompts, SamplingParams(n=1, temperature=0.0, max_tokens=12), seeds_for(4, 1))
    nucleus = engine.generate(prompts, SamplingParams(n=2, temperature=1.0, top_p=1e-6, max_tokens=12),
                              seeds_for(4, 2, base=3))
    for g, row in zip(greedy, nucleus, strict=True):
        for c in row:
            assert c.token_ids == g[0].token_ids
            assert c.logprobs == pytest.approx(g[0].logprobs, abs=1e-6)  # T=1: same log_softmax(logits)


def test_sample_tokens_top_p_keeps_smallest_set():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))

    def pick(u, top_p):
        return sample_tokens(logits, torch.tensor([u], dtype=torch.float64), 1.0, top_p)[0].item()

    assert {pick(u / 100, 0.45) for u in range(100)} == {0}  # 0.5 >= 0.45: one token suffices
    assert {pick(u / 100, 0.6) for u in range(100)} == {0, 1}  # 0.5 < 0.6: two tokens, renormalised
    assert pick(0.62, 0.6) == 0 and pick(0.63, 0.6) == 1  # inverse CDF over 0.5 / 0.8
    assert {pick(u / 100, 1.0) for u in range(100)} == {0, 1, 2}
    assert pick(0.9999999999, 1.0) == 2
    tokens, lp = sample_tokens(logits, torch.tensor([0.7], dtype=torch.float64), 1.0, 0.6)
    assert lp.item() == pytest.approx(math.log(0.3), abs=1e-6)  # log-prob before the top-p cut


def test_eos_stops_and_is_kept_in_ids_not_text(eos_engine, tok):
    out = eos_engine.generate([enc(tok, "Hi")], SamplingParams(n=8, max_tokens=30), [list(range(8))])[0]
    stopped = [c for c in out if c.finish_reason == "stop"]
    assert stopped and len(stopped) < 8
    for c in stopped:
        assert c.token_ids[-1] == EOS and EOS not in c.token_ids[:-1]
        assert c.text == tok.decode(c.token_ids[:-1], skip_special_tokens=True)
        assert "</s>" not in c.text
    for c in out:
        if c.finish_reason == "length":
            assert len(c.token_ids) == 30 and EOS not in c.token_ids


def test_max_tokens_gives_length(engine, tok):
    out = engine.generate([enc(tok, "Hi")], SamplingParams(n=2, max_tokens=5), [[1, 2]])[0]
    assert all(c.finish_reason == "length" and len(c.token_ids) == 5 for c in out)
    assert all(c.text == tok.decode(c.token_ids, skip_special_tokens=True) for c in out)


def test_stop_string_cuts_text(engine, tok):
    prompt, params = enc(tok, "Start at 17."), SamplingParams(n=1, max_tokens=30)
    full = engine.generate([prompt], params, [[5]])[0][0]
    stop = full.text[6:8]  # a two-character string the unconstrained sample produces
    cut = engine.generate([prompt], SamplingParams(n=1, max_tokens=30, stop=(stop, "@@")), [[5]])[0][0]
    first = full.text.find(stop)
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[:first]
    assert cut.token_ids == full.token_ids[:len(cut.token_ids)]  # same seed: same tokens until the stop
    decoded = tok.decode(cut.token_ids, skip_special_tokens=True)
    assert decoded.startswith(cut.text) and stop in decoded and stop not in tok.decode(cut.token_ids[:-1])


def test_prompt_is_prefilled_once_per_prompt(engine, tok):
    calls = []

    def hook(module, args, kwargs):
        calls.append(tuple(kwargs["input_ids"].shape))

    handle = engine.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        prompts = [enc(tok, p) for p in PROMPTS]
        engine.generate(prompts, SamplingParams(n=5, max_tokens=6), seeds_for(4, 5))
    finally:
        handle.remove()
    longest = max(len(p) for p in prompts)
    assert calls[0] == (4, longest)  # one prefill, one row per prompt, not per sample
    assert all(shape == (20, 1) for shape in calls[1:])  # then one token per sample row per step
    assert len(calls) == 1 + 5  # the last step needs no forward pass


def test_progress_reports_tokens_and_finished(eos_engine, tok):
    seen = []
    out = eos_engine.generate([enc(tok, p) for p in PROMPTS], SamplingParams(n=2, max_tokens=15),
                              seeds_for(4, 2), progress=lambda t, f: seen.append((t, f)))
    assert sum(t for t, _ in seen) == sum(len(c.token_ids) for row in out for c in row)
    assert sum(f for _, f in seen) == 8


def test_plan_batches_respects_budget():
    lengths = [5, 50, 10, 7, 30]
    batches = plan_batches(lengths, n=2, max_tokens=10, batch_tokens=100)
    assert sorted(i for b in batches for i in b) == list(range(5))
    for b in batches:
        assert len(b) == 1 or len(b) * 2 * (max(lengths[i] for i in b) + 10) <= 100
    assert [lengths[b[0]] for b in batches] == sorted(lengths[b[0]] for b in batches)


def test_bad_requests_are_clear(engine, tok):
    with pytest.raises(ThinkrlError, match="seeds"):
        engine.generate([enc(tok, "Hi")], SamplingParams(n=2), [[1]])
    with pytest.raises(ThinkrlError, match="empty"):
        engine.generate([[]], SamplingParams(n=1), [[1]])
    with pytest.raises(ThinkrlError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ThinkrlError, match="temperature"):
        SamplingParams(temperature=-1)


def test_completion_text_invariant(tok):
    ids = enc(tok, "abc = 12\n\nok") + [EOS]
    text = completion_text(tok, ids, frozenset({EOS}), ("\n\n",))
    assert text == "abc = 12" and tok.decode(ids, skip_special_tokens=True).startswith(text)


def test_from_pretrained_and_registry(tmp_path, tok):
    tiny_llama(len(tok)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    eng = load_engine("hf", tmp_path)
    assert eng.name == "hf" and eng.model.dtype == torch.float32 and not eng.model.training
    bf = load_engine("hf", tmp_path, dtype="bfloat16")
    out = bf.generate([enc(tok, "Hi")], SamplingParams(n=2, max_tokens=4), [[1, 2]])
    assert bf.model.dtype == torch.bfloat16 and len(out[0][0].token_ids) == 4
    assert set(ENGINES) == {"hf", "vllm"}
    with pytest.raises(ThinkrlError, match="hf, vllm"):
        load_engine("nope", tmp_path)
    with pytest.raises(ThinkrlError, match="missing: expected a model directory .* found nothing there"):
        load_engine("hf", tmp_path / "missing")


def test_vllm_is_lazy():
    """Importing the engines (vllm's module included) imports no vllm: checked in a fresh interpreter, so it
    also holds where vllm is installed and another test module has imported it into this process."""
    code = ("import sys, thinkrl.engine, thinkrl.engine.vllm\n"
            "assert 'vllm' not in sys.modules, 'vllm imported'\n"
            "try:\n    import vllm\nexcept ImportError:\n    vllm = None\n"
            "if vllm is None:\n"
            "    from thinkrl.errors import ThinkrlError\n"
            "    try:\n        thinkrl.engine.ENGINES['vllm']('some/model')\n"
            "    except ThinkrlError as e:\n        assert 'not installed' in str(e), e\n"
            "    else:\n        raise AssertionError('no error without vllm')\n"
            "print('lazy ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0 and "lazy ok" in proc.stdout, proc.stderr[-2000:]


def test_reloaded_engine_samples_what_a_fresh_engine_samples(tok, tmp_path):
    """`reload` (the round loop's one engine per run) gives exactly the samples of an engine built on the new
    checkpoint, same seeds."""
    for name, seed in (("a", 0), ("b", 1)):
        tiny_llama(len(tok), seed=seed).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    params = SamplingParams(n=3, temperature=1.0, max_tokens=12)
    prompts, seeds = [enc(tok, "12+3="), enc(tok, "7*")], seeds_for(2, 3, base=5)
    live = load_engine("hf", tmp_path / "a", dtype="float32")
    before = live.generate(prompts, params, seeds)
    live.reload(tmp_path / "b")
    fresh = load_engine("hf", tmp_path / "b", dtype="float32").generate(prompts, params, seeds)
    assert live.generate(prompts, params, seeds) == fresh != before


def test_engine_options_of_another_engine_are_an_error():
    from thinkrl.engine import engine_options
    from thinkrl.sampling import SampleConfig

    assert engine_options(SampleConfig(dtype="float32", device="cpu")) == {"dtype": "float32", "device": "cpu"}
    with pytest.raises(ThinkrlError, match="--tensor-parallel-size, --enforce-eager apply to --engine vllm only"):
        engine_options(SampleConfig(tensor_parallel_size=2, enforce_eager=True))
    opts = engine_options(SampleConfig(engine="vllm", gpu_memory_utilization=0.5, max_model_len=512))
    assert opts == {"dtype": "auto", "tensor_parallel_size": 1, "gpu_memory_utilization": 0.5, "max_model_len": 512,
                    "enable_prefix_caching": True, "enforce_eager": False}


def test_devices_and_dtypes_resolve_before_any_model_loads(tmp_path, monkeypatch):
    from thinkrl.engine import resolve_device, resolve_dtype

    assert resolve_device("cpu") == "cpu" and resolve_device("auto") in ("cpu", "cuda")
    with pytest.raises(ThinkrlError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ThinkrlError, match="CUDA is not available"):
            resolve_device("cuda:1")
    assert resolve_dtype("hf", "auto", "cpu", tmp_path) == "float32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("hf", "auto", "cuda", tmp_path) == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100: fp32
    assert resolve_dtype("hf", "auto", "cuda", tmp_path) == "float32"
    (tmp_path / "config.json").write_text('{"dtype": "float16"}')
    assert resolve_dtype("vllm", "auto", "cuda", tmp_path) == "float16"
    (tmp_path / "config.json").write_text('{"torch_dtype": "float32"}')
    assert resolve_dtype("vllm", "auto", "cpu", tmp_path) == "bfloat16"
    assert resolve_dtype("vllm", "float32", "cpu", tmp_path) == "float32"



def test_growing_cache_equals_transformers_dynamic_cache(eos_engine, tok, monkeypatch):
    """The engine's in-place cache (GrowingLayer) against transformers' own DynamicCache, which concatenates:
    rows leaving the batch (batch_select_indices), n samples per prompt (batch_repeat_interleave), prompts of
    different lengths, and a capacity too small for the run (so a buffer grows): the same tokens and
    bit-identical log-probs."""
    from transformers import DynamicCache

    import thinkrl.engine.hf as hf

    prompts = [enc(tok, p) for p in PROMPTS]
    params = SamplingParams(n=3, temperature=0.8, max_tokens=24)
    growing = eos_engine.generate(prompts, params, seeds_for(4, 3))
    assert {c.finish_reason for row in growing for c in row} == {"stop", "length"}
    made = []
    monkeypatch.setattr(hf, "growing_cache", lambda config, capacity: made.append(capacity) or
                        DynamicCache(config=config))
    plain = eos_engine.generate(prompts, params, seeds_for(4, 3))
    assert made                                                  # the plain cache was the one used
    monkeypatch.undo()
    real = hf.growing_cache
    monkeypatch.setattr(hf, "growing_cache", lambda config, capacity: real(config, 3))  # grows while decoding
    small = eos_engine.generate(prompts, params, seeds_for(4, 3))
    for a, b, c in zip(growing, plain, small, strict=True):
        for x, y, z in zip(a, b, c, strict=True):
            assert x.token_ids == y.token_ids == z.token_ids and x.finish_reason == y.finish_reason
            assert x.logprobs == y.logprobs == z.logprobs


def test_growing_layer_keeps_what_dynamic_layer_keeps():
    from transformers.cache_utils import DynamicLayer

    from thinkrl.engine.hf import GrowingLayer

    g, d = GrowingLayer(capacity=4), DynamicLayer()
    torch.manual_seed(0)
    steps = [torch.randn(2, 3, 3, 5)] + [torch.randn(2, 3, 1, 5) for _ in range(5)]
    for i, kv in enumerate(steps):
        if i == 1:
            for layer in (g, d):
                layer.batch_repeat_interleave(2)                      # (4, ...)
        if i >= 1:
            kv = kv.repeat_interleave(2, dim=0)[[0, 2, 3]] if i >= 3 else kv.repeat_interleave(2, dim=0)
        if i == 3:
            for layer in (g, d):
                layer.batch_select_indices(torch.tensor([0, 2, 3]))   # a row leaves
        got, want = g.update(kv, -kv), d.update(kv, -kv)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert g.get_seq_length() == d.get_seq_length() == 3 + i
    assert g._buffers[0].shape[-2] >= 8                                # it grew past its capacity of 4
