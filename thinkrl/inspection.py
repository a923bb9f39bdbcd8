"""Summaries of artifacts for people and scripts (`thinkrl inspect`).

`artifact_summary` reads the manifest and every table through `artifacts.read_table` (so a damaged
artifact fails the same way everywhere) and returns plain JSON-able data; `render_summary` draws it
with rich.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from thinkrl.artifacts import SCHEMAS, read_manifest, read_table
from thinkrl.errors import ThinkrlError

_CELL = 160  # characters of a cell shown in the terminal
_WIDE = 7    # tables with more columns are shown one record at a time


def _cell(v: Any) -> Any:
    if isinstance(v, list) and len(v) > 8:
        return v[:8] + [f"... {len(v)} items"]
    return v


def artifact_summary(path: str | Path, rows: int = 5, table: str | None = None) -> dict:
    manifest = read_manifest(path)
    names = list(manifest["outputs"])
    if table is not None:
        if table not in names:
            raise ThinkrlError(f"{path}: no table '{table}' (has: {', '.join(names)})")
        names = [table]
    tables = []
    for name in names:
        if name not in SCHEMAS:
            raise ThinkrlError(f"{path}: table '{name}' has an unknown schema (known: {', '.join(SCHEMAS)})")
        df = read_table(path, name, allow_empty=True)
        tables.append({
            "table": name, "schema_version": SCHEMAS[name].version, "rows": df.height,
            "columns": {c: str(t) for c, t in df.schema.items()},
            "head": [{k: _cell(v) for k, v in r.items()} for r in df.head(rows).to_dicts()],
        })
    keep = ("stage", "created", "thinkrl_version", "git_commit", "config", "inputs", "metrics")
    return {"path": str(path), **{k: manifest.get(k) for k in keep}, "tables": tables}


def _short(v: Any) -> str:
    s = str(v).replace("\n", "\\n")
    return s if len(s) <= _CELL else s[: _CELL - 1] + "…"


def render_summary(s: dict, console: Console) -> None:
    console.print(f"[bold]{s['path']}[/bold]  stage [cyan]{s['stage']}[/cyan]  created {s['created']}  "
                  f"thinkrl {s['thinkrl_version']}  commit {s['git_commit'] or '-'}")
    for name, inp in (s.get("inputs") or {}).items():
        console.print(f"  input {name}: {inp['path']}  sha256 {inp['sha256'][:12]}")
    if s.get("metrics"):
        console.print("  metrics: " + ", ".join(f"{k}={_fmt(v)}" for k, v in s["metrics"].items()))
    for t in s["tables"]:
        console.print(f"\n[bold]{t['table']}[/bold] v{t['schema_version']}: {t['rows']} rows, "
                      f"{len(t['columns'])} columns")
        if len(t["columns"]) <= _WIDE:
            grid = Table(show_lines=False, header_style="bold magenta")
            for c, dtype in t["columns"].items():
                grid.add_column(f"{c}\n[dim]{dtype}[/dim]", overflow="fold", max_width=40)
            for r in t["head"]:
                grid.add_row(*[_short(r[c]) for c in t["columns"]])
            console.print(grid)
            continue
        for i, r in enumerate(t["head"]):  # many columns: one record per table, column: value
            grid = Table(title=f"row {i}", show_header=False, title_justify="left", title_style="bold")
            grid.add_column("column", style="magenta", no_wrap=True)
            grid.add_column("type", style="dim", no_wrap=True)
            grid.add_column("value", overflow="fold")
            for c, dtype in t["columns"].items():
                grid.add_row(c, dtype, _short(r[c]))
            console.print(grid)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else _short(v)
