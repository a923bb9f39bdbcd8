"""Experiment tracking (`--report-to`): the train_metrics rows and the eval scores, sent to a tracker as they are made.

    with Tracker("tensorboard", Path("runs/exp"), name="exp", config=cfg.to_dict()) as t:
        t.train_row(row)                       # train/<column> of a train_metrics row, at its global step
        t.eval_scores(summary_rows, step=40)   # eval/<benchmark>/avg@k, pass@k, maj@k, ... at the round's last step
    tensorboard --logdir runs/exp/tb

Backends (`BACKENDS`, one record each): `none`; `tensorboard`, the default (torch.utils.tensorboard; the
`tensorboard` package is a core dependency; no account); `wandb` and `trackio` (extras of the same names,
imported only when chosen). Each
writes inside the output directory it is given (a `thinkrl run` directory, or `thinkrl train --out`): `tb/`,
`wandb/` (wandb's own folder, offline unless WANDB_MODE is set) or `trackio/` (TRACKIO_DIR unless set; trackio
is local unless the user gives it a Space). A missing package is one line naming the extra, before any work.

What goes out: every train_metrics column but `step` as `train/<column>` (`skipped` as 0/1), at the global step;
per eval, `eval/<benchmark>/avg@k`, `pass@k`, `maj@k` (k the eval's), `mean_tokens`, `truncation_rate`, at the
global step where the evaluated round ended (0 for the start policy). The figures are the artifacts' own, so
the tracker and the Parquet files never disagree.

Resume. The stages hand a tracker the whole history in step order, every time they run: rows a finished
artifact or a resumed trainer state holds are replayed, new ones sent as soon as they exist (each send flushed).
So:
- tensorboard: a session removes the event files of the previous ones from its folder and starts its own with
  purge_step 0 (a SessionLog START, so a TensorBoard server that holds the old events drops them); the folder
  then holds each step once, with the values of the artifacts as they are now (a setting changed between two
  sessions rewrites the curves from where they differ).
- wandb, trackio: append-only, so a session sends only the steps past those its folder's ledger
  (`thinkrl-tracking.json`: last train and eval step sent, and wandb's run id) says were sent; a resumed run
  continues the same wandb run / trackio run name. A kill between a send and its ledger entry can repeat that
  one step; values recomputed after a changed setting are not sent again (use tensorboard, or a new run).
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from thinkrl.errors import ThinkrlError
from thinkrl.settings import check_settings, setting

LEDGER = "thinkrl-tracking.json"


class Session(Protocol):
    """One open connection to a backend."""

    def log(self, scalars: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Backend:
    name: str
    module: str | None                  # the package it imports (None: nothing to import)
    folder: str | None                  # where it writes, inside the output directory
    install: str | None                 # what installs its package
    open: Callable[[Path, str, dict], Session] | None
    help: str


# --------------------------------------------------------------------------------------------- backends
class _TensorBoard:
    def __init__(self, log_dir: Path, name: str, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        log_dir.mkdir(parents=True, exist_ok=True)
        for f in log_dir.glob("events.out.tfevents.*"):  # earlier sessions: this one replays their steps
            f.unlink()
        self.writer = SummaryWriter(str(log_dir), purge_step=0)

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Ledgered:
    """An append-only backend behind the ledger: steps at or below the last one sent (per kind, `train` or
    `eval`: the tag's first part) are not sent again."""

    def __init__(self, log_dir: Path, send: Callable[[Mapping[str, float], int], None], finish: Callable[[], None],
                 ledger: dict):
        self.path, self.send, self.finish, self.ledger = log_dir / LEDGER, send, finish, ledger

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        kind = next(iter(scalars), "/").split("/")[0]
        sent = self.ledger.setdefault("sent", {})
        if step <= sent.get(kind, -1):
            return
        self.send(scalars, step)
        sent[kind] = step
        write_ledger(self.path, self.ledger)

    def close(self) -> None:
        self.finish()


def read_ledger(log_dir: Path) -> dict:
    try:
        return json.loads((log_dir / LEDGER).read_text())
    except (OSError, ValueError):
        return {}


def write_ledger(path: Path, ledger: dict) -> None:
    from thinkrl.artifacts import write_text_atomic

    write_text_atomic(json.dumps(ledger) + "\n", path)


def _open_wandb(log_dir: Path, name: str, config: dict) -> Session:
    os.environ.setdefault("WANDB_MODE", "offline")  # no account needed unless the user asks for one
    import wandb

    log_dir.mkdir(parents=True, exist_ok=True)
    ledger = read_ledger(log_dir)
    ledger.setdefault("id", secrets.token_hex(8))  # a new run per output directory, resumed by its sessions
    write_ledger(log_dir / LEDGER, ledger)
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "thinkrl"), name=name, id=ledger["id"],
                     resume="allow", dir=str(log_dir.parent), config=config)
    return _Ledgered(log_dir, lambda s, step: run.log(dict(s), step=step), run.finish, ledger)


