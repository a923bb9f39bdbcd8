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
