"""Token log-probs of completions under a causal LM, and the micro-batch planning they share with training.

    logp, mask = completion_logprobs(model, prompts, completions, temperatures)   # (n, T) with grad
    s = completion_scores(model, prompts, completions, temperatures, entropy=True)  # + s.entropy (n, T)
    lps = token_logprobs(model, prompt_ids, completion_ids, batch_tokens=4096)    # no grad, per row

Convention: log π(token | prefix) = log_softmax(logits / T)[token] in float32 (float64 for float64 models),
T the row's sampling temperature (1 by default; greedy T = 0 scores at 1). Micro-batches hold rows x longest
row <= budget padded tokens, longest first: the same plan for scoring and for training.

Memory. `chunk` > 0 (the default, 1024): the model runs without its LM head, and the log-probs of the
completion tokens come from their final hidden states, `chunk` positions at a time through the head
(`SelectedLogprob`, a custom autograd function whose backward recomputes each chunk's logits), so no
(n, T, V) logits tensor ever exists: peak memory grows with tokens x hidden, not tokens x vocabulary (at
V = 151,936 one 8k-token rollout's fp32 logits are 5 GB). `chunk` = 0: the whole-logits path (the model's own
forward, `logits_to_keep` from the shortest prompt's end, a gather and logsumexp over (n, T, V)); it is also
taken for models the chunked path cannot drive (no output embedding, an LM-head bias, final-logit
softcapping). Both give the same values and gradients (to float rounding; tested).

Entropy (`completion_scores(..., entropy=True)`, what the trainer logs): at each completion position the exact
entropy H = -sum_v p_v log p_v of the whole next-token distribution p = softmax(logits / T) (not top-p
truncated), in nats, from the very logits the log-probs come from: each chunk's in the chunked path, the
(n, T, V) logits in the whole-logits path. No extra forward; it is detached, and the log-probs and their
gradients are the same with or without it (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import torch

from thinkrl.errors import ThinkrlError


class _Sized(Protocol):
    @property
    def length(self) -> int: ...


R = TypeVar("R", bound=_Sized)


def plan_micro_batches(rollouts: Sequence[R], budget: int) -> list[list[R]]:
    """Micro-batches with rows × longest row <= budget padded tokens (a longer row goes alone); longest
    first, ties by input order: deterministic."""
    order = sorted(range(len(rollouts)), key=lambda i: (-rollouts[i].length, i))
    out: list[list[R]] = []
    for i in order:
        if out and (len(out[-1]) + 1) * out[-1][0].length <= budget:
            out[-1].append(rollouts[i])
        else:
            out.append([rollouts[i]])
    return out


def scoring_temperature(t: float | None) -> float:
    """The temperature log-probs are computed at: the sampling one; greedy (0) or unknown -> 1."""
    return float(t) if t else 1.0


@dataclass(frozen=True)
class _Row:
    index: int
    prompt_ids: list[int]
    completion_ids: list[int]
    temperature: float

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def device_of(model: torch.nn.Module) -> torch.device:
    return next(unwrap(model).parameters()).device


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast to `dtype` on the device's type, or nothing when dtype is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


DEFAULT_CHUNK = 1024


class SelectedLogprob(torch.autograd.Function):
    """out[i] = log_softmax(hidden[i] @ weight^T / temperature[i])[target[i]] for N rows, with the (N, V) logits
    made `chunk` rows at a time in forward and again in backward (never all at once). Under autocast the
    matmuls run in the autocast dtype, as the LM head's would; the log-softmax is float32 (float64 for float64
    inputs). entropy=True: returns (out, H), H[i] the entropy of row i's distribution from the same chunk
    logits (not differentiable)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk: int, entropy: bool = False):
        dev = hidden.device.type
        mm = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
        acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        out = torch.empty(hidden.shape[0], dtype=acc, device=hidden.device)            # (N,)
        ent = torch.empty(hidden.shape[0] if entropy else 0, dtype=acc, device=hidden.device)  # (N,) or (0,)
        w = weight.to(mm) if mm is not None else weight                               # cast once, not per chunk
        for s in range(0, hidden.shape[0], chunk):
            logits = _chunk_logits(hidden[s:s + chunk], w, temperature[s:s + chunk], mm, acc)  # (c, V)
            out[s:s + chunk] = logits.gather(-1, targets[s:s + chunk, None])[:, 0] - torch.logsumexp(logits, -1)
            if entropy:
                ent[s:s + chunk] = entropy_of(logits)
        ctx.save_for_backward(hidden, weight, targets, temperature)
        ctx.chunk, ctx.mm, ctx.acc = chunk, mm, acc
        if entropy:
            ctx.mark_non_differentiable(ent)
            return out, ent
        return out

    @staticmethod
    def backward(ctx, grad_out, *_):
        hidden, weight, targets, temperature = ctx.saved_tensors
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gh = torch.zeros_like(hidden) if want_h else None                                # (N, H)
        gw = torch.zeros(weight.shape, dtype=ctx.acc, device=weight.device) if want_w else None  # (V, H)
        mm = ctx.mm or weight.dtype
        w = weight.to(mm)                                                             # cast once, not per chunk
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, hidden.shape[0], ctx.chunk):
                e = s + ctx.chunk
                logits = _chunk_logits(hidden[s:e], w, temperature[s:e], ctx.mm, ctx.acc)        # (c, V)
                g = -torch.softmax(logits, -1)                                                # d(-logsumexp)
                g.scatter_add_(-1, targets[s:e, None], torch.ones_like(g[:, :1]))             # + d(selected)
                g *= (grad_out[s:e] / temperature[s:e])[:, None]                              # (c, V) d/d(hW^T)
                if want_h:
                    gh[s:e] = (g.to(mm) @ w).to(gh.dtype)
                if want_w:
                    gw += (g.to(mm).T @ hidden[s:e].to(mm)).to(ctx.acc)
        return gh, gw.to(weight.dtype) if want_w else None, None, None, None, None


