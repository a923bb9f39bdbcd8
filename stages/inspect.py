"""`thinkrl inspect PATH`: what an artifact holds — manifest summary, tables with schema and rows, first rows;
or, with any rollout option, the rollout view: why a rollout was rewarded as it was.

    thinkrl inspect runs/p              # rich tables on the terminal
    thinkrl inspect runs/p --json       # the same as JSON on stdout, for scripts
    thinkrl inspect runs/x/round-000/rollouts --rollout 'arith-s0-000017/r0/s3'   # one rollout, coloured
    thinkrl inspect runs/x/round-000/thoughts --problem arith-s0-000017 --html g.html   # its group of G

PATH may be a rollouts, judgments or thoughts artifact: the others (and the train artifact, for the trainer's
log pi_old per token) are found through the manifests' inputs and sibling artifacts made from them;
--judgments / --thoughts / --train override.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from stages.common import out
from thinkrl.inspection import artifact_summary, render_summary


def inspect(
    path: Annotated[Path, typer.Argument(help="artifact directory (holds _manifest.json)")],
    rows: Annotated[int, typer.Option("--rows", "-n", min=0, help="how many first rows to show per table")] = 5,
    table: Annotated[str | None, typer.Option("--table", help="show only this table")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON summary on stdout instead of tables")] = False,
    rollout: Annotated[str | None, typer.Option("--rollout", help="rollout view of this rollout_id")] = None,
    problem: Annotated[str | None, typer.Option("--problem", help="rollout view of this problem's group of G")] = None,
    judgments: Annotated[Path | None, typer.Option("--judgments", help="judgments artifact (default: found)")] = None,
    thoughts: Annotated[Path | None, typer.Option("--thoughts", help="thoughts artifact (default: found)")] = None,
    train: Annotated[Path | None, typer.Option("--train", help="train artifact made from the thoughts, for log pi_old "
                                               "per token (default: found beside the thoughts)")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="write the group's page (G rollouts side by side)")] = None,
) -> None:
    """Show an artifact: manifest (stage, config, inputs, metrics), its tables, their schema and first rows.
    With --rollout/--problem/--html: the rollout view (steps, labels, thoughts, per-token advantages)."""
    if not any(x is not None for x in (rollout, problem, judgments, thoughts, train, html)):
        summary = artifact_summary(path, rows=rows, table=table)
        if as_json:
            print(json.dumps(summary, indent=2, default=str))
        else:
            render_summary(summary, out)
        return
    from thinkrl.rollout_render import render_html, render_terminal
    from thinkrl.rollout_view import open_view

    view = open_view(path, judgments=judgments, thoughts=thoughts, rollout_id=rollout, problem_id=problem, train=train)
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(render_html(view), encoding="utf-8")
    if as_json:
        print(json.dumps(view.to_dict(), indent=2, default=str))
    elif rollout is not None or problem is not None or html is None:
        render_terminal(view, out)
    if html is not None:
        out.print(f"wrote {html} ({len(view.rollouts)} rollouts of {view.problem_id}, round {view.round})")
