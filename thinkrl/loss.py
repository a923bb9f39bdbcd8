"""The clipped policy-gradient loss with optional k3 KL, and its aggregations (DESIGN §2).

Per completion token t of sequence i (mask m_it = 1 on completion tokens):
    ρ = exp(log π_θ − log π_old)
    ℓ_it = −min(ρ·A_it, clip(ρ, 1 − ε_low, 1 + ε_high)·A_it) + β·k3,
    k3 = exp(log π_ref − log π_θ) − (log π_ref − log π_θ) − 1          (Schulman's k3 estimator)

Aggregations (a dict of functions; TRL's `loss_type` names are accepted as aliases, see ALIASES and the
mapping table in docs/PAPER.md). Each returns this micro-batch's share of the optimizer-step loss, so
summing the micro-batch losses (gradient accumulation, and DDP's gradient average times world size)
gives exactly the loss of the whole batch, however it is split — except `micro-batch-token-mean`:
- `seq-mean-token-mean` (GRPO, default; TRL `grpo`): mean over sequences of each sequence's token mean.
- `token-mean` (DAPO; TRL `dapo`, verl `token-mean`): the global token mean over every completion token of
  the optimizer step, all micro-batches and ranks (independent of the split).
- `seq-mean-token-sum-norm` (Dr. GRPO; TRL `dr_grpo`): token sums divided by a constant (the generation
  budget `norm_len`), mean over sequences.
- `micro-batch-token-mean` (TRL `bnpo`): token mean within each micro-batch, averaged over the
  micro-batches of the step on all ranks; it depends on how the batch is split (`micro_batch_tokens`).

Padded positions (mask 0) are selected out with `torch.where`, so a non-finite value there (e.g. a padded
log-prob) never reaches the loss; a non-finite value on a real token does, and the trainer skips that step.
Clip fraction counts tokens whose gradient the clip removed (the clipped term won the minimum).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where tensors are made, so the settings (TrainConfig) load without torch
    import torch


@dataclass(frozen=True)
class BatchCounts:
    """Sizes of the whole optimizer step (all micro-batches, all ranks) that aggregations divide by."""
    sequences: int
    tokens: int
    micro_batches: int          # micro-batches in the step, summed over all ranks
    world_size: int = 1         # ranks; the trainer multiplies each rank's loss by it (DDP averages grads)
    norm_len: int = 1           # Dr. GRPO's constant (generation budget)


def _masked(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.where(mask > 0, loss, torch.zeros_like(loss))                  # (B, T)


def _seq_mean_token_mean(loss, mask, n: BatchCounts):
    per_seq = _masked(loss, mask).sum(-1) / mask.sum(-1).clamp(min=1)           # (B,)
    return per_seq.sum() / n.sequences


def _micro_batch_token_mean(loss, mask, n: BatchCounts):
    return _masked(loss, mask).sum() / mask.sum().clamp(min=1) / n.micro_batches


def _seq_mean_token_sum_norm(loss, mask, n: BatchCounts):
    return _masked(loss, mask).sum() / n.norm_len / n.sequences


def _token_mean(loss, mask, n: BatchCounts):
    return _masked(loss, mask).sum() / n.tokens


AGGREGATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, BatchCounts], torch.Tensor]] = {
    "seq-mean-token-mean": _seq_mean_token_mean,
    "token-mean": _token_mean,
    "seq-mean-token-sum-norm": _seq_mean_token_sum_norm,
    "micro-batch-token-mean": _micro_batch_token_mean,
}
ALIASES = {"grpo": "seq-mean-token-mean", "dapo": "token-mean", "dr_grpo": "seq-mean-token-sum-norm",
           "bnpo": "micro-batch-token-mean",    # TRL's loss_type names
           "batch-token-mean": "token-mean"}    # thinkrl 0.1.0's name of the global token mean


def aggregation_name(name: str) -> str:
    """The thinkrl name of an aggregation given by its own or TRL's name; ValueError if unknown."""
    name = ALIASES.get(name, name)
    if name not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {name!r}; expected one of {', '.join(AGGREGATIONS)} "
                         f"(or {', '.join(ALIASES)})")
    return name


@dataclass(frozen=True)
class LossConfig:
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.0
    aggregation: str = "seq-mean-token-mean"


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                counts: BatchCounts, cfg: LossConfig, ref_logp: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """All (B, T) tensors; mask is 1.0 on completion tokens. Returns (loss share, detached stats sums)."""
    import torch

    ratio = torch.exp(logp - old_logp)                                           # (B, T)
    clipped = ratio.clamp(1 - cfg.eps_low, 1 + cfg.eps_high)
    pg = -torch.minimum(ratio * adv, clipped * adv)                              # (B, T)
    loss = pg
    kl = torch.zeros_like(logp)
    if cfg.beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs reference log-probs")
        d = ref_logp - logp
        kl = torch.exp(d) - d - 1                                                # k3, >= 0
        loss = pg + cfg.beta * kl
    agg = AGGREGATIONS[aggregation_name(cfg.aggregation)]
    out = agg(loss, mask, counts)
    with torch.no_grad():
        # the clip removed the gradient: the clipped term won the minimum and differs from the unclipped one
        was_clipped = ((ratio * adv) != (clipped * adv)) & (-pg == clipped * adv)
        stats = {
            "tokens": mask.sum(),
            "clipped_tokens": _masked(was_clipped.to(mask.dtype), mask).sum(),
            "kl_sum": _masked(kl, mask).sum(),
            "ratio_sum": _masked(ratio, mask).sum(),
        }
    return out, stats
