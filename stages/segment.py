"""`thinkrl segment`: merge judged steps into thoughts and write per-token advantages (thoughts artifact).

    thinkrl segment --rollouts runs/r --judgments runs/j --scheme thought --alpha 1.0 --out runs/t
    thinkrl segment --rollouts runs/r --scheme outcome --out runs/t          # plain GRPO, no judge

Behaviour log-probs are recomputed once with the policy that sampled the round (default: the rollouts'
`policy` column; `--policy` overrides, `--no-recompute` keeps the sampler's own log-probs), by the trainer's
own scorer: pass the `--dtype` and `--micro-batch-tokens` that `thinkrl train` will use (the defaults match),
so that the first optimizer step has ratio 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stages.common import Force, console, skipped
from thinkrl.artifacts import ArtifactWriter, read_table
from thinkrl.segment import behaviour_logprob_fn, rollouts_sampling, segment_key
from thinkrl.segment import segment as run_segment
from thinkrl.thoughts import SCHEMES
from thinkrl.trainer import TrainConfig


def segment(
    rollouts: Annotated[Path, typer.Option(help="rollouts artifact (thinkrl sample)")],
    out: Annotated[Path, typer.Option(help="output artifact directory")],
    judgments: Annotated[Path | None, typer.Option(help="judgments artifact (thinkrl judge); not needed for outcome")] = None,
    scheme: Annotated[str, typer.Option(help=f"reward scheme: {', '.join(SCHEMES)}")] = "thought",
    alpha: Annotated[float, typer.Option(help="α: penalty scale of incorrect thoughts (α·acc, or α for thought-static)")] = 1.0,
    policy: Annotated[Path | None, typer.Option(help="policy that sampled the round (default: from the rollouts)")] = None,
    recompute: Annotated[bool, typer.Option(help="recompute behaviour log-probs with the policy (else the sampler's)")] = True,
    dtype: Annotated[str, typer.Option(help="the trainer's " + TrainConfig.help("dtype"))] = TrainConfig().dtype,
    micro_batch_tokens: Annotated[int, typer.Option(
        help="the trainer's " + TrainConfig.help("micro_batch_tokens"))] = TrainConfig().micro_batch_tokens,
    force: Force = False,
) -> None:
    """Merge steps into thoughts and compute per-token advantages (thoughts artifact)."""
    ro = read_table(rollouts, "rollouts")
    sampling = rollouts_sampling(rollouts)
    pol = policy or Path(ro["policy"][0])
    tcfg = TrainConfig(dtype=dtype, micro_batch_tokens=micro_batch_tokens)
    config, inputs = segment_key(rollouts, judgments, scheme, alpha, pol, recompute, tcfg)
    writer = ArtifactWriter(out, "segment", config, inputs=inputs)
    if writer.up_to_date() and not force:
        return skipped(out)
    jd = read_table(judgments, "judgments", allow_empty=True) if "judgments" in inputs else None
    logprob_fn = behaviour_logprob_fn(pol, tcfg) if recompute else None
    with console.status("segment: advantages and behaviour log-probs"):
        m = run_segment(ro, jd, scheme, alpha, writer, logprob_fn, sampling)
    console.print(f"{out}: {m['kept_rollouts']}/{m['rollouts']} rollouts kept ({m['dropped_rollouts']} all-zero dropped), "
                  f"{m['error_thoughts']} error thoughts ({m['flipped_error_thoughts']} flipped), "
                  f"incorrect-thought tokens {m['incorrect_thought_token_share']:.3f}, "
                  f"unknown fallbacks {m['unknown_fallbacks']}, no-answer rollouts {m['no_answer_rollouts']} "
                  "(outcome advantage)")
