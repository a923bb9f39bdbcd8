"""Shared pieces of the stage commands: error handling, common options, console.

`guard` turns a `ThinkrlError` into `error: <one line>` on stderr and exit code 2 (no traceback);
Ctrl-C exits 130. Every command is wrapped with it by `stages.cli`.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from thinkrl.errors import ThinkrlError

console = Console(stderr=True)  # progress and tables for people go to stderr; stdout stays for data (--json)
out = Console()

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="benchmark data directory; default $THINKRL_DATA_DIR, else ./data",
                 show_default=False),
]
Force = Annotated[bool, typer.Option("--force", help="rerun even if an artifact with the same inputs and config exists")]


def guard(fn):
    """Wrap a command: ThinkrlError -> one line on stderr, exit 2; KeyboardInterrupt -> exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ThinkrlError as e:
            print(f"error: {e}", file=sys.stderr)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper


def skipped(out_dir: Path) -> None:
    console.print(f"[dim]{out_dir}: up to date (same inputs and config); --force reruns[/dim]")


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def show_progress() -> bool:
    """Progress bars are drawn unless THINKRL_NO_PROGRESS is set (1/true/yes)."""
    return not env_flag("THINKRL_NO_PROGRESS")


class TokenProgress:
    """A rich progress bar over sequences with live tokens/s; `update(new_tokens, finished_sequences)`
    matches the engine's progress callback."""

    def __init__(self, total: int, description: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.total, self.tokens = total, 0
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console, transient=False,
            disable=not show_progress(),
        )
        self._task = self._progress.add_task(description, total=total, rate="")
        self._t0 = None

    def __enter__(self) -> TokenProgress:
        import time

        self._time = time.perf_counter
        self._t0 = self._time()
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def start(self, total: int) -> None:
        """Begin drawing, with `total` sequences (for a stage function's start callback); stop() ends it."""
        self._progress.update(self._task, total=total)
        self.__enter__()

    def stop(self) -> None:
        if self._t0 is not None:
            self.__exit__(None, None, None)
            self._t0 = None

    def update(self, new_tokens: int, finished: int) -> None:
        self.tokens += new_tokens
        elapsed = max(self._time() - self._t0, 1e-9)
        done = self._progress.tasks[0].completed + finished
        rate = f"{done / elapsed:.1f} seq/s  {self.tokens / elapsed:.0f} tok/s"
        self._progress.update(self._task, advance=finished, rate=rate)