def entropy_of(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) over the last dimension: (..., V) -> (...); 0 log 0 = 0."""
    return torch.special.entr(torch.softmax(logits, -1)).sum(-1)


def _chunk_logits(h: torch.Tensor, w: torch.Tensor, temperature: torch.Tensor, mm: torch.dtype | None,
                  acc: torch.dtype) -> torch.Tensor:
    if mm is not None:
        h, w = h.to(mm), w.to(mm)
    return (h @ w.T).to(acc) / temperature[:, None].to(acc)


def chunkable(model) -> bool:
    """Can the chunked path drive this model: an output embedding without bias, no final-logit softcapping."""
    inner = unwrap(model)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    cfg = getattr(inner, "config", None)
    return (isinstance(head, torch.nn.Linear) and head.bias is None and hasattr(inner, "set_output_embeddings")
            and not getattr(cfg, "final_logit_softcapping", None) and _accepts_logits_to_keep(model))


def _final_hidden(model, ids: torch.Tensor, attn: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(final hidden states of the last `keep` positions (n, keep, H), LM-head weight (V, H)): the forward
    goes through `model` itself (so a DDP wrapper syncs its gradients) with the head swapped for identity."""
    inner = unwrap(model)
    head = inner.get_output_embeddings()
    inner.set_output_embeddings(torch.nn.Identity())
    try:
        hidden = model(input_ids=ids, attention_mask=attn, logits_to_keep=keep).logits   # (n, keep, H)
    finally:
        inner.set_output_embeddings(head)
    return hidden, head.weight


@dataclass(frozen=True)
class Scores:
    """What one scoring forward gives: log-probs (with grad), the completion mask and, when asked for, the
    entropy of the distribution at each position (detached; None otherwise). All (n, T), 0 where mask is 0."""
    logp: torch.Tensor
    mask: torch.Tensor
    entropy: torch.Tensor | None = None


