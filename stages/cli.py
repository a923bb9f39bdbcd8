"""The `thinkrl` command: registers every stage of the pipeline.

    problems --sample--> rollouts --judge--> judgments --segment--> thoughts --train--> checkpoint
    benchmarks --eval--> scores

Run `thinkrl STAGE --help` for a stage's options. Stages that are not built yet say so and exit 3.
"""

from __future__ import annotations

import os
import sys

import typer

# set before any stage module imports transformers: our own progress bars only, no library chatter
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from stages import data as data_stage  # noqa: E402
from stages import eval as eval_stage  # noqa: E402
from stages import inspect as inspect_stage  # noqa: E402
from stages import judge as judge_stage  # noqa: E402
from stages import judge_eval as judge_eval_stage  # noqa: E402
from stages import model as model_stage  # noqa: E402
from stages import report as report_stage  # noqa: E402
from stages import sample as sample_stage  # noqa: E402
from stages import segment as segment_stage  # noqa: E402
from stages import train as train_stage  # noqa: E402
from stages.common import guard  # noqa: E402
from thinkrl.errors import ThinkrlError  # noqa: E402

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
    "run": "rounds of sample -> judge -> segment -> train with periodic eval, from a TOML file",
    "demo": "the embedded default: warm-start the tiny policy, train GRPO vs TP-GRPO, write a report",
}


def _not_built(name: str, what: str):
    def cmd() -> None:
        raise NotBuilt(f"'thinkrl {name}' is not built yet in this version ({what})")

    cmd.__doc__ = f"{what[0].upper()}{what[1:]}. (not built yet)"
    return cmd


def register(app: typer.Typer) -> None:
    app.command("sample")(guard(sample_stage.sample))
    app.command("judge")(guard(judge_stage.judge))
    app.command("judge-eval")(guard(judge_eval_stage.judge_eval))
    app.command("segment")(guard(segment_stage.segment))
    app.command("train")(guard(train_stage.train))
    app.command("eval")(guard(eval_stage.eval_cmd))
    app.command("inspect")(guard(inspect_stage.inspect))
    app.command("report")(guard(report_stage.report))
    app.add_typer(data_stage.app, name="data", help="List and prepare benchmark and task problem sets.")
    app.add_typer(model_stage.app, name="model", help="Build the tiny policy, warm-start it, import GGUF models.")
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
