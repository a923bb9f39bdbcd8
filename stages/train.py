"""`thinkrl train`: clipped policy-gradient updates on a thoughts artifact (checkpoint + train metrics).

    thinkrl train --policy runs/tiny --thoughts runs/thoughts-r0 --out runs/train-r0 --lr 1e-4
    torchrun --nproc-per-node 2 -m stages.cli train ...      # DDP; rank 0 writes

Writes OUT/policy (Hugging Face checkpoint), OUT/state (exact resume) and the train_metrics artifact in OUT.
Same inputs and config as a finished run: skipped (--force retrains from scratch). An interrupted run, or
a rerun with a larger --max-steps, resumes from OUT/state. `--continue-from PREV` carries a previous run's
optimizer and global step on (the next round of one continuous policy), and its `--schedule-steps` if it was
given one (give one to both runs when the schedule decays: cosine, linear). `--lora-r R` trains LoRA adapters
(peft) and writes OUT/policy merged; continued, it starts new adapters on PREV's merged policy (thinkrl.trainer). Every option is a TrainConfig field
(thinkrl.training), where its help text is defined, but `--report-to` (thinkrl.tracking: TensorBoard in OUT/tb,
or wandb/trackio; rank 0 logs every step, a resumed or skipped run its whole history again).
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer

from stages.common import Force, console, show_progress, skipped, with_settings
from thinkrl.tracking import Tracker, TrackingConfig
from thinkrl.training import TrainConfig, run_train_stage


class _Bar:
    """Rich progress over optimizer steps with loss, lr and tokens/s; created on the first step."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), console=console,
            disable=not show_progress())
        self.task = None

    def __call__(self, row: dict, done: int, total: int) -> None:
        if self.task is None:
            self.task = self.progress.add_task("train", total=total, completed=done - 1, info="")
        if row["skipped"]:
            console.print(f"[yellow]step {row['step']}: non-finite loss or gradient, skipped[/yellow]")
        info = (f"loss {row['loss']:+.4f}  lr {row['lr']:.2e}  "
                f"{row['tokens'] / max(row['seconds'], 1e-9):.0f} tok/s")
        self.progress.update(self.task, total=total, completed=done, info=info)


@with_settings(cfg=TrainConfig, tracking=TrackingConfig)
def train(
    policy: Annotated[Path, typer.Option(help="policy to train: a Hugging Face causal-LM directory")],
    thoughts: Annotated[Path, typer.Option(help="thoughts artifact holding the advantages table")],
    out: Annotated[Path, typer.Option(help="output directory: policy/, state/, train_metrics")],
    cfg: TrainConfig,
    tracking: TrackingConfig,
    force: Force = False,
) -> None:
    """Train a policy on a thoughts artifact: clipped policy-gradient steps (checkpoint + train metrics)."""
    main = os.environ.get("RANK", "0") == "0"
    bar = _Bar() if main else None
    tracker = Tracker(tracking.report_to, out, out.name, cfg.to_dict()) if main else None
    with bar.progress if bar else nullcontext(), tracker or nullcontext():
        r = run_train_stage(policy, thoughts, out, cfg, force, progress=bar, tracker=tracker)
    m = r.metrics
    if r.skipped:
        return skipped(out) if main else None
    if main:
        console.print(f"{out}: {m['steps']} steps ({m['skipped_steps']} skipped), "
                      f"final loss {m['final_loss']:+.4f}, {m['tokens']} tokens, "
                      f"{m['dropped_rollouts']} rollouts dropped, "
                      f"{m['seconds_per_step']:.2f} s/step, MFU {m['mfu']:.2%} -> {out / 'policy'}")

