"""`thinkrl segment`: merge judged steps into thoughts and write per-token advantages (thoughts artifact).

    thinkrl segment --rollouts runs/r --judgments runs/j --scheme thought --alpha 1.0 --out runs/t
    thinkrl segment --rollouts runs/r --scheme outcome --out runs/t          # plain GRPO, no judge
    thinkrl segment ... --shard 0/2     # groups' parts i % 2 == 0 into the same --out; the last shard merges

No model is loaded here: `thinkrl train` recomputes the behaviour log-probs itself, with its own model,
dtype and micro-batches (the sampler's own are kept in the table for `thinkrl train --no-recompute-logprobs`;
vLLM's only at T = 1, since it takes them before temperature).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stages.common import Force, console, skipped, with_settings
from thinkrl.segment import SegmentConfig, run_segment_stage


@with_settings(cfg=SegmentConfig)
def segment(
    rollouts: Annotated[Path, typer.Option(help="rollouts artifact (thinkrl sample)")],
    out: Annotated[Path, typer.Option(help="output artifact directory")],
    cfg: SegmentConfig,
    judgments: Annotated[Path | None, typer.Option(help="judgments artifact (thinkrl judge); not needed for outcome")] = None,
    force: Force = False,
) -> None:
    """Merge steps into thoughts and compute per-token advantages (thoughts artifact)."""
    with console.status("segment: thoughts and advantages"):
        r = run_segment_stage(rollouts, judgments, out, cfg, force)
    if r.skipped:
        return skipped(out)
    if r.pending:
        return console.print(r.pending)
    m = r.metrics
    console.print(f"{out}: {m['kept_rollouts']}/{m['rollouts']} rollouts kept ({m['dropped_rollouts']} all-zero dropped), "
                  f"{m['error_thoughts']} error thoughts ({m['flipped_error_thoughts']} flipped), "
                  f"incorrect-thought tokens {m['incorrect_thought_token_share']:.3f}, "
                  f"unknown fallbacks {m['unknown_fallbacks']}, no-answer rollouts {m['no_answer_rollouts']} "
                  "(outcome advantage)")
