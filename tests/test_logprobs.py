"""Tests for thinkrl.logprobs: the chunked LM-head log-probs against the whole-logits path and the formula.

The chunked path must give the same log-probs and gradients as today's whole-logits path (to float32
rounding) without ever running the LM head over every position at once. The entropy both paths can give from the
same forward: the formula by hand, the written-out full-vocabulary entropy, and nothing else changed by it.
"""

from __future__ import annotations

import math

import pytest
import torch
from char_tokenizer import char_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from thinkrl.logprobs import (
    SelectedLogprob,
    chunkable,
    completion_logprobs,
    completion_scores,
    token_logprobs,
)


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


def test_selected_logprob_entropy_by_hand():
    """Logits = h (weight = identity). Row 0: [0, 0, 0] -> uniform, H = ln 3. Row 1: [ln 3, 0, 0] -> p = (3/5,
    1/5, 1/5), H = -(0.6 ln 0.6 + 0.4 ln 0.2) = 0.950271. Row 2: row 1's logits doubled at T = 2: the same p and H.
    chunk 1: every row its own chunk."""
    h = torch.tensor([[0.0, 0, 0], [math.log(3), 0, 0], [2 * math.log(3), 0, 0]], dtype=torch.float64)
    out, ent = SelectedLogprob.apply(h, torch.eye(3, dtype=torch.float64), torch.tensor([0, 0, 1]),
                                     torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64), 1, True)
    assert ent.tolist() == pytest.approx([math.log(3), 0.950271, 0.950271], abs=1e-6)
    assert out.tolist() == pytest.approx([math.log(1 / 3), math.log(0.6), math.log(0.2)], abs=1e-12)
    assert not ent.requires_grad


@pytest.mark.parametrize("chunk", [0, 4])
def test_entropy_is_the_full_distributions_and_changes_nothing_else(model, chunk):
    """H = -sum_v p log p of softmax(logits / T) over the whole vocabulary at each completion position, written out
    from the model's own logits; the log-probs and gradients with entropy=True equal those without, bit for bit."""
    prompts, comps, temps = _rows(model, seed=7)
    grads = {}
    for want in (False, True):
        model.zero_grad()
        s = completion_scores(model, prompts, comps, temps, chunk=chunk, entropy=want)
        (s.logp * torch.linspace(-1, 1, s.logp.shape[1])).sum().backward()
        grads[want] = s.logp.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}, s.entropy
    assert grads[False][2] is None
    assert torch.equal(grads[True][0], grads[False][0])
    assert all(torch.equal(grads[True][1][k], g) for k, g in grads[False][1].items())
    ent = grads[True][2]
    with torch.no_grad():
        for i, (p, c, t) in enumerate(zip(prompts, comps, temps, strict=True)):
            logits = model(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1:len(p) + len(c) - 1] / t  # (C, V)
            logq = torch.log_softmax(logits.double(), -1)
            want = -(logq.exp() * logq).sum(-1)                                                       # (C,)
            assert ent[i, :len(c)].double() == pytest.approx(want.tolist(), abs=1e-5)
            assert (ent[i, len(c):] == 0).all()
