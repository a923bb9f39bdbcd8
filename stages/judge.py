"""`thinkrl judge`: label every step of every rollout with a judge (judgments artifact).

    thinkrl judge --rollouts runs/r --judge rule --out runs/j
    thinkrl judge --rollouts runs/r --judge hf:runs/judge-model --out runs/j
    thinkrl judge --rollouts runs/r --judge openai:http://127.0.0.1:8000 --judge-model Qwen3-32B --out runs/j
    thinkrl judge ... --shard 1/4       # this process judges parts i % 4 == 1 into the same --out; the last merges

One judge call per rollout. A request that fails for good (server down, timeouts, HTTP errors, a reply
that is no full verdict after --parse-retries) leaves the artifact unfinished, exit 3: rerun the same
command to ask again for just those, or pass --allow-failed. The API key of an `openai:` judge is read from $OPENAI_API_KEY (or the
variable named by --api-key-env) and never written anywhere. Every option is a JudgeConfig field
(thinkrl.judge.judging), where its default and help text are defined.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from stages.common import Force, console, show_progress, skipped, with_settings
from thinkrl.judge.judging import JudgeConfig, failed_report, fallback_report, run_judge_stage


@with_settings(cfg=JudgeConfig)
def judge(
    rollouts: Annotated[Path, typer.Option(help="rollouts artifact (thinkrl sample)")],
    out: Annotated[Path, typer.Option(help="output artifact directory")],
    cfg: JudgeConfig,
    tokenizer: Annotated[Path | None, typer.Option(
        help="policy tokenizer for token spans (default: the rollouts' policy directory)")] = None,
    force: Force = False,
) -> None:
    """Label each step of each rollout with a judge (judgments artifact)."""
    with Progress(TextColumn("[bold]judge"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=not show_progress()) as bar:
        task = bar.add_task("judge", total=None)
        r = run_judge_stage(rollouts, out, cfg, tokenizer, force, start=lambda total: bar.update(task, total=total),
                            progress=lambda k: bar.advance(task, k))
    if r.skipped:
        return skipped(out)
    if r.pending:
        return console.print(r.pending)
    metrics = r.metrics
    mix = ", ".join(f"{k[6:]} {v:.2f}" for k, v in metrics.items() if k.startswith("label_"))
    console.print(f"{out}: {metrics['steps']} steps of {metrics['rollouts']} rollouts ({mix}); "
                  f"unknown {metrics['unknown_rate']:.3f}; {metrics['seconds']:.1f} s")
    if failed_report(metrics):
        console.print(f"[bold yellow]judge: {failed_report(metrics)}[/bold yellow]")
    if fallback_report(metrics):
        console.print(f"[bold yellow]judge: {fallback_report(metrics)}[/bold yellow]")
