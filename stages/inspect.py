"""`thinkrl inspect PATH`: what an artifact holds — manifest summary, tables with schema and rows, first rows.

    thinkrl inspect runs/p              # rich tables on the terminal
    thinkrl inspect runs/p --json       # the same as JSON on stdout, for scripts
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from stages.common import out
from thinkrl.inspection import artifact_summary, render_summary


def inspect(
    path: Annotated[Path, typer.Argument(help="artifact directory (holds manifest.json)")],
    rows: Annotated[int, typer.Option("--rows", "-n", min=0, help="how many first rows to show per table")] = 5,
    table: Annotated[str | None, typer.Option("--table", help="show only this table")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON summary on stdout instead of tables")] = False,
) -> None:
    """Show an artifact: manifest (stage, config, inputs, metrics), its tables, their schema and first rows."""
    summary = artifact_summary(path, rows=rows, table=table)
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        render_summary(summary, out)