def completion_logprobs(model, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                        temperatures: Sequence[float] | None = None,
                        chunk: int = DEFAULT_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(completion token | prefix) = log_softmax(logits / T_i), one right-padded forward (T_i = 1 when
    temperatures is None); `chunk` positions at a time through the LM head (0: whole logits; module doc).
    Returns (logp, mask), both (n, T), T = longest completion; logp is 0 where mask is 0."""
    s = completion_scores(model, prompts, completions, temperatures, chunk)
    return s.logp, s.mask


def completion_scores(model, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                      temperatures: Sequence[float] | None = None, chunk: int = DEFAULT_CHUNK,
                      entropy: bool = False) -> Scores:
    """`completion_logprobs`'s forward, and with entropy=True the entropy of softmax(logits / T_i) at every
    completion position from the same logits (module doc)."""
    device = device_of(model)
    n, lens = len(prompts), [len(p) + len(c) for p, c in zip(prompts, completions, strict=True)]
    L, T = max(lens), max(len(c) for c in completions)
    ids = torch.zeros((n, L), dtype=torch.long)          # (n, L) right-padded (pad id 0, masked out)
    attn = torch.zeros((n, L), dtype=torch.long)         # (n, L)
    pos = torch.zeros((n, T), dtype=torch.long)          # (n, T) position whose logits predict token t
    tgt = torch.zeros((n, T), dtype=torch.long)          # (n, T) completion tokens
    mask = torch.zeros((n, T), dtype=torch.bool)         # (n, T)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        ids[i, :lens[i]] = torch.tensor(list(p) + list(c))
        attn[i, :lens[i]] = 1
        pos[i] = len(p) - 1                              # padding points at a real position (finite logits)
        pos[i, :len(c)] += torch.arange(len(c))
        tgt[i, :len(c)] = torch.tensor(list(c), dtype=torch.long)
        mask[i, :len(c)] = True
    ids, attn, pos, tgt, mask = (t.to(device) for t in (ids, attn, pos, tgt, mask))
    keep = L - (min(len(p) for p in prompts) - 1)        # logits of positions >= shortest prompt end only
    temps = torch.tensor([1.0] * n if temperatures is None else [float(t) for t in temperatures], dtype=torch.float64,
                         device=device)
    if chunk > 0 and chunkable(model):
        hidden, weight = _final_hidden(model, ids, attn, keep)                          # (n, K, H), (V, H)
        rows = hidden[torch.arange(n, device=device)[:, None], pos - (L - hidden.shape[1])][mask]  # (N, H)
        picked = SelectedLogprob.apply(rows, weight, tgt[mask], temps[:, None].expand(n, T)[mask], chunk,
                                       entropy)                                          # (N,) or ((N,), (N,))
        picked, ent = picked if entropy else (picked, None)
        logp = torch.zeros((n, T), dtype=picked.dtype, device=device).masked_scatter(mask, picked)
        if ent is not None:
            ent = torch.zeros((n, T), dtype=ent.dtype, device=device).masked_scatter(mask, ent)
        return Scores(logp, mask.to(logp.dtype), ent)
    kw = {"logits_to_keep": keep} if _accepts_logits_to_keep(model) else {}
    logits = model(input_ids=ids, attention_mask=attn, **kw).logits   # (n, K, V), K = keep or L
    sel = logits[torch.arange(n, device=device)[:, None], pos - (L - logits.shape[1])]  # (n, T, V)
    if sel.dtype not in (torch.float32, torch.float64):
        sel = sel.float()
    if temperatures is not None and any(t != 1.0 for t in temperatures):
        sel = sel / temps.to(sel.dtype)[:, None, None]
    logp = sel.gather(-1, tgt[..., None])[..., 0] - torch.logsumexp(sel, dim=-1)        # (n, T)
    ent = None
    if entropy:
        with torch.no_grad():  # one row at a time: at most one more (T, V) tensor beside the logits
            ent = torch.where(mask, torch.stack([entropy_of(row) for row in sel]), torch.zeros_like(logp))  # (n, T)
    return Scores(torch.where(mask, logp, torch.zeros_like(logp)), mask.to(logp.dtype), ent)


def _accepts_logits_to_keep(model) -> bool:
    import inspect

    return "logits_to_keep" in inspect.signature(unwrap(model).forward).parameters


@torch.no_grad()
def token_logprobs(model, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]],
                   batch_tokens: int = 4096, autocast_dtype: torch.dtype | None = None,
                   temperatures: Sequence[float] | None = None, chunk: int = DEFAULT_CHUNK) -> list[np.ndarray]:
    """log π(token | prefix) of every completion token, float32 arrays aligned with completion_ids.

    Temperature: row i is scored at temperatures[i] (default 1, the raw model distribution); the trainer's
    log π_θ uses the same per-row temperature, so the ratio compares like with like. Rows are batched
    (right padding, attention mask) in groups of <= batch_tokens padded tokens; the model runs in eval mode
    (restored afterwards). Pass the trainer's autocast dtype to match its numerics."""
    if any(len(p) == 0 for p in prompt_ids):
        raise ThinkrlError("token_logprobs: an empty prompt (need >= 1 token to score the first completion)")
    inner = unwrap(model)
    was_training = inner.training
    inner.eval()
    out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(completion_ids)
    temps = [1.0] * len(completion_ids) if temperatures is None else [scoring_temperature(t) for t in temperatures]
    rows = [_Row(i, list(prompt_ids[i]), list(c), temps[i]) for i, c in enumerate(completion_ids) if len(c)]
    try:
        for mb in plan_micro_batches(rows, batch_tokens):
            with autocast(device_of(model), autocast_dtype):
                prompts, comps = [r.prompt_ids for r in mb], [r.completion_ids for r in mb]
                logp, _ = completion_logprobs(inner, prompts, comps, [r.temperature for r in mb], chunk)  # (n, T)
            for j, r in enumerate(mb):
                out[r.index] = logp[j, :len(r.completion_ids)].float().cpu().numpy()
    finally:
        inner.train(was_training)
    return out
