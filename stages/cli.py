"""The `thinkrl` command: registers every stage of the pipeline.

    problems --sample--> rollouts --judge--> judgments --segment--> thoughts --train--> checkpoint
    benchmarks --eval--> scores

Run `thinkrl STAGE --help` for a stage's options. Stages that are not built yet say so and exit 3.
"""

from __future__ import annotations

import sys

import typer

from stages import data as data_stage
from stages import inspect as inspect_stage
from stages.common import guard
from thinkrl.errors import ThinkrlError

app = typer.Typer(
    name="thinkrl",
    help="RL for math reasoning with thought-level process rewards from a generative judge (TP-GRPO).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)

class NotBuilt(ThinkrlError):
    exit_code = 3


NOT_BUILT = {
    "sample": "sample G completions per problem with a policy and grade them (rollouts artifact)",
    "judge": "label each step of each rollout with a judge (judgments artifact)",
    "judge-eval": "measure a judge against the ArithChain oracle and on ProcessBench",
    "segment": "merge steps into thoughts and compute per-token advantages (thoughts artifact)",
    "train": "clipped policy-gradient updates on a thoughts artifact (checkpoint + train metrics)",
    "eval": "evaluate a policy on benchmarks: avg@k, pass@k, maj@k",
    "run": "rounds of sample -> judge -> segment -> train with periodic eval, from a TOML file",
    "demo": "the embedded default: warm-start the tiny policy, train GRPO vs TP-GRPO, write a report",
    "report": "tables and plots for runs, from manifests and metrics artifacts",
    "model": "build the tiny policy, warm-start it, import GGUF models",
}


def _not_built(name: str, what: str):
    def cmd() -> None:
        raise NotBuilt(f"'thinkrl {name}' is not built yet in this version ({what})")

    cmd.__doc__ = f"{what[0].upper()}{what[1:]}. (not built yet)"
    return cmd


def register(app: typer.Typer) -> None:
    app.command("inspect")(guard(inspect_stage.inspect))
    app.add_typer(data_stage.app, name="data", help="List and prepare benchmark and task problem sets.")
    for name, what in NOT_BUILT.items():
        app.command(name)(guard(_not_built(name, what)))


register(app)


def main() -> None:
    try:
        app()
    except ThinkrlError as e:  # raised outside a guarded command (e.g. while registering)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
