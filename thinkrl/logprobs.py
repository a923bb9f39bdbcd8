"""Token log-probs of completions under a causal LM, and the micro-batch planning they share with training.

    logp, mask = completion_logprobs(model, prompts, completions, temperatures)   # (n, T) with grad
    lps = token_logprobs(model, prompt_ids, completion_ids, batch_tokens=4096)    # no grad, per row

Convention: log π(token | prefix) = log_softmax(logits / T)[token] in float32 (float64 for float64 models),
T the row's sampling temperature (1 by default; greedy T = 0 scores at 1). The logits of every position are
computed once per micro-batch, only from the shortest prompt's end on (`logits_to_keep`). Micro-batches hold
rows x longest row <= budget padded tokens, longest first: the same plan for scoring and for training.
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


def completion_logprobs(model, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                        temperatures: Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(completion token | prefix) = log_softmax(logits / T_i), one right-padded forward (T_i = 1 when
    temperatures is None). Returns (logp, mask), both (n, T), T = longest completion; logp is 0 where mask is 0."""
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
    kw = {"logits_to_keep": keep} if _accepts_logits_to_keep(model) else {}
    logits = model(input_ids=ids, attention_mask=attn, **kw).logits   # (n, K, V), K = keep or L
    sel = logits[torch.arange(n, device=device)[:, None], pos - (L - logits.shape[1])]  # (n, T, V)
    if sel.dtype not in (torch.float32, torch.float64):
        sel = sel.float()
    if temperatures is not None and any(t != 1.0 for t in temperatures):
        sel = sel / torch.tensor(list(temperatures), dtype=sel.dtype, device=device)[:, None, None]
    logp = sel.gather(-1, tgt[..., None])[..., 0] - torch.logsumexp(sel, dim=-1)        # (n, T)
    return torch.where(mask, logp, torch.zeros_like(logp)), mask.to(logp.dtype)


def _accepts_logits_to_keep(model) -> bool:
    import inspect

    return "logits_to_keep" in inspect.signature(unwrap(model).forward).parameters


@torch.no_grad()
def token_logprobs(model, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]],
                   batch_tokens: int = 4096, autocast_dtype: torch.dtype | None = None,
                   temperatures: Sequence[float] | None = None) -> list[np.ndarray]:
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
                logp, _ = completion_logprobs(inner, prompts, comps, [r.temperature for r in mb])  # (n, T)
            for j, r in enumerate(mb):
                out[r.index] = logp[j, :len(r.completion_ids)].float().cpu().numpy()
    finally:
        inner.train(was_training)
    return out
