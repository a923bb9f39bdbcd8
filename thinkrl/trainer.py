"""The training loop: clipped policy-gradient steps on one round of judged rollouts (DESIGN §2).

    from thinkrl.trainer import TrainConfig, train
    df = read_table("runs/thoughts-r0", "advantages")
    metrics = train("runs/tiny", df, TrainConfig(lr=1e-4), "runs/train-r0")
    torchrun --nproc-per-node 2 -m stages.cli train ...        # DDP: gloo on CPU, nccl on CUDA

The settings, TrainConfig, are declared with the train stage (thinkrl/training.py, which imports this module only
when a run starts, so the settings load without torch); they are importable from here too.

A round is the `advantages` table of one thoughts artifact: G rollouts of each of N problems sampled by
the behaviour policy π_old and per-token advantages A; log π_old is recomputed at the start (see below). One
optimizer step takes B problems with all their rollouts (groups stay together); K passes over the round,
the problem order of pass k a permutation derived from (seed, k) alone, so that a resumed run sees the
same batches as a straight one. Each step: micro-batches of at most `micro_batch_tokens` padded tokens,
forward/backward each (gradient accumulation), ratio ρ = exp(log π_θ − log π_old) against the
behaviour log-probs, loss from `thinkrl.loss.policy_loss` with `BatchCounts` of the whole step (all
micro-batches, all ranks), pre-clip gradient norm, clipping, AdamW, warm-up + schedule. A non-finite
loss or gradient skips the step (no update, gradients zeroed, row `skipped`); `max_nonfinite_in_row`
skips in a row stop the run with a `ThinkrlError`.

Writes in out_dir: `policy/` (Hugging Face checkpoint, safetensors, fp32 master weights, LoRA merged in, tokenizer,
the input's thinkrl.json), `state/` (weights, optimizer, RNG states, local and global step, metric rows: exact
resume), and the `train_metrics` artifact (one row per optimizer step, and the `behaviour` table: log π_old as
recomputed; manifest written last).

Per-step figures (train_metrics columns, docs/ARTIFACTS.md): loss, KL, clip fraction, ratio, gradient norm and
lr from the step itself; outcome reward, accuracy, lengths, truncation, advantage statistics (over tokens) and the
incorrect-thought share from the step's rollouts (`step_figures`, the same on every rank); the policy's entropy
from the training forward's own logits (thinkrl.logprobs, no extra pass); tokens/s and MFU from its wall time.
None of them feeds back into training: weights are the same with or without them.

MFU = 6 × n_params × (prompt + completion tokens through forward/backward, padding excluded, all ranks)
      / step seconds / (flops_peak × world size).
The reference-model forward (β > 0) and attention FLOPs are not counted; n_params counts tied
embeddings once. Default peaks are the measured 2-thread matmul peaks of the development CPU. With LoRA,
n_params is still the whole model's (base + adapters): the forward and the activation-gradient half of the
backward cost what they cost in full fine-tuning, but the frozen weights' gradients (about 2N of the 6N) are
not computed, so MFU overstates the work done by up to a third; `trainable_params` (summary) counts the adapters.

LoRA (`lora_r` > 0, thinkrl/lora.py, peft): adapters on `lora_targets`, injected into the loaded policy before
DDP wrapping; AdamW steps only them. policy/ is saved merged (W + (alpha / r)·B·A, a plain checkpoint that needs
no peft), state/ holds the whole adapted model and the adapters' AdamW state (exact resume as for full training).
With β > 0 and the reference being the input policy (the default), the reference is the policy itself with its
adapters disabled (`reference_logprobs`): no second copy; another `ref_policy` is loaded as in full training.
`continue_from` with LoRA: the next round's input policy is this round's merged policy, and it starts fresh
adapters on it (B = 0: the start is exactly the policy that sampled the round) from its own seed; the global
step and the lr schedule carry on, AdamW's moments do not (they belong to adapters that are merged away, ReLoRA
style). A full fine-tune refuses to continue a LoRA state (it has no moments for the full weights).
LoRA runs under DDP (`strategy = ddp`); with FSDP it is refused for now.

Where this departs from or guesses at the paper:
- lr default 1e-4 (the paper uses 1e-6 on 1.5B/7B models): the tiny CPU policy of DESIGN §5, where 1e-4
  gained +9-11 points and 3e-4 collapsed. Weight decay 0, betas (0.9, 0.999): not stated in the paper.
- the last step of a pass takes the leftover (< B) problems: judged samples are expensive, none is wasted.
- rollouts whose advantages are all zero are dropped before batching (DESIGN §2); their count is the
  `dropped_rollouts` column, the same in every row of a run.
- log-probs on both sides of the ratio are at the rollouts' sampling temperature T (log_softmax(logits / T),
  as TRL and verl do; the `temperature` column of the advantages table, written by segment from the rollouts
  manifest); T = 0 (greedy) scores at T = 1.
- log π_old is recomputed once, at the start of a run, by this run's own model, device, dtype and autocast,
  over the very micro-batches of the first pass (`recompute_behaviour`, as verl's actor does before its
  update), so the first optimizer step has ratio exactly 1 and clip fraction 0 in every dtype and on any
  number of ranks; it is saved with the state for exact resume. The first step's own rollouts are not in
  that pass: before any update π_old is the policy being trained, so their log π_old is the first step's
  training forward, detached (as TRL does with num_iterations = 1). A round of one optimizer step (on-policy)
  therefore makes no extra pass at all, and a round of S steps passes over (S - 1) / S of its rollouts. `recompute_logprobs = False` uses the
  table's `behaviour_logprobs` instead (the sampler's own, at T: exact only up to engine numerics).
- one policy trains continuously across rounds: `continue_from` (a previous train run's directory) carries
  AdamW's moments and step counter and the global step, and the lr schedule is a function of the global step
  over `schedule_steps`, so warm-up happens once per experiment, not once per round.
- the model trains in train() mode; Llama/Qwen2 configs have no dropout (nor LoRA: lora_dropout is 0), so an
  on-policy ratio is exactly 1.
  The torch seed of each step derives from (seed, step, rank), so dropout, if any, resumes exactly.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from thinkrl.artifacts import (
    ADVANTAGES,
    MANIFEST,
    TRAIN_METRICS,
    ArtifactWriter,
    replace_dir,
    sha256_json,
    to_frame,
    validate_frame,
)
from thinkrl.distributed import Dist, default_device, init_distributed  # noqa: F401  (the trainer's API too)
from thinkrl.errors import ThinkrlError
from thinkrl.logprobs import (  # noqa: F401  (token_logprobs, plan_micro_batches: the trainer's API too)
    DEFAULT_CHUNK,
    autocast,
    completion_logprobs,
    completion_scores,
    device_of,
    plan_micro_batches,
    scoring_temperature,
    token_logprobs,
    unwrap,
)
from thinkrl.lora import adapters_disabled, apply_lora, has_lora, merged_state_dict
from thinkrl.loss import BatchCounts, LossConfig, policy_loss
from thinkrl.models import load_policy, make_portable, n_params
from thinkrl.strategies import STRATEGIES, Strategy, any_state
from thinkrl.training import SCHEDULES, TrainConfig

log = logging.getLogger(__name__)

STATE_FILE = "trainer.pt"


# --------------------------------------------------------------------------------------------- config
PEAK_FLOPS = {"float32": 196e9, "bfloat16": 425e9, "bfloat16-pure": 425e9, "float64": 196e9}  # 2-thread dev CPU


def training_dtype(name: str) -> str:
    """'auto' -> bfloat16 on a CUDA device with bf16, else float32."""
    if name != "auto":
        return name
    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"


class NothingToTrain(ThinkrlError):
    """The advantages table holds no rollout with a nonzero advantage (a round with nothing to learn)."""


def validated(advantages_df: pl.DataFrame) -> pl.DataFrame:
    """The frame cast to the advantages schema; a one-line ThinkrlError for a missing or mistyped column."""
    if advantages_df.height == 0:
        raise NothingToTrain("no rollouts to train on: every advantage of the round is zero (each group was "
                           "all correct or all wrong, or the segment stage dropped them); nothing to learn")
    return validate_frame(to_frame(advantages_df, ADVANTAGES), ADVANTAGES, "advantages table")


def train_inputs(cfg: TrainConfig, policy: Path, thoughts: Path) -> dict:
    """Inputs of the train stage's skip key: the policy, the thoughts artifact and, with the KL term on, the
    reference policy (`thinkrl train` and `thinkrl run` alike)."""
    ref = {"ref_policy": Path(cfg.ref_policy)} if cfg.beta > 0 and cfg.ref_policy else {}
    prev = {"continue_from": continued_state(cfg)} if cfg.continue_from else {}
    return {"policy": policy, "thoughts": thoughts, **ref, **prev}


def continued_state(cfg: TrainConfig) -> Path:
    """The state directory of `cfg.continue_from` (a train run's directory, or its state/ itself)."""
    d = Path(cfg.continue_from)
    found = find_state(d) or (d if (d / STATE_FILE).is_file() else None)
    if found is None:
        raise ThinkrlError(f"continue_from {d}: no trainer state there (expected {d}/state/{STATE_FILE} "
                           "written by a finished `thinkrl train`)")
    return found


def resolve_config(cfg: TrainConfig, advantages_df: pl.DataFrame) -> TrainConfig:
    """Fill the data- and machine-dependent defaults: norm_len (the generation budget recorded in the data),
    dtype, flops_peak (idempotent)."""
    norm_len = cfg.norm_len
    if norm_len is None:
        norm_len = max(int(validated(advantages_df)["max_tokens"].max() or 1), 1)
    dtype = training_dtype(cfg.dtype)
    return replace(cfg, norm_len=norm_len, dtype=dtype, flops_peak=cfg.flops_peak or PEAK_FLOPS[dtype])


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak lr at 0-based step `step` of a run of `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    return SCHEDULES[schedule]((step - warmup) / max(1, total - warmup))


# --------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Rollout:
    rollout_id: str
    problem_id: str
    prompt_ids: list[int]
    completion_ids: list[int]
    advantages: np.ndarray          # (C,) float32, aligned with completion_ids
    behaviour_logprobs: np.ndarray  # (C,) float32, log π_old at the sampling temperature
    temperature: float = 1.0        # scoring temperature (the sampling one; 0 -> 1)
    correct: bool = False           # outcome r == 1      (this and the two below: step figures only)
    truncated: bool = False         # cut off at max_tokens (finish_reason `length`)
    incorrect_tokens: int = 0       # completion tokens inside `incorrect` thoughts

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


def _rollout(row: dict, need_logprobs: bool) -> Rollout:
    rid = row["rollout_id"]
    adv = np.asarray(row["advantages"], dtype=np.float32)
    n = len(row["completion_ids"])
    if row["behaviour_logprobs"] is None:
        if need_logprobs:
            raise ThinkrlError(f"advantages table, rollout {rid}: no behaviour_logprobs (the sampler's log-probs "
                               "are not at the sampling temperature, e.g. vLLM's at T != 1): recompute them "
                               "(drop --no-recompute / recompute_logprobs = false)")
        row = {**row, "behaviour_logprobs": [0.0] * n}  # placeholder: recompute_behaviour fills it
    old = np.asarray(row["behaviour_logprobs"], dtype=np.float32)
    if len(adv) != n or len(old) != n:
        raise ThinkrlError(f"advantages table, rollout {rid}: {n} completion_ids but {len(adv)} advantages "
                           f"and {len(old)} behaviour_logprobs (expected one per completion token)")
    if not row["prompt_ids"]:
        raise ThinkrlError(f"advantages table, rollout {rid}: empty prompt_ids "
                           "(need >= 1 token to score the completion)")
    return Rollout(rid, row["problem_id"], list(row["prompt_ids"]), list(row["completion_ids"]), adv, old,
                   scoring_temperature(row["temperature"]), bool(row["correct"]), row["finish_reason"] == "length",
                   int(row["incorrect_tokens"]))


def prepare_groups(advantages_df: pl.DataFrame, need_logprobs: bool = True) -> tuple[list[list[Rollout]], int]:
    """Validated rollouts grouped by problem_id (groups sorted by problem_id, rollouts by rollout_id: the
    order never depends on row order), and the number of rollouts dropped for all-zero advantages.
    need_logprobs: the table's behaviour_logprobs are log π_old (no recompute), so none may be missing."""
    df = validated(advantages_df)
    dup = df["rollout_id"].is_duplicated()
    if dup.any():
        first = df["rollout_id"].filter(dup)[0]
        raise ThinkrlError(f"advantages table: rollout_id {first!r} appears more than once")
    cols = ["rollout_id", "problem_id", "prompt_ids", "completion_ids", "advantages", "behaviour_logprobs",
            "temperature", "correct", "finish_reason", "incorrect_tokens"]
    groups: dict[str, list[Rollout]] = {}
    dropped = 0
    for row in df.select(cols).sort("rollout_id").iter_rows(named=True):
        r = _rollout(row, need_logprobs)
        if np.all(r.advantages == 0):  # NaN is not zero: such a rollout is kept, and its step skipped
            dropped += 1
            continue
        groups.setdefault(r.problem_id, []).append(r)
    if not groups:
        raise NothingToTrain(f"advantages table: all {df.height} rollouts have all-zero advantages; "
                             "nothing to train on")
    return [groups[k] for k in sorted(groups)], dropped


def data_sha256(groups: Sequence[Sequence[Rollout]]) -> str:
    h = hashlib.sha256()
    for g in groups:
        for r in g:
            h.update(r.rollout_id.encode() + b"\0")
            for a in (np.asarray(r.prompt_ids, np.int64), np.asarray(r.completion_ids, np.int64),
                      r.advantages, r.behaviour_logprobs, np.asarray([r.temperature])):
                h.update(a.tobytes() + b"\0")
    return h.hexdigest()


def pass_permutation(seed: int, pass_idx: int, n_groups: int) -> np.ndarray:
    """Group order of pass `pass_idx`: from (seed, pass) alone, not from a consumed RNG."""
    return np.random.default_rng([seed, pass_idx]).permutation(n_groups)


def step_rollouts(groups: Sequence[Sequence[Rollout]], step: int, per_step: int, seed: int) -> list[Rollout]:
    """All rollouts of the groups of 0-based optimizer step `step`."""
    steps_per_pass = math.ceil(len(groups) / per_step)
    perm = pass_permutation(seed, step // steps_per_pass, len(groups))
    j = step % steps_per_pass
    return [r for gi in perm[j * per_step:(j + 1) * per_step] for r in groups[gi]]


def autocast_dtype(cfg: TrainConfig) -> torch.dtype | None:
    """The autocast dtype of a resolved config: bf16 autocast over fp32 weights for `bfloat16`, else none."""
    return torch.bfloat16 if training_dtype(cfg.dtype) == "bfloat16" else None


# --------------------------------------------------------------------------------------------- one step
def _pad(arrays: Sequence[np.ndarray], T: int, like: torch.Tensor) -> torch.Tensor:
    out = torch.zeros((len(arrays), T), dtype=like.dtype)       # (n, T)
    for i, a in enumerate(arrays):
        out[i, :len(a)] = torch.from_numpy(np.asarray(a)).to(like.dtype)
    return out.to(like.device)


@torch.no_grad()
def recompute_behaviour(run: _Run, first_step_in_forward: bool = True) -> None:
    """log π_old of every rollout, by this run's model before its first update, over exactly the micro-batches
    the first pass will train them in (each rank its own share; then shared by all ranks). Kept in the
    forward's dtype (float32, or float64 for float64 runs). With first_step_in_forward the rollouts of step 0
    are left out and marked pending: `optimizer_step` takes theirs from its forward (detached), the same
    weights before any update."""
    cfg, dist = run.cfg, run.dist
    steps_per_pass = math.ceil(len(run.groups) / cfg.prompts_per_step)
    mine: dict[str, np.ndarray] = {}
    if first_step_in_forward:
        run.pending = frozenset(r.rollout_id for r in step_rollouts(run.groups, 0, cfg.prompts_per_step, cfg.seed))
    mbs = []
    for step in range(1 if first_step_in_forward else 0, steps_per_pass):
        rollouts = step_rollouts(run.groups, step, cfg.prompts_per_step, cfg.seed)[dist.rank::dist.world]
        run.pass_tokens += sum(r.length for r in rollouts)
        mbs += plan_micro_batches(rollouts, cfg.micro_batch_tokens)
    idle = dist.all_max(len(mbs)) - len(mbs) if run.strategy.lockstep else 0  # FSDP: keep step with the others
    for mb in mbs:
        with autocast(dist.device, run.autocast_dtype):
            logp, _ = completion_logprobs(run.model, [r.prompt_ids for r in mb], [r.completion_ids for r in mb],
                                          [r.temperature for r in mb], chunk=cfg.logprob_chunk)  # (n, T)
        for j, r in enumerate(mb):
            mine[r.rollout_id] = logp[j, :len(r.completion_ids)].cpu().numpy()
    for _ in range(idle):
        _idle_forward(run.model)
    set_behaviour(run, dist.all_gather_dict(mine))


def set_behaviour(run: _Run, logprobs: dict[str, np.ndarray]) -> None:
    """Use `logprobs` (rollout_id -> log π_old) for the run's rollouts it names; those are no longer pending."""
    run.groups = [[replace(r, behaviour_logprobs=logprobs[r.rollout_id]) if r.rollout_id in logprobs else r
                   for r in g] for g in run.groups]
    run.pending = run.pending - logprobs.keys()
    run.recomputed = True


def recomputed_logprobs(run: _Run) -> dict[str, np.ndarray]:
    """rollout_id -> the log π_old this run recomputed ({} when it uses the table's)."""
    return {r.rollout_id: r.behaviour_logprobs for g in run.groups for r in g} if run.recomputed else {}


def micro_batch_loss(model, mb: Sequence[Rollout], counts: BatchCounts, loss_cfg: LossConfig,
                     ref_model=None, autocast_dtype: torch.dtype | None = None, chunk: int = DEFAULT_CHUNK,
                     old_from_forward: bool = False):
    """(loss share, stats) of one micro-batch (see thinkrl.loss). old_from_forward: log π_old is this forward's
    own log-probs, detached (the weights have not moved since the rollouts were sampled for this run), and
    stats["logp"] holds them."""
    device = device_of(model)
    prompts, comps = [r.prompt_ids for r in mb], [r.completion_ids for r in mb]
    temps = [r.temperature for r in mb]
    with autocast(device, autocast_dtype):
        scores = completion_scores(model, prompts, comps, temps, chunk=chunk, entropy=True)
    logp, mask = scores.logp, scores.mask                                       # (n, T)
    old = logp.detach() if old_from_forward else _pad([r.behaviour_logprobs for r in mb], logp.shape[1], logp)
    adv = _pad([r.advantages for r in mb], logp.shape[1], logp)                 # (n, T)
    ref = None
    if loss_cfg.beta > 0:
        ref = reference_logprobs(ref_model, prompts, comps, temps, autocast_dtype, chunk).to(logp.dtype)
    loss, stats = policy_loss(logp, old, adv, mask, counts, loss_cfg, ref_logp=ref)
    stats = {**stats, "entropy_sum": (scores.entropy * mask).sum()}
    return loss, {**stats, "logp": old} if old_from_forward else stats


@torch.no_grad()
def reference_logprobs(ref_model, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                       temperatures: Sequence[float], autocast_dtype: torch.dtype | None = None,
                       chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """log π_ref of the completions, (n, T). A LoRA policy is its own reference: its adapters are disabled for
    this forward (thinkrl.lora), so the reference is the base policy without a second copy of it."""
    with autocast(device_of(ref_model), autocast_dtype), adapters_disabled(ref_model):
        return completion_logprobs(ref_model, prompts, completions, temperatures, chunk=chunk)[0]


SUMS = ("loss", "kl_sum", "clipped_tokens", "tokens", "processed_tokens", "ratio_sum", "entropy_sum")


def _idle_forward(model):
    """A two-token forward: what a rank with no rollouts runs to take part in the others' collectives."""
    ids = torch.zeros((1, 2), dtype=torch.long, device=device_of(model))
    return model(input_ids=ids).logits


def _idle_backward(model, ref_model=None) -> None:
    """A micro-batch with zero loss: a rank with fewer rollouts than the others still joins their gradient
    all-reduce (DDP) or every forward's all-gather and backward's reduce-scatter (FSDP), with zero gradients."""
    out = _idle_forward(model)
    if ref_model is not None:  # in micro_batch_loss's order: policy forward, reference forward, backward
        with torch.no_grad():
            _idle_forward(ref_model)
    (out.sum() * 0.0).backward()


def accumulate_gradients(model, micro_batches: Sequence[Sequence[Rollout]], counts: BatchCounts,
                         loss_cfg: LossConfig, ref_model=None, loss_scale: float = 1.0,
                         autocast_dtype: torch.dtype | None = None, chunk: int = DEFAULT_CHUNK,
                         record_old: dict[str, np.ndarray] | None = None, strategy: Strategy = STRATEGIES["ddp"],
                         lockstep: int = 0) -> dict[str, float]:
    """Forward/backward each micro-batch of this rank's share of one optimizer step; gradients add up in
    .grad (DDP syncs on the last one only; FSDP reduce-scatters each). loss_scale = world size undoes the
    ranks' gradient average. lockstep: run idle micro-batches after this rank's own until there are this many
    (FSDP: every forward is a collective). Returns this rank's sums: loss, kl_sum, clipped_tokens, tokens,
    processed_tokens, ratio_sum, entropy_sum. record_old (a dict): log π_old is each forward's own, detached, and
    is put there per rollout."""
    sums = dict.fromkeys(SUMS, 0.0)
    idle = max(lockstep - len(micro_batches), 0)
    if not micro_batches and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        idle = 1  # DDP's one all-reduce
    for _ in range(idle):
        _idle_backward(model, ref_model if strategy.lockstep else None)
    for k, mb in enumerate(micro_batches):
        with strategy.no_sync(model, last=k == len(micro_batches) - 1):
            loss, stats = micro_batch_loss(model, mb, counts, loss_cfg, ref_model, autocast_dtype, chunk,
                                           old_from_forward=record_old is not None)
            (loss * loss_scale).backward()
        if record_old is not None:
            logp = stats["logp"].cpu().numpy()  # the forward's dtype, as recompute_behaviour keeps it
            for j, r in enumerate(mb):
                record_old[r.rollout_id] = logp[j, :len(r.completion_ids)]
        sums["loss"] += float(loss.detach())
        sums["kl_sum"] += float(stats["kl_sum"])
        sums["clipped_tokens"] += float(stats["clipped_tokens"])
        sums["ratio_sum"] += float(stats["ratio_sum"])
        sums["entropy_sum"] += float(stats["entropy_sum"])
        sums["tokens"] += float(stats["tokens"])
        sums["processed_tokens"] += float(sum(r.length for r in mb))
    return sums


def step_counts(micro_batches: Sequence[Sequence[Rollout]], norm_len: int, dist: Dist) -> BatchCounts:
    """BatchCounts of the whole optimizer step: this rank's sizes summed over all ranks."""
    seqs = sum(len(mb) for mb in micro_batches)
    toks = sum(len(r.completion_ids) for mb in micro_batches for r in mb)
    s, t, m = dist.all_sum([seqs, toks, len(micro_batches)])
    return BatchCounts(sequences=int(s), tokens=max(int(t), 1), micro_batches=int(m), world_size=dist.world,
                       norm_len=norm_len)


# --------------------------------------------------------------------------------------------- checkpoints
def _rng_state() -> dict[str, Any]:
    """RNG states as tensors/lists so that torch.load(weights_only=True) reads them."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
            "python": {"version": py_state[0], "state": list(py_state[1]), "gauss_next": py_state[2]}}


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = s["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def find_state(out_dir: Path) -> Path | None:
    """The state directory to resume from (the `.state.old` of a save interrupted between renames)."""
    for d in (out_dir / "state", out_dir / ".state.old"):
        if (d / STATE_FILE).is_file() and any_state(d):
            return d
    return None


def export_policy(model, tokenizer, policy_dir: Path, dest: Path, dist: Dist | None = None,
                  strategy: Strategy = STRATEGIES["ddp"]) -> None:
    """HF checkpoint (safetensors) + tokenizer + the input policy's thinkrl.json, written tmp + rename by rank 0.
    Every rank calls it (FSDP gathers the full weights from all of them)."""
    dist = dist or Dist()
    state = strategy.full_state_dict(model, dist)
    if dist.rank != 0:
        return
    tmp = Path(tempfile.mkdtemp(prefix=".policy.tmp-", dir=dest.parent))
    inner = unwrap(model)
    config = inner.config
    use_cache, config.use_cache = config.use_cache, True  # gradient checkpointing turned it off for training
    try:
        with _quiet_hf():
            inner.save_pretrained(tmp, state_dict=merged_state_dict(inner) if has_lora(inner) else state)
        if hf_class(inner) is not type(inner):  # FSDP2's subclass (FSDPLlamaForCausalLM) is no transformers class
            config.architectures = [hf_class(inner).__name__]
            config.to_json_file(tmp / "config.json")
    finally:
        config.use_cache = use_cache
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    make_portable(tmp)
    if (policy_dir / "thinkrl.json").is_file():
        shutil.copy2(policy_dir / "thinkrl.json", tmp / "thinkrl.json")
    replace_dir(tmp, dest)


def hf_class(model: torch.nn.Module) -> type:
    """The transformers class of a model, under FSDP2's dynamic subclass if it has one."""
    from torch.distributed.fsdp import FSDPModule

    cls = type(model)
    return next(c for c in cls.__mro__ if not issubclass(c, FSDPModule)) if issubclass(cls, FSDPModule) else cls


def save_state(run: _Run, step: int) -> None:
    """Weights, optimizer, RNG, local and global step and metric rows to out_dir/state (tmp + rename). Every rank
    calls it: the strategy writes the weights and optimizer (rank 0's, or each rank's shards), rank 0 the rest."""
    dist = run.dist
    tmp = Path(dist.broadcast(tempfile.mkdtemp(prefix=".state.tmp-", dir=run.out_dir) if dist.rank == 0 else None))
    extra = run.strategy.save(run.wrapped, run.optimizer, tmp, dist)
    dist.barrier()
    if dist.rank == 0:
        behaviour = {k: torch.from_numpy(v) for k, v in recomputed_logprobs(run).items()}
        torch.save({"step": step, "global_step": run.step_offset + step, "key": run.key,
                    "schedule_steps_set": run.cfg.schedule_steps, "lora_r": run.cfg.lora_r, **extra,
                    "rng": _rng_state(), "rows": run.rows, "nonfinite_in_row": run.nonfinite_in_row,
                    "behaviour": behaviour},
                   tmp / STATE_FILE)
        replace_dir(tmp, run.out_dir / "state")
    dist.barrier()


def checkpoint(run: _Run, step: int) -> None:
    """Policy first, then state: the state's step is the commit point (its weights travel with it). Every rank
    calls it."""
    export_policy(run.wrapped, run.tokenizer, run.policy_dir, run.out_dir / "policy", run.dist, run.strategy)
    save_state(run, step)


def _read_state(d: Path, what: str) -> dict:
    """The trainer state in d (torch.load, weights only), or a one-line ThinkrlError when it is damaged."""
    try:
        s = torch.load(d / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several kinds for a damaged archive
        raise ThinkrlError(f"{d / STATE_FILE}: {what} is damaged ({type(e).__name__}: "
                           f"{(str(e).splitlines() or [''])[0][:120]}); remove it (or rerun with --force)") from None
    if not isinstance(s, dict) or "step" not in s:
        raise ThinkrlError(f"{d / STATE_FILE}: {what} is not a thinkrl trainer state")
    return s


def load_state(run: _Run) -> int:
    """Restore a matching state; returns the step to continue from (0 when starting fresh)."""
    d = find_state(run.out_dir)
    if d is None:
        return 0
    s = _read_state(d, "the interrupted run's state")
    if s.get("key") != run.key:
        log.warning("%s: state of another config, data or policy; starting fresh", d)
        return 0
    run.strategy.load(run.wrapped, run.optimizer, d, s, run.dist)
    _set_rng_state(s["rng"])
    if s.get("behaviour"):  # the log π_old computed before the run's first update
        set_behaviour(run, {k: v.numpy() for k, v in s["behaviour"].items()})
    run.rows, run.nonfinite_in_row = list(s["rows"]), int(s["nonfinite_in_row"])
    log.info("%s: resuming after step %d", d, s["step"])
    return int(s["step"])


# --------------------------------------------------------------------------------------------- the run
@dataclass
class _Run:
    cfg: TrainConfig
    policy_dir: Path
    out_dir: Path
    dist: Dist
    model: torch.nn.Module          # the model inside a DDP wrapper (FSDP: the sharded model itself)
    wrapped: torch.nn.Module        # DDP wrapper or the model itself (forward/backward, saving)
    tokenizer: Any
    ref_model: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    groups: list[list[Rollout]]
    dropped: int
    total_steps: int                # this run's optimizer steps (all K passes)
    step_offset: int                # global steps done before this run (continue_from)
    schedule_steps: int             # length of the lr schedule in global steps
    round: int                      # the training round of the data (the rollouts' round)
    key: str
    n_params: int
    rows: list[dict] = field(default_factory=list)
    nonfinite_in_row: int = 0
    recomputed: bool = False                         # log π_old in groups recomputed (False: the table's)
    pending: frozenset[str] = frozenset()            # rollouts whose log π_old step 0's forward gives
    pass_tokens: int = 0                             # tokens (prompt + completion) of the separate log π_old pass

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return autocast_dtype(self.cfg)

    @property
    def strategy(self) -> Strategy:
        return STRATEGIES[self.cfg.strategy]

    def lr(self, step: int) -> float:
        """The lr of this run's 0-based step `step`: the schedule at the global step."""
        c = self.cfg
        return c.lr * lr_factor(self.step_offset + step, self.schedule_steps, c.warmup_steps, c.schedule)


@contextmanager
def _quiet_hf():
    """No transformers progress bars (they would tear the stage's rich bar); restores the setting."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _load_model(path: Path, cfg: TrainConfig, device: torch.device):
    """The policy in the run's weight dtype (fp32 master weights unless float64 or bfloat16-pure), with
    gradient checkpointing when asked for."""
    with _quiet_hf():
        model, tok = load_policy(path, dtype="float32")
    weights = {"float64": torch.float64, "bfloat16-pure": torch.bfloat16}.get(cfg.dtype)
    if weights is not None:
        model = model.to(weights)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model.to(device), tok


def _stat_fingerprint(d: Path) -> list:
    files = (f for f in d.rglob("*") if f.is_file())
    return sorted([str(f.relative_to(d)), f.stat().st_size, f.stat().st_mtime_ns] for f in files)


def _run_key(cfg: TrainConfig, data_hash: str, policy_dir: Path, prev_state: Path | None) -> str:
    """Identity of a run for resuming: everything that changes the trajectory (not max_steps, save_every,
    flops_peak), the data, the policy directory and the continued state (paths, file sizes and mtimes)."""
    c = {k: v for k, v in cfg.to_dict().items() if k not in ("max_steps", "save_every", "flops_peak")}
    policy = [str(policy_dir.resolve()), _stat_fingerprint(policy_dir)]
    prev = None if prev_state is None else [str(prev_state.resolve()), _stat_fingerprint(prev_state)]
    return sha256_json({"config": c, "data": data_hash, "policy": policy, "continue_from": prev,
                        "metrics": TRAIN_METRICS.version})  # a state's rows are of this metrics schema


def _continue(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              cfg: TrainConfig) -> tuple[int, int | None, Path | None]:
    """Load the optimizer state of `cfg.continue_from` into `optimizer`; returns (its global step, the
    schedule_steps it was given, its dir)."""
    if not cfg.continue_from:
        return 0, None, None
    d = continued_state(cfg)
    s = _read_state(d, "the --continue-from state")
    if s.get("lora_r") and not cfg.lora_r:
        raise ThinkrlError(f"continue_from {d}: a LoRA run (lora_r {s['lora_r']}) has AdamW moments of its adapters "
                           "only; a full fine-tune cannot continue them (keep lora_r > 0, or drop continue_from)")
    if not cfg.lora_r:  # LoRA: fresh adapters on the merged policy, no moments to carry (module doc)
        STRATEGIES[cfg.strategy].load_optimizer(model, optimizer, d, s)
    return int(s.get("global_step", s["step"])), s.get("schedule_steps_set"), d


def setup(policy_dir: Path, advantages_df: pl.DataFrame, cfg: TrainConfig, out_dir: Path, dist: Dist) -> _Run:
    """Data, model (LoRA adapters when lora_r > 0, DDP-wrapped under torchrun), reference model (β > 0 only; a
    LoRA policy's own base when the reference is the input policy), AdamW over the trainable parameters and the lr
    schedule. The schedule spans all K passes (not max_steps), so a run cut into pieces follows the same lr curve."""
    groups, dropped = prepare_groups(advantages_df, need_logprobs=not cfg.recompute_logprobs)
    strategy = STRATEGIES[cfg.strategy]
    load_on = strategy.load_device(dist)  # FSDP: the CPU; fully_shard moves each rank's shards to its device
    model, tok = _load_model(policy_dir, cfg, load_on)
    if cfg.lora_r:
        model = apply_lora(model, cfg)
    model.train()
    params = n_params(model)  # before sharding
    wrapped = strategy.wrap(model, dist, cfg, True)  # before the reference loads: one whole model at a time
    ref = None
    ref_dir = Path(cfg.ref_policy or policy_dir)
    if cfg.beta > 0 and cfg.lora_r and ref_dir.resolve() == policy_dir.resolve():
        ref = model  # the base policy with the adapters disabled (reference_logprobs)
    elif cfg.beta > 0:
        ref, _ = _load_model(ref_dir, cfg, load_on)
        ref = strategy.wrap(ref.eval().requires_grad_(False), dist, cfg, False)
    # fused: one kernel over all tensors (7x the per-tensor loop at SmolLM2-135M's shapes on this CPU, `just bench
    # optimizer`; the same update to float rounding, about 1 ulp)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, betas=tuple(cfg.betas),
                            weight_decay=cfg.weight_decay, fused=True)
    offset, prev_horizon, prev = _continue(wrapped, opt, cfg)
    for group in opt.param_groups:  # this run's settings, not the continued run's (nor its implementation)
        group.update(betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, initial_lr=cfg.lr, fused=True,
                     foreach=None)
    total = cfg.epochs * math.ceil(len(groups) / cfg.prompts_per_step)
    horizon = cfg.schedule_steps or prev_horizon or offset + total  # a continued run keeps a horizon it was given
    round_ = int(validated(advantages_df)["round"].max())
    return _Run(cfg, policy_dir, out_dir, dist, model, wrapped, tok, ref, opt, groups, dropped, total, offset,
                horizon, round_, _run_key(cfg, data_sha256(groups), policy_dir, prev), params)


