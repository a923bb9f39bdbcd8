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

from stages.common import DataDir, Force, console, guard, out, skipped
from thinkrl.artifacts import ArtifactWriter
from thinkrl.errors import ThinkrlError
from thinkrl.problems import list_benchmarks, load_problems, resolve_data_dir, resolve_set

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


def prepare(
    name: Annotated[str, typer.Argument(help="benchmark name (see `thinkrl data list`), task name, or a "
                                             ".jsonl/.json/.parquet file", show_default=False)],
    out_dir: Annotated[Path, typer.Option("--out", help="artifact directory to write (problems table)",
                                          show_default=False)],
    data_dir: DataDir = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="keep only the first N problems")] = None,
    question_col: Annotated[str | None, typer.Option(
        "--question-col", help="FILE only: column holding the question (default: question)")] = None,
    answer_col: Annotated[str | None, typer.Option(
        "--answer-col", help="FILE only: column holding the gold answer (default: answer)")] = None,
    id_col: Annotated[str | None, typer.Option(
        "--id-col", help="FILE only: column of unique problem ids (default: {source}-{row index})")] = None,
    source: Annotated[str | None, typer.Option(
        "--source", help="FILE only: source name stored with each problem (default: the file name)")] = None,
    n: Annotated[int | None, typer.Option("--n", min=1, help="TASK only: how many problems to generate")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="TASK only: generator seed")] = None,
    force: Force = False,
) -> None:
    """Write a problems artifact (problem_id, source, question, answer, meta) from a benchmark, task or file."""
    d = resolve_data_dir(data_dir)
    ps = resolve_set(name, d)
    mapping = {"question_col": question_col, "answer_col": answer_col, "id_col": id_col, "source": source,
               "n": n, "seed": seed}
    config = {"set": name, "kind": ps.kind, "limit": limit, **mapping,
              "data_dir": str(d.resolve()) if ps.kind == "benchmark" else None}
    if out_dir.exists() and not out_dir.is_dir():
        raise ThinkrlError(f"{out_dir}: is a file; --out must be a directory")
    writer = ArtifactWriter(out_dir, stage="prepare", config=config,
                            inputs={"problems": ps.path} if ps.path is not None else {})
    if not force and writer.up_to_date():
        skipped(out_dir)
        return
    df = load_problems(ps, limit=limit, **mapping)  # reads and checks everything before a byte is written
    writer.set_table("problems", df)
    sources = ",".join(sorted(df["source"].unique().to_list()))
    writer.finish(metrics={"rows": df.height, "source": sources})
    console.print(f"wrote {df.height} problems ({ps.kind} {name}) to {out_dir}", soft_wrap=True, markup=False,
                  highlight=False)


app.command("list")(guard(list_sets))
app.command("prepare")(guard(prepare))
