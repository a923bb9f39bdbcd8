"""`thinkrl report RUN...`: compare training runs — a markdown report with plots and a table on the terminal.

    thinkrl report runs/grpo-s0 runs/tp-s0                    # -> runs/report/report.md + PNGs
    thinkrl report runs/grpo-s* runs/tp-s* --out docs/fig --title "GRPO vs TP-GRPO"

The first run is the baseline (samples to reach its final accuracy). Reads manifests and metrics/eval
tables only (`thinkrl/summary.py`; tables and report.md `thinkrl/report.py`, figures `thinkrl/plots.py`);
runs still in progress are reported as far as they got.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from stages.common import console, out


def report(
    runs: Annotated[list[Path], typer.Argument(help="run directories (runs/NAME); the first is the baseline")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="report directory (default: <first run's parent>/report)",
                                                 show_default=False)] = None,
    title: Annotated[str, typer.Option(help="report title")] = "thinkrl report",
) -> None:
    """Tables and plots comparing runs, from their manifests and metrics artifacts."""
    from thinkrl.report import write_report
    from thinkrl.summary import collect_run

    summaries = [collect_run(r) for r in runs]
    path = write_report(summaries, out_dir if out_dir is not None else runs[0].parent / "report", title=title)
    print_comparison(summaries, title)
    out.print(f"report: {path}")


def _rich_table(rows: list[dict[str, str]], title: str, text_cols: tuple[str, ...]) -> Table:
    """Display rows (format_rows) as a table: one row per run on a wide terminal, else transposed."""
    table = Table(title=title, header_style="bold")
    if out.width >= 40 + 12 * len(rows[0]):  # wide terminal: one row per run
        for h in rows[0]:
            table.add_column(h, justify="left" if h in text_cols else "right")
        for r in rows:
            table.add_row(*r.values())
    else:  # narrow: one row per metric, one column per run
        first = next(iter(rows[0]))
        table.add_column("", style="bold")
        for r in rows:
            table.add_column(r[first], justify="right", overflow="fold")
        for h in list(rows[0])[1:]:
            table.add_row(h, *[r[h] for r in rows])
    return table


def print_comparison(summaries, title: str) -> None:
    """The comparison table of runs (the first is the baseline), the by-scheme table when an experiment ran
    with several seeds (configs differing only in `seed`), and what is missing from runs still in progress."""
    from thinkrl.report import aggregate_by_group, comparison_table, format_rows, seed_caveat
    from thinkrl.summary import seed_groups

    out.print(_rich_table(format_rows(comparison_table(summaries)), title, ("run", "scheme", "status")))
    if any(len(runs) > 1 for _, runs in seed_groups(summaries)):
        out.print(_rich_table(format_rows(aggregate_by_group(summaries)),
                              f"{title}: mean ± 95% t-interval over seeds", ("scheme", "seeds")))
    caveat = seed_caveat(summaries)
    if caveat:
        console.print(f"[yellow]{caveat}[/yellow]", highlight=False)
    for s in summaries:
        for m in s.missing:
            console.print(f"[dim]{s.name}: {m}[/dim]", highlight=False)
