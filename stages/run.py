"""`thinkrl run`: rounds of sample -> judge -> segment -> train with held-out eval, from a TOML file.

    thinkrl run data/experiments/arith-grpo-vs-tp.toml --name tp --policy runs/demo/start
    thinkrl run EXPERIMENT.toml --name tp --alpha 0.5      # any setting as an option; options win
    thinkrl run --name grpo --policy runs/demo/start --scheme outcome --rounds 6
    torchrun --nproc-per-node 2 -m stages.cli run EXPERIMENT.toml --name tp   # every stage over 2 processes

Outputs go to RUNS_DIR/NAME (round-000/..., eval-initial/, config.toml, summary.json; the layout is
thinkrl/runs.py, the round loop thinkrl/rounds.py). Kill it at any moment and rerun the same command: finished artifacts are reused
and a killed stage resumes; a changed setting reruns only the stages that depend on it. Every setting is
an `ExperimentConfig` field (thinkrl/experiment.py), most of them a stage's own setting with that stage's
default and help; `python -m thinkrl.experiment` lists them.
"""

from __future__ import annotations

import inspect
import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from stages.common import console, setting_options, show_progress
from thinkrl.experiment import ExperimentConfig
from thinkrl.rounds import Display


class RunRow(Display):
    """One run's line of the live board: round, stage, progress, tokens/s, latest held-out accuracy."""

    def __init__(self, name: str):
        self.name, self.rounds, self.round, self.current = name, 0, None, "starting"
        self.total, self.units, self.tokens, self.t0 = None, 0, 0, time.perf_counter()
        self.acc: str = "-"
        self.started = time.perf_counter()

    def begin(self, name, cfg) -> None:
        self.rounds = cfg.rounds

    def stage(self, round_, stage, total=None) -> None:
        self.round, self.current, self.total = round_, stage, total
        self.units, self.tokens, self.t0 = 0, 0, time.perf_counter()

    def advance(self, units=0, tokens=0) -> None:
        self.units += units
        self.tokens += tokens

    def done(self, round_, stage, text, skipped=False) -> None:
        where = "initial" if round_ is None else f"round {round_}"
        note = " [dim](up to date)[/dim]" if skipped else ""
        console.print(f"[bold]{self.name}[/bold] {where} {stage}: {text}{note}", highlight=False)

    def accuracy(self, round_, samples, value) -> None:
        self.acc = f"{100 * value:.1f}% ({samples} samples)"

    def end(self, summary) -> None:
        self.current, self.total = "done", None

    def cells(self) -> list:
        from rich.progress_bar import ProgressBar

        rnd = "-" if self.round is None else f"{self.round + 1}/{self.rounds}"
        bar = ProgressBar(total=self.total, completed=min(self.units, self.total), width=16) if self.total else ""
        count = f"{self.units}/{self.total}" if self.total else ""
        dt = max(time.perf_counter() - self.t0, 1e-9)
        rate = f"{self.tokens / dt:.0f}" if self.tokens else ""
        mins, secs = divmod(int(time.perf_counter() - self.started), 60)
        return [self.name, rnd, self.current, bar, count, rate, self.acc, f"{mins}:{secs:02d}"]


class Board:
    """A rich Live table with one RunRow per run; plain stage lines only when stderr is not a terminal."""

    def __init__(self):
        self.rows: dict[str, RunRow] = {}
        self.live = None

    def row(self, name: str) -> RunRow:
        return self.rows.setdefault(name, RunRow(name))

    def __rich__(self) -> Table:
        t = Table(box=None, pad_edge=False)
        for col in ("run", "round", "stage", "progress", "", "tok/s", "held-out", "time"):
            t.add_column(col, no_wrap=True, min_width=len(col))
        for r in self.rows.values():
            t.add_row(*r.cells())
        return t

    def __enter__(self) -> Board:
        if console.is_terminal and show_progress():
            from rich.live import Live

            self.live = Live(self, console=console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)


def run(
    experiment: Annotated[Path | None, typer.Argument(help="TOML experiment file (flat key = value settings)")] = None,
    name: Annotated[str | None, typer.Option(help="run name: outputs go to RUNS_DIR/NAME (default: the file's stem)")] = None,
    runs_dir: Annotated[Path, typer.Option(help="directory holding the runs")] = Path("runs"),
    **settings,
) -> None:
    """Rounds of sample -> judge -> segment -> train with held-out eval; rerun to continue where it stopped."""
    from thinkrl.errors import ThinkrlError
    from thinkrl.rounds import run_experiment

    if name is None and experiment is None:
        raise ThinkrlError("give an experiment file or --name NAME (outputs go to RUNS_DIR/NAME)")
    cfg = ExperimentConfig.load(experiment, overrides=settings)
    run_name = name or experiment.stem
    if os.environ.get("RANK", "0") != "0":  # under torchrun: rank 0 displays and reports
        run_experiment(cfg, runs_dir / run_name)
        return
    with Board() as board:
        summary = run_experiment(cfg, runs_dir / run_name, display=board.row(run_name))
    acc = summary.final_accuracy
    shown = f", held-out avg@{cfg.eval_k} {100 * acc:.1f}%" if acc is not None else ""
    console.print(f"[green]{runs_dir / run_name}[/green]: {summary.finished_rounds} rounds, "
                  f"{summary.samples_consumed} training samples, "
                  f"{sum(r.train_steps or 0 for r in summary.rounds)} optimizer steps{shown}")


_sig = inspect.signature(run, eval_str=True)
run.__signature__ = _sig.replace(parameters=[p for p in _sig.parameters.values() if p.kind != p.VAR_KEYWORD]
                                 + setting_options(ExperimentConfig, unset_default=True, panel="Settings"))
