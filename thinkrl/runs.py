"""The run-directory layout of `thinkrl run`, in one place (written by thinkrl.rounds, read by thinkrl.summary).

    runs/NAME/config.toml                  resolved settings (rewritten by each invocation)
    runs/NAME/status.json                  {"round", "stage", "pid"}: where the run is (or "done")
    runs/NAME/summary.json                 per-round and per-eval figures (thinkrl.summary.collect_run)
    runs/NAME/eval-initial/                eval of the start policy (curves start at samples = 0)
    runs/NAME/round-000/problems/          this round's training problems
    runs/NAME/round-000/rollouts/          G samples per problem from the round's behaviour policy
    runs/NAME/round-000/judgments/         step labels from the judge
    runs/NAME/round-000/thoughts/          thoughts + per-token advantages (tables thoughts, advantages)
    runs/NAME/round-000/train/             train artifact, policy/ (checkpoint), state/ (resume, continued)
    runs/NAME/round-000/eval/              held-out eval of round-000/train/policy, when due that round
    runs/NAME/tb/                          TensorBoard event files with --report-to tensorboard (wandb/, trackio/
                                           for those trackers; thinkrl.tracking)
"""

from __future__ import annotations

import re
from pathlib import Path

CONFIG, STATUS, SUMMARY = "config.toml", "status.json", "summary.json"
INITIAL_EVAL = "eval-initial"
PROBLEMS, ROLLOUTS, JUDGMENTS, THOUGHTS, TRAIN, EVAL = "problems", "rollouts", "judgments", "thoughts", "train", "eval"
ROUND_STAGES = (ROLLOUTS, JUDGMENTS, THOUGHTS, TRAIN)  # the artifacts every finished round holds
_ROUND = re.compile(r"^round-(\d+)$")


def round_dir(run_dir: str | Path, round_: int) -> Path:
    return Path(run_dir) / f"round-{round_:03d}"


def round_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(round, directory) of every round directory of a run, in round order."""
    found = ((_ROUND.match(p.name), p) for p in Path(run_dir).iterdir() if p.is_dir())
    return sorted((int(m.group(1)), p) for m, p in found if m)


def trained_policy(run_dir: str | Path, round_: int) -> Path:
    """The policy round `round_` trained (what round `round_` + 1 samples with)."""
    return round_dir(run_dir, round_) / TRAIN / "policy"
