"""`thinkrl eval`: k samples per problem on benchmarks; avg@k, pass@k, maj@k, mean tokens.

    thinkrl eval --policy runs/tiny --bench aime24,math500,arith -k 16 --temperature 0.6 --top-p 0.95 --out runs/e

The template and every sampling setting are recorded in the manifest. Parts resume after a kill.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from stages.common import DataDir, Force, TokenProgress, console, skipped
from thinkrl.artifacts import read_manifest, read_table
from thinkrl.problems import named_problems, resolve_data_dir


def eval_cmd(
    policy: Annotated[Path, typer.Option(help="policy: a Hugging Face causal-LM directory")],
    out: Annotated[Path, typer.Option(help="output artifact directory")],
    bench: Annotated[str, typer.Option(help="comma-separated benchmark names (see `thinkrl data list`) or arith")] = "arith",
    k: Annotated[int, typer.Option("-k", help="samples per problem")] = 16,
    temperature: Annotated[float, typer.Option(help="sampling temperature")] = 0.6,
    top_p: Annotated[float, typer.Option(help="nucleus sampling mass")] = 0.95,
    max_tokens: Annotated[int, typer.Option(help="maximum completion tokens")] = 1024,
    limit: Annotated[int | None, typer.Option(help="first N problems of each benchmark")] = None,
    template: Annotated[str, typer.Option(help="prompt template: auto, chat, chat-plain, raw, raw-plain")] = "auto",
    seed: Annotated[int, typer.Option(help="base seed")] = 0,
    engine: Annotated[str, typer.Option(help="generation engine: hf or vllm")] = "hf",
    dtype: Annotated[str, typer.Option(help="auto, float32 or bfloat16")] = "auto",
    data_dir: DataDir = None,
    force: Force = False,
) -> None:
    """Evaluate a policy on benchmarks: avg@k, pass@k, maj@k, mean tokens."""
    from thinkrl.evaluate import EvalConfig, run_eval_stage  # heavy: imported when the stage runs

    names = [b.strip() for b in bench.split(",") if b.strip()]
    ddir = resolve_data_dir(data_dir)
    benchmarks = {name: named_problems(name, ddir, limit=limit) for name in names}
    cfg = EvalConfig(k=k, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
    bar = TokenProgress(0, "eval")
    try:
        r = run_eval_stage(benchmarks, policy, out, cfg, template, engine, dtype, limit, force,
                           start=bar.start, progress=bar.update)
    finally:
        bar.stop()
    if r.skipped:
        skipped(out)
    summary = read_table(out, "eval_summary")
    tmpl = read_manifest(out)["config"]["template"]
    table = Table(title=f"{policy}  (k={k}, T={temperature}, top-p={top_p}, template {tmpl})")
    for col in ("benchmark", "problems", f"avg@{k}", f"pass@{k}", f"maj@{k}", "mean tokens", "truncated"):
        table.add_column(col, justify="right" if col != "benchmark" else "left")
    for r in summary.to_dicts():
        table.add_row(r["benchmark"], str(r["problems"]), f"{100 * r['avg_at_k']:.1f}", f"{100 * r['pass_at_k']:.1f}",
                      f"{100 * r['maj_at_k']:.1f}", f"{r['mean_tokens']:.1f}", f"{100 * r['truncation_rate']:.1f}%")
    console.print(table)