def _open_trackio(log_dir: Path, name: str, config: dict) -> Session:
    os.environ.setdefault("TRACKIO_DIR", str(log_dir))  # read when trackio is imported
    import trackio

    log_dir.mkdir(parents=True, exist_ok=True)
    trackio.init(project=os.environ.get("TRACKIO_PROJECT", "thinkrl"), name=name, config=config, resume="allow")
    return _Ledgered(log_dir, lambda s, step: trackio.log(dict(s), step=step), trackio.finish, read_ledger(log_dir))


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("none", None, None, None, None, "no tracking"),
    Backend("tensorboard", "tensorboard", "tb", "pip install tensorboard", _TensorBoard,
            "TensorBoard event files in <out>/tb (no account)"),
    Backend("wandb", "wandb", "wandb", "pip install 'thinkrl[wandb]'", _open_wandb,
            "Weights & Biases, offline unless WANDB_MODE is set"),
    Backend("trackio", "trackio", "trackio", "pip install 'thinkrl[trackio]'", _open_trackio,
            "trackio, local in <out>/trackio unless TRACKIO_DIR is set"),
)}


@dataclass(frozen=True)
class TrackingConfig:
    """The tracking setting of `thinkrl train` and `thinkrl run` (not part of any skip key: it changes no result)."""

    report_to: str = setting("tensorboard", "experiment tracker for the per-step train metrics and the eval scores: "
                                     + "; ".join(f"{b.name} ({b.help})" for b in BACKENDS.values())
                                     + "; the log folder is inside the run or --out directory")

    def __post_init__(self) -> None:
        check_settings(self)
        if self.report_to not in BACKENDS:
            raise ThinkrlError(f"--report-to {self.report_to!r}: expected one of {', '.join(BACKENDS)}")


def installed(module: str) -> bool:
    if module in sys.modules:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# --------------------------------------------------------------------------------------------- the tracker
def train_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """train/<column> -> value of every train_metrics column but step (booleans as 0/1)."""
    return {f"train/{k}": float(v) for k, v in row.items() if k != "step"}


def eval_scalars(summary_rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """eval/<benchmark>/<score> of eval_summary rows: avg@k, pass@k, maj@k (k the row's), mean tokens, truncation."""
    out = {}
    for r in summary_rows:
        b, k = r["benchmark"], r["k"]
        out.update({f"eval/{b}/avg@{k}": r["avg_at_k"], f"eval/{b}/pass@{k}": r["pass_at_k"],
                    f"eval/{b}/maj@{k}": r["maj_at_k"], f"eval/{b}/mean_tokens": r["mean_tokens"],
                    f"eval/{b}/truncation_rate": r["truncation_rate"]})
    return {k: float(v) for k, v in out.items()}


class Tracker:
    """The chosen backend for one output directory, opened at the first thing it sends (so an input error leaves
    no log folder behind) and closed by `close` or the with block. The package is checked when it is made."""

    def __init__(self, report_to: str, out_dir: Path, name: str, config: Mapping[str, Any] | None = None):
        self.backend = BACKENDS[TrackingConfig(report_to).report_to]
        b = self.backend
        if b.module is not None and not installed(b.module):
            raise ThinkrlError(f"--report-to {b.name} needs the `{b.module}` package: {b.install} "
                               "(or --report-to none)")
        self.log_dir = None if b.folder is None else Path(out_dir) / b.folder
        self.name, self.config = name, json.loads(json.dumps(dict(config or {}), default=str))
        self._session: Session | None = None

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        if self.backend.open is None or not scalars:
            return
        if self._session is None:
            self._session = self.backend.open(self.log_dir, self.name, self.config)
        self._session.log(scalars, int(step))

    def train_row(self, row: Mapping[str, Any]) -> None:
        self.log(train_scalars(row), int(row["step"]))

    def eval_scores(self, summary_rows: Sequence[Mapping[str, Any]], step: int) -> None:
        self.log(eval_scalars(summary_rows), step)

    def record(self) -> dict[str, str | None]:
        """What a manifest records of it."""
        return {"report_to": self.backend.name, "log_dir": None if self.log_dir is None else str(self.log_dir)}

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
