"""`thinkrl judge`: label every step of every rollout with a judge (judgments artifact).

    thinkrl judge --rollouts runs/r --judge rule --out runs/j
    thinkrl judge --rollouts runs/r --judge hf:runs/judge-model --out runs/j
    thinkrl judge --rollouts runs/r --judge openai:http://127.0.0.1:8000 --judge-model Qwen3-32B --out runs/j

One judge call per rollout. The API key of an `openai:` judge is read from $OPENAI_API_KEY (or the
variable named by --api-key-env) and never written anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from stages.common import Force, console, show_progress, skipped
from thinkrl.judge.judging import JudgeStage, fallback_report, run_judge_stage
from thinkrl.judge.prompts import TEMPLATES


def judge(
    rollouts: Annotated[Path, typer.Option(help="rollouts artifact (thinkrl sample)")],
    out: Annotated[Path, typer.Option(help="output artifact directory")],
    judge_spec: Annotated[str, typer.Option("--judge", help="rule | oracle | hf:DIR | openai:URL")] = "rule",
    splitter: Annotated[str, typer.Option(help="step splitter: blank (blank lines), line, or judge (a generative judge groups the lines into steps)")] = "blank",
    tokenizer: Annotated[Path | None, typer.Option(
        help="policy tokenizer for token spans (default: the rollouts' policy directory)")] = None,
    judge_model: Annotated[str | None, typer.Option(help="openai: the model name the server serves")] = None,
    prompt: Annotated[str, typer.Option(help=f"generative judge prompt template: {', '.join(TEMPLATES)}")] = "intrinsic-v1",
    max_tokens: Annotated[int, typer.Option(help="generative judges: maximum reply tokens")] = 1024,
    concurrency: Annotated[int, typer.Option(help="openai: requests in flight at once")] = 8,
    timeout: Annotated[float, typer.Option(help="openai: per-request timeout in seconds")] = 120.0,
    retries: Annotated[int, typer.Option(help="openai: retries on timeouts, 429 and 5xx")] = 4,
    api_key_env: Annotated[str, typer.Option(help="openai: environment variable holding the API key")] = "OPENAI_API_KEY",
    cache_dir: Annotated[Path | None, typer.Option(
        help="openai: reply cache directory (default: OUT/_cache); a rerun never asks twice")] = None,
    part_size: Annotated[int, typer.Option(help="rollouts per part file (resume granularity)")] = 64,
    max_unknown: Annotated[float, typer.Option(
        help="fail (exit 2) when more than this share of the judged rollouts has no usable verdict (every step "
             "unknown); the artifact is still written, so a rerun with a higher value reuses it")] = 0.5,
    force: Force = False,
) -> None:
    """Label each step of each rollout with a judge (judgments artifact)."""
    how = JudgeStage(concurrency=concurrency, timeout_s=timeout, retries=retries, api_key_env=api_key_env,
                     cache_dir=cache_dir, part_size=part_size, max_unknown=max_unknown)
    with Progress(TextColumn("[bold]judge"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=not show_progress()) as bar:
        task = bar.add_task("judge", total=None)
        r = run_judge_stage(rollouts, out, judge_spec, splitter, tokenizer, judge_model, prompt, max_tokens, how,
                            force, start=lambda total: bar.update(task, total=total),
                            progress=lambda k: bar.advance(task, k))
    if r.skipped:
        return skipped(out)
    metrics = r.metrics
    mix = ", ".join(f"{k[6:]} {v:.2f}" for k, v in metrics.items() if k.startswith("label_"))
    console.print(f"{out}: {metrics['steps']} steps of {metrics['rollouts']} rollouts ({mix}); "
                  f"unknown {metrics['unknown_rate']:.3f}; {metrics['seconds']:.1f} s")
    if fallback_report(metrics):
        console.print(f"[bold yellow]judge: {fallback_report(metrics)}[/bold yellow]")
