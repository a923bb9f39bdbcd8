"""Tests for thinkrl.loss: hand-computed clipped objective, clip fraction, k3 KL, every aggregation, and
split invariance of the aggregations that promise it (gradient accumulation / DDP sum to the whole batch)."""

from __future__ import annotations

import math

import pytest
import torch

from thinkrl.loss import AGGREGATIONS, BatchCounts, LossConfig, aggregation_name, policy_loss

D = torch.float64


def one_token(log_ratio: float, adv: float, cfg: LossConfig = LossConfig(),
              ref_minus_logp: float | None = None):
    """Loss, stats and d loss / d logp of a single token (one sequence, seq-mean-token-mean = the token)."""
    logp = torch.tensor([[-1.0]], dtype=D, requires_grad=True)
    old = torch.tensor([[-1.0 - log_ratio]], dtype=D)
    ref = None if ref_minus_logp is None else torch.tensor([[-1.0 + ref_minus_logp]], dtype=D)
    n = BatchCounts(sequences=1, tokens=1, micro_batches=1)
    adv_t, mask = torch.tensor([[adv]], dtype=D), torch.ones(1, 1, dtype=D)
    loss, stats = policy_loss(logp, old, adv_t, mask, n, cfg, ref)
    loss.backward()
    return loss.item(), {k: v.item() for k, v in stats.items()}, logp.grad.item()


@pytest.mark.parametrize(
    "log_ratio, adv, want_loss, clipped",
    [
        (0.5, 1.0, -1.2, True),                    # ρ = 1.6487 > 1.2, A > 0: clipped to 1.2
        (-0.5, -1.0, 0.8, True),                   # ρ = 0.6065 < 0.8, A < 0: clipped to 0.8
        (0.1, 2.0, -2.0 * math.exp(0.1), False),   # inside the interval: -ρA
        (0.5, -1.0, math.exp(0.5), False),         # ρ > 1 + ε but A < 0: the unclipped term is smaller
        (-0.5, 1.0, -math.exp(-0.5), False),       # ρ < 1 - ε but A > 0: unclipped
        (0.3, 0.0, 0.0, False),                    # A = 0: nothing, not counted as clipped
    ],
)
def test_clipped_objective_per_token(log_ratio, adv, want_loss, clipped):
    loss, stats, grad = one_token(log_ratio, adv)
    assert loss == pytest.approx(want_loss, abs=1e-12)
    assert stats["clipped_tokens"] == float(clipped)
    # clipped tokens carry no gradient; unclipped ones d(-ρA)/dlogp = -ρA
    assert grad == pytest.approx(0.0 if clipped else -math.exp(log_ratio) * adv, abs=1e-12)


def test_asymmetric_clip_dapo():
    cfg = LossConfig(eps_low=0.2, eps_high=0.28)
    loss, stats, _ = one_token(0.5, 1.0, cfg)
    assert loss == pytest.approx(-1.28) and stats["clipped_tokens"] == 1.0
    loss, _, _ = one_token(math.log(1.25), 1.0, cfg)  # 1.25 < 1.28: inside
    assert loss == pytest.approx(-1.25)


