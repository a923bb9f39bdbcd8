"""`thinkrl eval`: k samples per problem on benchmarks; avg@k, pass@k, maj@k, mean tokens.

    thinkrl eval --policy runs/tiny --bench aime24,math500,arith -k 16 --temperature 0.6 --top-p 0.95 --out runs/e
    thinkrl eval ... --shard 0/8        # parts i % 8 == 0 of all benchmarks into the same --out; the last merges

The template and every sampling setting are recorded in the manifest. Parts resume after a kill. Every option
is an EvalConfig field (thinkrl.evaluate), where its default and help text are defined.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from stages.common import DataDir, Force, console, skipped, token_bar, with_settings
from thinkrl.artifacts import read_manifest, read_table
from thinkrl.evaluate import EvalConfig
from thinkrl.problems import problem_sets, resolve_data_dir


@with_settings(cfg=EvalConfig)
def eval_cmd(
    policy: Annotated[Path, typer.Option(help="policy: a Hugging Face causal-LM directory")],
    out: Annotated[Path, typer.Option(help="output artifact directory")],
    cfg: EvalConfig,
    bench: Annotated[str, typer.Option(help="comma-separated problem sets: benchmark names (`thinkrl data list`), "
                                            "arith, problems files or problems artifact directories")] = "arith",
    data_dir: DataDir = None,
    force: Force = False,
) -> None:
    """Evaluate a policy on benchmarks: avg@k, pass@k, maj@k, mean tokens."""
    from thinkrl.evaluate import run_eval_stage  # heavy: imported when the stage runs

    benchmarks = problem_sets(bench, resolve_data_dir(data_dir), cfg.limit)
    with token_bar("eval") as bar:
        r = run_eval_stage(benchmarks, policy, out, cfg, force, start=bar.start, progress=bar.update)
    if r.skipped:
        skipped(out)
    if r.pending:
        return console.print(r.pending)
    summary = read_table(out, "eval_summary")
    tmpl = read_manifest(out)["config"]["template"]
    k = cfg.k
    table = Table(title=f"{policy}  (k={k}, T={cfg.temperature}, top-p={cfg.top_p}, template {tmpl})")
    for col in ("benchmark", "problems", f"avg@{k}", f"pass@{k}", f"maj@{k}", "mean tokens", "truncated"):
        table.add_column(col, justify="right" if col != "benchmark" else "left")
    for r in summary.to_dicts():
        table.add_row(r["benchmark"], str(r["problems"]), f"{100 * r['avg_at_k']:.1f}", f"{100 * r['pass_at_k']:.1f}",
                      f"{100 * r['maj_at_k']:.1f}", f"{r['mean_tokens']:.1f}", f"{100 * r['truncation_rate']:.1f}%")
    console.print(table)
