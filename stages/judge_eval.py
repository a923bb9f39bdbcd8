"""`thinkrl judge-eval`: measure a judge against the ArithChain oracle and on ProcessBench.

    thinkrl judge-eval --judge rule --rollouts runs/r --out runs/je                 # vs the exact oracle
    thinkrl judge-eval --judge rule --processbench gsm8k,math --limit 200 --out runs/je
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from stages.common import DataDir, Force, console, skipped
from thinkrl.artifacts import ArtifactWriter, read_table
from thinkrl.errors import ThinkrlError
from thinkrl.judge import make_judge
from thinkrl.problems import named_problems, resolve_data_dir


def _fmt(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def judge_eval(
    out: Annotated[Path, typer.Option(help="output artifact directory (judge_eval table)")],
    judge_spec: Annotated[str, typer.Option("--judge", help="rule | oracle | hf:DIR | openai:URL")] = "rule",
    rollouts: Annotated[Path | None, typer.Option(help="ArithChain rollouts artifact to compare with the oracle")] = None,
    processbench: Annotated[str | None, typer.Option(
        help="comma-separated ProcessBench subsets: gsm8k, math, olympiadbench, omnimath")] = None,
    limit: Annotated[int | None, typer.Option(help="first N cases of each ProcessBench subset")] = None,
    judge_model: Annotated[str | None, typer.Option(help="openai: the model name the server serves")] = None,
    max_tokens: Annotated[int, typer.Option(help="generative judges: maximum reply tokens")] = 1024,
    data_dir: DataDir = None,
    force: Force = False,
) -> None:
    """Measure a judge against the ArithChain oracle and on ProcessBench."""
    from thinkrl.judge_eval import oracle_suite, processbench_suite

    if rollouts is None and not processbench:
        raise ThinkrlError("give --rollouts (ArithChain, vs the oracle) and/or --processbench SUBSETS")
    subsets = [s.strip() for s in (processbench or "").split(",") if s.strip()]
    config = {"judge": judge_spec, "processbench": subsets, "limit": limit, "judge_model": judge_model,
              "max_tokens": max_tokens}
    writer = ArtifactWriter(out, "judge-eval", config, inputs={"rollouts": rollouts} if rollouts else {})
    if writer.up_to_date() and not force:
        skipped(out)
        rows = read_table(out, "judge_eval").to_dicts()
    else:
        ddir = resolve_data_dir(data_dir)
        cases = {s: named_problems(f"processbench_{s}", ddir, limit=limit) for s in subsets}  # fail early
        judge = make_judge(judge_spec, model=judge_model, max_tokens=max_tokens, cache_dir=str(out / "_cache"))
        rows = []
        with console.status(f"judge-eval with {judge.name}"):
            if rollouts is not None:
                rows.append(oracle_suite(read_table(rollouts, "rollouts"), judge, subset=str(rollouts)))
            rows += [processbench_suite(df, judge, s) for s, df in cases.items()]
        writer.set_table("judge_eval", rows)
        writer.finish({f"{r['suite']}/{r['subset']}/{k}": r[k] for r in rows
                       for k in ("precision", "recall", "exact_interval_rate", "f1") if r[k] is not None})
    table = Table(title=f"judge {judge_spec}")
    for c in ("suite", "subset", "items", "precision", "recall", "exact", "acc err", "acc ok", "F1", "unknown"):
        table.add_column(c, justify="left" if c in ("suite", "subset") else "right")
    for r in rows:
        table.add_row(r["suite"], r["subset"], str(r["items"]), _fmt(r["precision"]), _fmt(r["recall"]),
                      _fmt(r["exact_interval_rate"]), _fmt(r["acc_erroneous"]), _fmt(r["acc_correct"]),
                      _fmt(r["f1"]), _fmt(r["unknown_rate"]))
    console.print(table)
