"""The train stage: key -> skip -> train (or carry the policy forward) -> finish, for `thinkrl train` and
`thinkrl run` alike.

    result = run_train_stage(Path("runs/tiny"), Path("runs/t"), Path("runs/tr"), TrainConfig(lr=1e-4))

The key is the resolved TrainConfig (thinkrl.trainer.resolve_config) plus the policy directory, over the
inputs of `thinkrl.trainer.train_inputs` (policy, thoughts, reference policy, continued state). A round with
nothing to learn (an empty advantages table, or one whose every advantage is zero) is an error by default;
with `carry_forward` (what `thinkrl run` asks for) the train artifact records `carried_forward: true`, its
policy/ is a copy of the input policy and its state/ a copy of the continued state, so the next round goes on
from there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from thinkrl.artifacts import MANIFEST, ArtifactWriter, StageResult, finished, read_table, replace_dir
from thinkrl.trainer import NothingToTrain, TrainConfig, default_device, resolve_config, train, train_inputs

if TYPE_CHECKING:
    from thinkrl.tracking import Tracker


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
    replace_dir(tmp, dest)
