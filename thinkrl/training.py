"""The train stage: its settings (TrainConfig), then key -> skip -> train (or carry the policy forward) ->
finish, for `thinkrl train` and `thinkrl run` alike.

    result = run_train_stage(Path("runs/tiny"), Path("runs/t"), Path("runs/tr"), TrainConfig(lr=1e-4))

The key is the resolved TrainConfig (thinkrl.trainer.resolve_config) plus the policy directory, over the
inputs of `thinkrl.trainer.train_inputs` (policy, thoughts, reference policy, continued state). A round with
nothing to learn (an empty advantages table, or one whose every advantage is zero) is an error by default;
with `carry_forward` (what `thinkrl run` asks for) the train artifact records `carried_forward: true`, its
policy/ is a copy of the input policy and its state/ a copy of the continued state, so the next round goes on
from there.

The training loop itself is thinkrl/trainer.py (torch), imported when a run starts: the settings load without it
(`thinkrl train --help`, `thinkrl run --help` and the experiment keys need no torch).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thinkrl.artifacts import MANIFEST, ArtifactWriter, StageResult, finished, read_table, replace_dir
from thinkrl.errors import ThinkrlError
from thinkrl.loss import AGGREGATIONS, ALIASES, LossConfig
from thinkrl.settings import check_settings, setting
from thinkrl.strategies import STRATEGIES

if TYPE_CHECKING:
    from thinkrl.tracking import Tracker


# --------------------------------------------------------------------------------------------- config
def _constant(p: float) -> float:
    return 1.0


def _cosine(p: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(max(p, 0.0), 1.0)))


def _linear(p: float) -> float:
    return 1.0 - min(max(p, 0.0), 1.0)


SCHEDULES: dict[str, Callable[[float], float]] = {"constant": _constant, "cosine": _cosine, "linear": _linear}
DTYPES = ("auto", "float32", "bfloat16", "bfloat16-pure", "float64")
LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def _module_names(text: str) -> str | None:
    names = [t.strip() for t in text.split(",")]
    if not all(n and n.replace("_", "").isalnum() for n in names):
        return f"must be module names separated by commas (e.g. q_proj,v_proj), got {text!r}"
    return None


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run (group size G is read from the data)."""

    prompts_per_step: int = setting(5, "problems per optimizer step (B), each with all its G rollouts", ge=1)
    epochs: int = setting(1, "passes K over the round's rollouts", ge=1, aliases=("num_iterations",))
    lr: float = setting(1e-4, "peak learning rate (paper: 1e-6 on 1.5B/7B; 1e-4 suits the tiny CPU policy; 0 "
                              "runs the pipeline with a frozen policy)", ge=0,
                      aliases=("learning_rate",))
    warmup_steps: int = setting(0, "linear warm-up steps (global steps: once per experiment, not per round)",
                                ge=0)
    schedule: str = setting("constant", f"lr schedule after warm-up: {', '.join(SCHEDULES)}",
                            aliases=("lr_scheduler_type",))
    schedule_steps: int | None = setting(None, "length of a decaying lr schedule in global optimizer steps "
                                            "(default: the one the continued run was given, else the steps "
                                            "done before this run plus this run's)", ge=1)
    continue_from: str | None = setting(None, "a previous train run's directory: continue its optimizer state, "
                                           "lr schedule and global step (thinkrl run does this every round; with "
                                           "LoRA, fresh adapters: the schedule and global step only)")
    recompute_logprobs: bool = setting(True, "recompute log pi_old with this run's model over the micro-batches of "
                                          "the first pass (ratio exactly 1 at the first step); off: the table's "
                                          "behaviour_logprobs (the sampler's)")
    weight_decay: float = setting(0.0, "AdamW weight decay", ge=0)
    betas: tuple[float, float] = setting((0.9, 0.999), "AdamW betas", ge=0, lt=1)
    grad_clip: float = setting(1.0, "clip the global gradient norm to this (0 = off)", ge=0,
                              aliases=("max_grad_norm",))
    micro_batch_tokens: int = setting(4096, "padded tokens per micro-batch (bounds memory; grads accumulate)",
                                     ge=1)
    eps_low: float = setting(0.2, "ratio clip below: 1 - eps_low", ge=0, lt=1, aliases=("epsilon",))
    eps_high: float = setting(0.2, "ratio clip above: 1 + eps_high (DAPO uses 0.28)", ge=0,
                             aliases=("epsilon_high",))
    beta: float = setting(0.0, "k3 KL coefficient to the reference policy (0 = no reference model)", ge=0)
    ref_policy: str | None = setting(None, "reference policy directory for the KL (default: the input policy)")
    aggregation: str = setting("seq-mean-token-mean", f"loss aggregation: {', '.join(AGGREGATIONS)}; also "
                                                   f"accepted: {', '.join(ALIASES)} (TRL's names; docs/PAPER.md)",
                            aliases=("loss_type",))
    norm_len: int | None = setting(None, "Dr. GRPO length constant (default: the rollouts' generation budget, "
                                      "max_tokens, recorded by segment; constant across rounds)", ge=1)
    dtype: str = setting("auto", "training precision: auto (bf16 autocast on CUDA with bf16, else float32), "
                              "float32, bfloat16 (autocast over fp32 master weights), bfloat16-pure (bf16 weights "
                              "and AdamW state: half the memory, no fp32 master), float64")
    logprob_chunk: int = setting(1024, "completion positions per chunk through the LM head: the (tokens, vocab) "
                                       "logits never exist at once (0 = whole logits; same values)", ge=0)
    gradient_checkpointing: bool = setting(False, "recompute each layer's activations in the backward (less "
                                                  "memory for long completions, about 1/3 more compute)")
    lora_r: int = setting(0, "LoRA rank: train low-rank adapters on lora_targets instead of every weight (0 = off: "
                             "full fine-tuning; needs peft, the `lora` extra); policy/ is saved merged", ge=0)
    lora_alpha: float | None = setting(None, "LoRA alpha: the update is (alpha / r) B A (default: 2 r, a scale of 2 "
                                            "at every rank)", gt=0)
    lora_targets: str = setting(LORA_TARGETS, "modules LoRA adapts, comma-separated (default: the attention and MLP "
                                              "projections of Llama/Qwen2)", check=_module_names)
    strategy: str = setting("ddp", "how torchrun's ranks hold the model: ddp (the whole model on every rank) or fsdp "
                                   "(FSDP2: weights, gradients and AdamW moments sharded over the ranks; "
                                   "docs/SCALE.md)")
    fsdp_cpu_offload: bool = setting(False, "fsdp: keep the weight shards, their gradients and the optimizer step "
                                            "on the CPU (CPUOffloadPolicy)")
    seed: int = setting(0, "seed of the batch order (per pass), of the per-step torch RNG and of the LoRA init", ge=0)
    max_nonfinite_in_row: int = setting(3, "stop after this many skipped (non-finite) steps in a row", ge=1)
    flops_peak: float | None = setting(None, "peak FLOP/s per rank for MFU (default: 196e9 fp32 / 425e9 bf16, "
                                          "the measured 2-thread matmul peak of the dev CPU)", gt=0)
    save_every: int = setting(50, "checkpoint every N optimizer steps (0 = only at the end)", ge=0,
                          aliases=("save_steps",))
    max_steps: int | None = setting(None, "stop after this global step (default: all K passes); "
                                       "a rerun with a larger value resumes", ge=0)

    def __post_init__(self):
        check_settings(self)  # the bounds declared above; the checks below are of names
        if self.aggregation in ALIASES:  # TRL's name -> ours, so the skip key is the same either way
            object.__setattr__(self, "aggregation", ALIASES[self.aggregation])
        if self.schedule == "constant":  # its length changes nothing: keep it out of the skip keys
            object.__setattr__(self, "schedule_steps", None)
        checks = [
            (self.aggregation in AGGREGATIONS,
             f"aggregation {self.aggregation!r}: expected one of {', '.join(AGGREGATIONS)} "
             f"(or {', '.join(ALIASES)})"),
            (self.schedule in SCHEDULES,
             f"schedule {self.schedule!r}: expected one of {', '.join(SCHEDULES)}"),
            (self.dtype in DTYPES, f"dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}"),
            (self.strategy in STRATEGIES, f"strategy {self.strategy!r}: expected one of {', '.join(STRATEGIES)}"),
            (self.strategy == "fsdp" or not self.fsdp_cpu_offload, "fsdp_cpu_offload needs strategy fsdp"),
            (self.strategy != "fsdp" or not self.lora_r, "lora_r with strategy fsdp is not supported yet (use "
                                                         "strategy ddp: LoRA's AdamW state is small)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ThinkrlError(f"train config: {msg}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as the manifest and the skip keys record them. Settings added after runs were finished
        are left out at their default, so those runs' keys, and the runs, stay valid."""
        d = asdict(self)
        d["betas"] = list(self.betas)
        for k in KEYED_WHEN_SET:
            if d[k] == _DEFAULTS[k]:
                del d[k]
        return d

    def loss_config(self) -> LossConfig:
        return LossConfig(eps_low=self.eps_low, eps_high=self.eps_high, beta=self.beta,
                          aggregation=self.aggregation)


KEYED_WHEN_SET = ("strategy", "fsdp_cpu_offload", "lora_r", "lora_alpha", "lora_targets")
_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


# --------------------------------------------------------------------------------------------- stage
def run_train_stage(policy: Path, thoughts: Path, out: Path, cfg: TrainConfig, force: bool = False,
                    carry_forward: bool = False, start: Callable[[int], None] | None = None,
                    progress: Callable[[dict, int, int], None] | None = None,
                    tracker: Tracker | None = None) -> StageResult:
    """Train `policy` on the thoughts artifact's advantages into `out` (see the module doc). `force` retrains
    from scratch; start(total optimizer steps) when work begins; progress(row, done, total) after each step.
    `tracker` gets every train_metrics row of the stage in step order, whether trained now, restored by a
    resume or read from the finished artifact (thinkrl.tracking: a tracker sees the whole history however the
    stage ran); the manifest of a run it watched records it (metrics.tracking)."""
    on_row = tracker.train_row if tracker is not None else None
    from thinkrl.trainer import NothingToTrain, default_device, resolve_config, train, train_inputs

    df = read_table(thoughts, "advantages", allow_empty=True)
    if df.height == 0 and carry_forward:
        return carry_policy_forward(policy, thoughts, out, cfg, "every advantage of the round is zero")
    cfg = resolve_config(cfg, df)
    writer = ArtifactWriter(out, "train", {**cfg.to_dict(), "policy": str(policy), "device": default_device().type},
                            inputs=train_inputs(cfg, policy, thoughts))
    if writer.up_to_date() and not force:
        replay_rows(out, on_row)
        return finished(writer)
    if start:
        start(cfg.epochs * -(-df["problem_id"].n_unique() // cfg.prompts_per_step))
    try:
        notes = {"tracking": tracker.record()} if tracker is not None else None
        metrics = train(policy, df, cfg, out, resume=not force, progress=progress, writer=writer, on_row=on_row,
                        notes=notes)
    except NothingToTrain as e:
        if not carry_forward:
            raise
        return carry_policy_forward(policy, thoughts, out, cfg, str(e)[:120])
    return StageResult(out, False, metrics)


def replay_rows(out: Path, on_row: Callable[[dict], None] | None) -> None:
    """on_row(row) for each row of the finished train artifact in `out` (step order)."""
    if on_row is not None:
        for row in read_table(out, "train_metrics", allow_empty=True).sort("step").iter_rows(named=True):
            on_row(row)


def carry_policy_forward(policy: Path, thoughts: Path, out: Path, cfg: TrainConfig, reason: str) -> StageResult:
    """Nothing to train: out/policy is the input policy, out/state the continued state (if any)."""
    prev = Path(cfg.continue_from) if cfg.continue_from else None
    inputs = {"policy": policy, "thoughts": thoughts, **({"continue_from": prev} if prev else {})}
    writer = ArtifactWriter(out, "train", {"carried_forward": True, "policy": str(policy)}, inputs=inputs)
    if writer.up_to_date():
        return finished(writer)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    copy_tree(policy, out / "policy")
    if prev is not None:
        copy_tree(prev, out / "state")
    else:
        shutil.rmtree(out / "state", ignore_errors=True)
    writer.set_table("train_metrics", [])
    metrics = {"steps": 0, "carried_forward": True, "reason": reason, "policy": str(out / "policy")}
    writer.finish(metrics, allow_empty=True)
    return StageResult(out, False, metrics)


def copy_tree(src: Path, dest: Path) -> None:
    """dest = a copy of src (hard links where possible), written to a temp sibling and renamed in."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, tmp, copy_function=link, ignore=shutil.ignore_patterns("_parts"))
    replace_dir(tmp, dest, modes_from_umask=False)  # hard links share their source's modes: left as they are