def _step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def optimizer_step(run: _Run, step: int) -> dict[str, Any]:
    """One optimizer step (0-based `step`) on this rank's share of the step's rollouts; returns its row."""
    cfg, dist = run.cfg, run.dist
    torch.manual_seed(_step_seed(cfg.seed, step, dist.rank))
    t0 = time.perf_counter()
    step_all = step_rollouts(run.groups, step, cfg.prompts_per_step, cfg.seed)  # every rank knows the whole step
    rollouts = step_all[dist.rank::dist.world]
    mbs = plan_micro_batches(rollouts, cfg.micro_batch_tokens)
    counts = step_counts(mbs, cfg.norm_len, dist)
    lockstep = dist.all_max(len(mbs)) if run.strategy.lockstep else 0
    first = {} if run.pending else None  # log π_old of this step's rollouts from its own forward
    local = accumulate_gradients(run.wrapped, mbs, counts, cfg.loss_config(), run.ref_model,
                                 loss_scale=dist.world, autocast_dtype=run.autocast_dtype,
                                 chunk=cfg.logprob_chunk, record_old=first, strategy=run.strategy,
                                 lockstep=lockstep)
    if first is not None:
        set_behaviour(run, dist.all_gather_dict(first))
    loss, kl_sum, clipped, tokens, processed, ratio_sum, entropy_sum = dist.all_sum([local[k] for k in SUMS])
    params = [p for p in run.model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a DTensor over the shards
    grad_norm, lr = float(norm), run.lr(step)
    skipped = not (math.isfinite(loss) and math.isfinite(grad_norm))
    if not skipped:
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    if dist.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    mfu = 6 * run.n_params * processed / seconds / (cfg.flops_peak * dist.world)
    return {"step": run.step_offset + step + 1, "round": run.round, "loss": loss, "kl": kl_sum / max(tokens, 1),
            "clip_frac": clipped / max(tokens, 1), "ratio_mean": ratio_sum / max(tokens, 1),
            "grad_norm": grad_norm, "lr": lr, "tokens": int(tokens),
            "dropped_rollouts": run.dropped, "skipped": skipped, "seconds": seconds, "mfu": mfu,
            **step_figures(step_all), "entropy": entropy_sum / max(tokens, 1), "tokens_per_s": processed / seconds}


def step_figures(rollouts: Sequence[Rollout]) -> dict[str, float]:
    """The per-step figures that come from the step's data alone (columns of train_metrics): outcome reward,
    accuracy, lengths, truncation, per-token advantage statistics, incorrect-thought share. `rollouts` are the
    whole step's (all ranks), whole groups."""
    r = np.array([x.correct for x in rollouts], dtype=np.float64)                       # (R,)
    lengths = np.array([len(x.completion_ids) for x in rollouts], dtype=np.int64)      # (R,)
    adv = np.concatenate([x.advantages.astype(np.float64) for x in rollouts])          # (sum of C,)
    groups: dict[str, list[float]] = {}
    for x, ri in zip(rollouts, r, strict=True):
        groups.setdefault(x.problem_id, []).append(ri)
    tokens = max(int(lengths.sum()), 1)
    return {"reward_mean": float(r.mean()), "reward_std": float(np.mean([np.std(g) for g in groups.values()])),
            "accuracy": float(r.mean()), "response_len_mean": float(lengths.mean()),
            "response_len_max": int(lengths.max()),
            "truncation_rate": float(np.mean([x.truncated for x in rollouts])),
            "adv_mean": float(adv.mean()) if adv.size else 0.0, "adv_std": float(adv.std()) if adv.size else 0.0,
            "adv_min": float(adv.min()) if adv.size else 0.0, "adv_max": float(adv.max()) if adv.size else 0.0,
            "incorrect_thought_share": sum(x.incorrect_tokens for x in rollouts) / tokens}


def _count_nonfinite(run: _Run, row: dict) -> None:
    if not row["skipped"]:
        run.nonfinite_in_row = 0
        return
    run.nonfinite_in_row += 1
    log.warning("step %d skipped: non-finite loss %s or gradient norm %s (%d in a row)",
                row["step"], row["loss"], row["grad_norm"], run.nonfinite_in_row)


def _check_nonfinite(run: _Run, row: dict) -> None:
    if run.nonfinite_in_row >= run.cfg.max_nonfinite_in_row:
        raise ThinkrlError(
            f"training stopped at step {row['step']}: {run.nonfinite_in_row} optimizer steps in a row had a "
            f"non-finite loss ({row['loss']}) or gradient norm ({row['grad_norm']}); check the advantages "
            f"and behaviour_logprobs for NaN/inf, or lower the learning rate (now {run.cfg.lr})")


def summary(run: _Run) -> dict[str, Any]:
    rows = run.rows
    done = [r for r in rows if not r["skipped"]]
    secs = sum(r["seconds"] for r in rows)
    return {"steps": len(rows), "total_steps": run.total_steps, "skipped_steps": len(rows) - len(done),
            "global_step": run.step_offset + len(rows), "round": run.round,
            "dropped_rollouts": run.dropped, "rollouts": sum(len(g) for g in run.groups),
            "groups": len(run.groups),
            "final_loss": done[-1]["loss"] if done else float("nan"),
            "mean_loss": float(np.mean([r["loss"] for r in done])) if done else float("nan"),
            "tokens": int(sum(r["tokens"] for r in rows)), "seconds": secs,
            "seconds_per_step": secs / max(len(rows), 1),
            "mfu": float(np.mean([r["mfu"] for r in rows])) if rows else 0.0,
            "n_params": run.n_params,
            "trainable_params": sum(p.numel() for p in run.model.parameters() if p.requires_grad),
            "norm_len": run.cfg.norm_len, "world_size": run.dist.world,
            "behaviour_logprobs": "recomputed" if run.recomputed else "table",
            "behaviour_pass_tokens": run.pass_tokens,   # this rank's (0 on a resume: the state held them)
            "policy": str(run.out_dir / "policy")}


def _loop(run: _Run, start: int, stop: int, progress, on_row) -> None:
    main = run.dist.rank == 0
    for step in range(start, stop):
        row = optimizer_step(run, step)
        run.rows.append(row)
        if main and on_row is not None:  # as soon as the row exists (a resume hands on the rows it restores)
            on_row(row)
        _count_nonfinite(run, row)
        done = step + 1
        if run.cfg.save_every and done % run.cfg.save_every == 0 and done < stop:
            checkpoint(run, done)
        if main and progress is not None:
            progress(row, done, stop)
        _check_nonfinite(run, row)


def _clean_leftovers(out_dir: Path) -> None:
    for p in list(out_dir.glob(".policy.tmp-*")) + list(out_dir.glob(".state.tmp-*")):
        shutil.rmtree(p, ignore_errors=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # policy/ is about to change: the old artifact is void


def train(policy_dir: str | Path, advantages_df: pl.DataFrame, cfg: TrainConfig, out_dir: str | Path,
          resume: bool = True, progress: Callable[[dict, int, int], None] | None = None,
          writer: ArtifactWriter | None = None, on_row: Callable[[dict], None] | None = None,
          notes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `policy_dir` on one round's advantages table; write policy/, state/ and the train_metrics
    artifact in out_dir; return summary metrics. `resume` continues from out_dir/state when it belongs to
    the same config, data and policy. `progress(row, steps_done, steps_total)` runs on rank 0 after each
    step. `writer` (the stage's, for its skip key) defaults to one over the config and the policy.
    `on_row(row)` (rank 0) gets every train_metrics row of the run in step order: those a resume restored,
    then each new one as soon as it exists (the tracker's feed). `notes` go into the manifest's metrics as
    they are."""
    policy_dir, out_dir = Path(policy_dir), Path(out_dir)
    cfg = resolve_config(cfg, advantages_df)
    dist = init_distributed()
    try:
        run = setup(policy_dir, advantages_df, cfg, out_dir, dist)
        if dist.rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            _clean_leftovers(out_dir)
        dist.barrier()
        start = load_state(run) if resume else 0
        stop = run.total_steps if cfg.max_steps is None else min(cfg.max_steps, run.total_steps)
        if cfg.recompute_logprobs and not run.recomputed:
            if start:  # cannot happen for states this code wrote: the weights have moved on
                raise ThinkrlError(f"{out_dir}/state: resumed after step {start} without the run's log pi_old")
            recompute_behaviour(run, first_step_in_forward=stop > 0)
        run.rows = run.rows[:start]
        if dist.rank == 0 and on_row is not None:
            for row in run.rows:
                on_row(row)
        _loop(run, start, max(start, stop), progress, on_row)
        metrics = {**summary(run), **(notes or {})}
        checkpoint(run, max(start, stop))
        if dist.rank == 0:
            _write_metrics(run, metrics, writer)
        dist.barrier()
        return metrics
    finally:
        dist.close()


def _write_metrics(run: _Run, metrics: dict, writer: ArtifactWriter | None) -> None:
    if writer is None:
        config = {**run.cfg.to_dict(), "policy": str(run.policy_dir), "data_sha256": data_sha256(run.groups)}
        writer = ArtifactWriter(run.out_dir, "train", config, inputs={"policy": run.policy_dir})
    writer.set_table("train_metrics", run.rows)
    writer.set_table("behaviour", [{"rollout_id": k, "logprobs": np.asarray(v, np.float32).tolist()}
                                   for k, v in sorted(recomputed_logprobs(run).items())])
    writer.finish(metrics=metrics, tables=["train_metrics", "behaviour"], allow_empty=True)
