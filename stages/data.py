"""`thinkrl data`: list the known benchmark sets, prepare a problems artifact from a benchmark, task or file.

    thinkrl data list                                        # which benchmarks the data directory holds
    thinkrl data list --json                                 # the same as JSON on stdout
    thinkrl data prepare math500 --out runs/math500          # problems artifact of a known benchmark
    thinkrl data prepare my.jsonl --out runs/mine --question-col prompt --answer-col target --id-col uid

The input is read and checked completely before anything is written, so a bad input never replaces a
good artifact. The library side is thinkrl/problems.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from stages.common import DataDir, Force, console, guard, out, skipped, with_settings
from thinkrl.problems import PrepareConfig, list_benchmarks, resolve_data_dir, run_prepare_stage

app = typer.Typer(no_args_is_help=True, help="List and prepare benchmark and task problem sets.")


def list_sets(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the list as JSON on stdout instead of a table")] = False,
) -> None:
    """Show each known benchmark: where it was found (or missing), its rows and the rows expected."""
    d = resolve_data_dir(data_dir)
    sets = list_benchmarks(d)
    if as_json:
        print(json.dumps({"data_dir": str(d), "benchmarks": sets}, indent=2))
        return
    table = Table(title=f"benchmarks in {d}", header_style="bold magenta")
    table.add_column("name", no_wrap=True)
    table.add_column("path", overflow="fold")
    table.add_column("rows", justify="right")
    table.add_column("expected", justify="right")
    table.add_column("status", no_wrap=True)
    for s in sets:
        status = "[green]OK[/green]" if s["ok"] else "[red]mismatch[/red]" if s["found"] else "[yellow]missing[/yellow]"
        table.add_row(s["name"], s["relpath"] if s["found"] else "missing",
                      "-" if s["rows"] is None else str(s["rows"]), str(s["expected_rows"]), status)
    out.print(table)


@with_settings(cfg=PrepareConfig)
def prepare(
    name: Annotated[str, typer.Argument(help="benchmark name (see `thinkrl data list`), task name, or a "
                                             ".jsonl/.json/.parquet file", show_default=False)],
    out_dir: Annotated[Path, typer.Option("--out", help="artifact directory to write (problems table)",
                                          show_default=False)],
    cfg: PrepareConfig,
    data_dir: DataDir = None,
    force: Force = False,
) -> None:
    """Write a problems artifact (problem_id, source, question, answer, meta) from a benchmark, task or file."""
    r = run_prepare_stage(name, out_dir, cfg, resolve_data_dir(data_dir), force)
    if r.skipped:
        return skipped(out_dir)
    console.print(f"wrote {r.metrics['rows']} problems ({r.metrics['kind']} {name}) to {out_dir}", soft_wrap=True,
                  markup=False, highlight=False)


app.command("list")(guard(list_sets))
app.command("prepare")(guard(prepare))
