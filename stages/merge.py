"""`thinkrl merge`: merge the parts that the shards of a sample, judge, segment or eval job wrote into one --out.

    thinkrl sample ... --shard 0/2 --out runs/r ; thinkrl sample ... --shard 1/2 --out runs/r
    thinkrl merge runs/r      # only needed when no shard merged (the last to finish merges by itself)

It checks that shards 0..n-1 each finished once, of one config and one n, and that every part the whole input
needs is there once, then finishes the artifact as the stage does (the same tables and metrics; thinkrl.shards).
An artifact that is already merged is left as it is (exit 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stages.common import console


def merge(
    out: Annotated[Path, typer.Argument(help="the --out directory the shards wrote into")],
) -> None:
    """Merge the shards' parts in OUT into one artifact (sample, judge, segment, eval with --shard k/n)."""
    from thinkrl.artifacts import read_manifest
    from thinkrl.shards import merge as merge_shards

    r = merge_shards(out)
    if r.skipped:
        return console.print(f"[dim]{out}: already merged (its manifest is there, no parts are left)[/dim]")
    m = read_manifest(out)
    rows = ", ".join(f"{o['rows']} {name}" for name, o in m["outputs"].items())
    console.print(f"{out}: merged {m['metrics'].get('shards', 1)} shards of `{m['stage']}` ({rows})")
