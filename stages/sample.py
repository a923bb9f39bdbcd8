"""`thinkrl sample`: G completions per problem from a policy, graded, as a rollouts artifact.

    thinkrl sample --policy runs/tiny --problems runs/p -n 8 --temperature 1.0 --max-tokens 256 --out runs/r
    thinkrl sample ... --shard 0/4      # this process takes problems i % 4 == 0

A killed run resumes from its finished part files; same seed -> byte-identical rollouts.parquet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stages.common import Force, TokenProgress, console, skipped


def sample(
    policy: Annotated[Path, typer.Option(help="policy: a Hugging Face causal-LM directory")],
    problems: Annotated[Path, typer.Option(help="problems artifact (thinkrl data prepare)")],
    out: Annotated[Path, typer.Option(help="output artifact directory")],
    n: Annotated[int, typer.Option("-n", "--n", help="completions per problem (G)")] = 8,
    temperature: Annotated[float, typer.Option(help="sampling temperature (0 = greedy)")] = 1.0,
    top_p: Annotated[float, typer.Option(help="nucleus sampling mass")] = 1.0,
    max_tokens: Annotated[int, typer.Option(help="maximum completion tokens")] = 256,
    stop: Annotated[list[str] | None, typer.Option(help="stop string (repeatable)")] = None,
    template: Annotated[str, typer.Option(help="prompt template: auto, chat, chat-plain, raw, raw-plain")] = "auto",
    seed: Annotated[int, typer.Option(help="base seed; each sample's seed derives from (seed, round, problem, sample)")] = 0,
    round_: Annotated[int, typer.Option("--round", help="training round recorded in the rows")] = 0,
    shard: Annotated[str, typer.Option(help="k/n: take problems i % n == k")] = "0/1",
    limit: Annotated[int | None, typer.Option(help="use only the first N problems")] = None,
    engine: Annotated[str, typer.Option(help="generation engine: hf (transformers) or vllm")] = "hf",
    dtype: Annotated[str, typer.Option(help="auto, float32 or bfloat16")] = "auto",
    part_size: Annotated[int, typer.Option(help="problems per part file (resume granularity)")] = 16,
    force: Force = False,
) -> None:
    """Sample completions with a policy and grade them (rollouts artifact)."""
    from thinkrl.sampling import (  # heavy: imported when the stage runs
        SampleConfig,
        parse_shard,
        run_sample_stage,
    )

    cfg = SampleConfig(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=tuple(stop or ()),
                       template=template, seed=seed, round=round_, shard=parse_shard(shard), part_size=part_size)
    bar = TokenProgress(0, "sample")
    try:
        r = run_sample_stage(problems, policy, out, cfg, engine, dtype, limit, force,
                             start=bar.start, progress=bar.update)
    finally:
        bar.stop()
    if r.skipped:
        return skipped(out)
    metrics = r.metrics
    console.print(f"{out}: {metrics['rollouts']} rollouts, accuracy {metrics['accuracy']:.3f}, "
                  f"mean tokens {metrics['mean_tokens']:.1f}, truncated {metrics['truncation_rate']:.3f}, "
                  f"{metrics['tokens_per_s'] or 0:.0f} tok/s")
