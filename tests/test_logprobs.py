"""Tests for thinkrl.logprobs: the chunked LM-head log-probs against the whole-logits path and the formula.

The chunked path must give the same log-probs and gradients as today's whole-logits path (to float32
rounding) without ever running the LM head over every position at once.
"""

from __future__ import annotations

import pytest
import torch
from char_tokenizer import char_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from thinkrl.logprobs import SelectedLogprob, chunkable, completion_logprobs, token_logprobs


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    tok = char_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).train()


def _rows(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    V = model.config.vocab_size
    prompts = [torch.randint(3, V, (k,), generator=g).tolist() for k in (5, 9, 3)]
    comps = [torch.randint(3, V, (k,), generator=g).tolist() for k in (20, 7, 31)]
    return prompts, comps, [1.0, 0.6, 0.9]


def test_selected_logprob_is_log_softmax_with_its_gradient():
    """Forward = log_softmax(h W^T / T)[target] written out; backward checked by finite differences (float64)."""
    torch.manual_seed(1)
    h = torch.randn(37, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    tgt, temp = torch.randint(0, 50, (37,)), torch.rand(37, dtype=torch.float64) + 0.5
    out = SelectedLogprob.apply(h, w, tgt, temp, 5)
    ref = torch.log_softmax((h @ w.T) / temp[:, None], -1).gather(-1, tgt[:, None])[:, 0]
    assert torch.allclose(out, ref, atol=1e-12)
    assert torch.autograd.gradcheck(lambda h, w: SelectedLogprob.apply(h, w, tgt, temp, 5), (h, w))


@pytest.mark.parametrize("chunk", [1024, 4])
def test_chunked_equals_whole_logits_in_value_and_gradient(model, chunk):
    """fp32: the same log-probs, and gradients of a weighted sum equal to 1e-5 relative (chunk 4: many chunks)."""
    prompts, comps, temps = _rows(model)
    out = {}
    for c in (0, chunk):
        model.zero_grad()
        logp, mask = completion_logprobs(model, prompts, comps, temps, chunk=c)       # (n, T)
        (logp * torch.linspace(-1, 1, logp.shape[1])).sum().backward()
        out[c] = logp.detach(), mask, {k: p.grad.clone() for k, p in model.named_parameters()}
    assert torch.equal(out[0][1], out[chunk][1])
    assert torch.allclose(out[chunk][0], out[0][0], atol=1e-6, rtol=0)
    for k, g in out[0][2].items():
        assert torch.allclose(out[chunk][2][k], g, rtol=1e-5, atol=1e-5 * float(g.abs().max())), k


def test_chunked_under_bf16_autocast_is_close(model):
    prompts, comps, temps = _rows(model, seed=3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        whole, _ = completion_logprobs(model, prompts, comps, temps, chunk=0)
        chunked, _ = completion_logprobs(model, prompts, comps, temps, chunk=8)
    assert whole.dtype == chunked.dtype == torch.float32
    assert torch.allclose(chunked, whole, atol=2e-2)


def test_chunked_path_never_runs_the_lm_head_over_all_positions(model):
    """The LM head is swapped out of the forward (only chunks of hidden states meet its weight), and put back."""
    calls = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: calls.append(tuple(o.shape)))
    try:
        prompts, comps, temps = _rows(model)
        completion_logprobs(model, prompts, comps, temps, chunk=16)
        assert calls == []
        completion_logprobs(model, prompts, comps, temps, chunk=0)
        assert len(calls) == 1 and calls[0][-1] == model.config.vocab_size       # (n, K, V) logits
    finally:
        hook.remove()
    assert isinstance(model.get_output_embeddings(), torch.nn.Linear) and chunkable(model)


def test_token_logprobs_take_the_chunk(model):
    prompts, comps, temps = _rows(model, seed=5)
    a = token_logprobs(model, prompts, comps, temperatures=temps, chunk=0)
    b = token_logprobs(model, prompts, comps, temperatures=temps, chunk=3)
    assert all(abs(x - y).max() < 1e-6 for x, y in zip(a, b, strict=True))
