"""`thinkrl sample`: G completions per problem from a policy, graded, as a rollouts artifact.

    thinkrl sample --policy runs/tiny --problems runs/p -n 8 --temperature 1.0 --max-tokens 256 --out runs/r
    thinkrl sample ... --shard 0/4      # this process samples parts i % 4 == 0 into the same --out

A killed run resumes from its finished part files; same seed -> byte-identical rollouts.parquet. With --shard
k/n, n processes (or nodes on a shared filesystem) run the same command into one --out; the last to finish
merges their parts into the artifact a single process writes (thinkrl.shards; `thinkrl merge OUT` by hand).
Every option is a SampleConfig field (thinkrl.sampling), where its default and help text are defined.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stages.common import Force, console, skipped, token_bar, with_settings
from thinkrl.sampling import SampleConfig


@with_settings(cfg=SampleConfig)
def sample(
    policy: Annotated[Path, typer.Option(help="policy: a Hugging Face causal-LM directory")],
    problems: Annotated[Path, typer.Option(help="problems artifact (thinkrl data prepare)")],
    out: Annotated[Path, typer.Option(help="output artifact directory")],
    cfg: SampleConfig,
    force: Force = False,
) -> None:
    """Sample completions with a policy and grade them (rollouts artifact)."""
    from thinkrl.sampling import run_sample_stage  # heavy: imported when the stage runs

    with token_bar("sample") as bar:
        r = run_sample_stage(problems, policy, out, cfg, force, start=bar.start, progress=bar.update)
    if r.skipped:
        return skipped(out)
    if r.pending:
        return console.print(r.pending)
    metrics = r.metrics
    console.print(f"{out}: {metrics['rollouts']} rollouts, accuracy {metrics['accuracy']:.3f}, "
                  f"mean tokens {metrics['mean_tokens']:.1f}, truncated {metrics['truncation_rate']:.3f}, "
                  f"{metrics['tokens_per_s'] or 0:.0f} tok/s")
