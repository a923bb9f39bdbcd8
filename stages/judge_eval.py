"""`thinkrl judge-eval`: measure a judge against the ArithChain oracle and on ProcessBench.

    thinkrl judge-eval --judge rule --rollouts runs/r --out runs/je                 # vs the exact oracle
    thinkrl judge-eval --judge rule --processbench gsm8k,math --limit 200 --out runs/je
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from stages.common import DataDir, Force, console, skipped, with_settings
from thinkrl.judge_eval import JudgeEvalConfig, run_judge_eval_stage
from thinkrl.problems import resolve_data_dir


def _fmt(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


@with_settings(cfg=JudgeEvalConfig)
def judge_eval(
    out: Annotated[Path, typer.Option(help="output artifact directory (judge_eval table)")],
    cfg: JudgeEvalConfig,
    rollouts: Annotated[Path | None, typer.Option(help="ArithChain rollouts artifact to compare with the oracle")] = None,
    data_dir: DataDir = None,
    force: Force = False,
) -> None:
    """Measure a judge against the ArithChain oracle and on ProcessBench."""
    r = run_judge_eval_stage(out, cfg, rollouts, resolve_data_dir(data_dir), force, status=console.status)
    if r.skipped:
        skipped(out)
    rows = r.metrics["rows"]
    table = Table(title=f"judge {cfg.judge}")
    for c in ("suite", "subset", "items", "precision", "recall", "exact", "acc err", "acc ok", "F1", "unknown"):
        table.add_column(c, justify="left" if c in ("suite", "subset") else "right")
    for r in rows:
        table.add_row(r["suite"], r["subset"], str(r["items"]), _fmt(r["precision"]), _fmt(r["recall"]),
                      _fmt(r["exact_interval_rate"]), _fmt(r["acc_erroneous"]), _fmt(r["acc_correct"]),
                      _fmt(r["f1"]), _fmt(r["unknown_rate"]))
    console.print(table)