def test_clip_fraction_over_a_batch():
    log_ratio = torch.tensor([[0.5, -0.5, 0.1, 0.0], [0.5, 0.5, 0.0, 0.0]], dtype=D)
    adv = torch.tensor([[1.0, -1.0, 1.0, 9.0], [-1.0, 1.0, 0.0, 0.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=D)      # the 9.0 is padding
    logp = torch.zeros_like(adv)
    n = BatchCounts(sequences=2, tokens=5, micro_batches=1)
    _, stats = policy_loss(logp, logp - log_ratio, adv, mask, n, LossConfig())
    assert stats["clipped_tokens"].item() == 3.0                      # (0,0), (0,1), (1,1)
    assert stats["tokens"].item() == 5.0
    want_ratio_sum = math.exp(0.5) + math.exp(-0.5) + math.exp(0.1) + 2 * math.exp(0.5)
    assert stats["ratio_sum"].item() == pytest.approx(want_ratio_sum)


@pytest.mark.parametrize("d", [0.3, -0.2, 0.0, 1.5])
def test_k3_kl_value_and_loss(d):
    beta = 0.1
    want_kl = math.exp(d) - d - 1                                    # Schulman's k3, >= 0
    loss, stats, grad = one_token(0.0, 0.0, LossConfig(beta=beta), ref_minus_logp=d)
    assert stats["kl_sum"] == pytest.approx(want_kl, abs=1e-12)
    assert loss == pytest.approx(beta * want_kl, abs=1e-12)         # A = 0: only the KL term
    assert grad == pytest.approx(beta * (1 - math.exp(d)), abs=1e-12)  # d/dlogp (e^(ref-logp) + logp)
    loss2, _, _ = one_token(0.0, 1.0, LossConfig(beta=beta), ref_minus_logp=d)
    assert loss2 == pytest.approx(-1.0 + beta * want_kl, abs=1e-12)


def test_kl_needs_reference():
    with pytest.raises(ValueError, match="reference"):
        one_token(0.0, 1.0, LossConfig(beta=0.1))


# per-token losses with ratio 1 are -A, so choose A = -L to get the loss matrix L
L = torch.tensor([[1.0, 2.0, 0.0], [3.0, -4.0, 5.0]], dtype=D)
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=D)


def aggregate(name: str, loss=L, mask=MASK, n: BatchCounts | None = None) -> float:
    n = n or BatchCounts(sequences=loss.shape[0], tokens=int(mask.sum()), micro_batches=1, norm_len=10)
    adv = torch.where(mask > 0, -loss, torch.full_like(loss, float("nan")))  # NaN padding must not leak
    z = torch.zeros_like(loss)
    out, _ = policy_loss(z, z, adv, mask, n, LossConfig(aggregation=name))
    return out.item()


def test_aggregations_by_hand():
    assert aggregate("seq-mean-token-mean") == pytest.approx(((1 + 2) / 2 + (3 - 4 + 5) / 3) / 2)
    assert aggregate("token-mean") == pytest.approx((1 + 2 + 3 - 4 + 5) / 5)
    assert aggregate("seq-mean-token-sum-norm") == pytest.approx((1 + 2 + 3 - 4 + 5) / 10 / 2)
    assert aggregate("micro-batch-token-mean") == pytest.approx((1 + 2 + 3 - 4 + 5) / 5)
    assert set(AGGREGATIONS) == {"seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm",
                                 "micro-batch-token-mean"}


# Three sequences (per-token losses by row, padding excluded) split two ways into micro-batches.
ROWS = [[1.0, 2.0], [3.0, -4.0, 5.0], [6.0]]
SPLITS = {"one micro-batch": [[0, 1, 2]], "two micro-batches": [[0], [1, 2]]}
# Hand-written formulas of each aggregation (TRL / verl names in docs/PAPER.md), per split.
HAND = {
    # GRPO: mean over the 3 sequences of their token means, whatever the split
    "seq-mean-token-mean": {"one micro-batch": (1.5 + 4 / 3 + 6) / 3, "two micro-batches": (1.5 + 4 / 3 + 6) / 3},
    # DAPO: sum of all 6 token losses / 6 tokens, whatever the split
    "token-mean": {"one micro-batch": 13 / 6, "two micro-batches": 13 / 6},
    # Dr. GRPO: token sums / norm_len 10, mean over 3 sequences
    "seq-mean-token-sum-norm": {"one micro-batch": 13 / 10 / 3, "two micro-batches": 13 / 10 / 3},
    # TRL bnpo: token mean per micro-batch, averaged over micro-batches: (3/2 + 10/4) / 2 when split
    "micro-batch-token-mean": {"one micro-batch": 13 / 6, "two micro-batches": (3 / 2 + 10 / 4) / 2},
}


@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("name", list(HAND))
def test_aggregation_formula_per_split(name, split):
    parts = SPLITS[split]
    n = BatchCounts(sequences=3, tokens=6, micro_batches=len(parts), norm_len=10)
    total = 0.0
    for rows in parts:
        T = max(len(ROWS[i]) for i in rows)
        loss = torch.tensor([ROWS[i] + [0.0] * (T - len(ROWS[i])) for i in rows], dtype=D)
        mask = torch.tensor([[1.0] * len(ROWS[i]) + [0.0] * (T - len(ROWS[i])) for i in rows], dtype=D)
        total += aggregate(name, loss, mask, n)
    assert total == pytest.approx(HAND[name][split], abs=1e-12)


@pytest.mark.parametrize("trl, ours", [("grpo", "seq-mean-token-mean"), ("dapo", "token-mean"),
                                       ("dr_grpo", "seq-mean-token-sum-norm"), ("bnpo", "micro-batch-token-mean")])
def test_trl_names_are_aliases(trl, ours):
    assert aggregation_name(trl) == ours and aggregation_name(ours) == ours
    assert aggregate(trl) == aggregate(ours)
    from thinkrl.trainer import TrainConfig

    assert TrainConfig(aggregation=trl).aggregation == ours  # one skip key for both spellings


def test_unknown_aggregation_names_the_known_ones():
    with pytest.raises(ValueError, match="token-mean.*bnpo"):
        aggregation_name("mean")


def random_batch(seed: int, n_seq: int = 7, T: int = 9):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, T + 1, (n_seq,), generator=g)
    mask = (torch.arange(T)[None, :] < lens[:, None]).to(D)
    logp = -torch.rand(n_seq, T, generator=g, dtype=D) * 3
    old = logp + (torch.rand(n_seq, T, generator=g, dtype=D) - 0.5)   # ratios inside and outside the clip
    adv = torch.randn(n_seq, T, generator=g, dtype=D)
    ref = logp + (torch.rand(n_seq, T, generator=g, dtype=D) - 0.5)
    return logp, old, adv, mask, ref


@pytest.mark.parametrize("name", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_micro_batch_split_sums_to_whole_batch(name, seed):
    logp, old, adv, mask, ref = random_batch(seed)
    cfg = LossConfig(aggregation=name, beta=0.05)
    whole_n = BatchCounts(sequences=7, tokens=int(mask.sum()), micro_batches=1, norm_len=9)
    whole, _ = policy_loss(logp, old, adv, mask, whole_n, cfg, ref)
    g = torch.Generator().manual_seed(100 + seed)
    perm = torch.randperm(7, generator=g)
    for cuts in ([3], [1, 2, 6], [2, 4], list(range(1, 7))):
        bounds = [0, *cuts, 7]
        parts = [perm[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        n = BatchCounts(sequences=7, tokens=int(mask.sum()), micro_batches=len(parts), norm_len=9)
        total = sum(policy_loss(logp[i], old[i], adv[i], mask[i], n, cfg, ref[i])[0] for i in parts)
        assert total.item() == pytest.approx(whole.item(), abs=1e-12)
