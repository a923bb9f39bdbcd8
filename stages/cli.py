"""The `thinkrl` command: registers every stage of the pipeline.

    problems --sample--> rollouts --judge--> judgments --segment--> thoughts --train--> checkpoint
    benchmarks --eval--> scores

Run `thinkrl STAGE --help` for a stage's options; `thinkrl demo` runs the embedded default end to end.

Start-up imports no model library: the stage modules and the settings they generate options from load without
torch, transformers, vllm, matplotlib or math-verify, which the commands import when they run (tests/test_startup.py;
`just bench startup`), so `--help` and `thinkrl data list` answer in well under a second.
"""

from __future__ import annotations

import os
import sys

import typer

# set before any command imports transformers: our own progress bars only, no library chatter
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from stages import data as data_stage  # noqa: E402
from stages import demo as demo_stage  # noqa: E402
from stages import eval as eval_stage  # noqa: E402
from stages import inspect as inspect_stage  # noqa: E402
from stages import judge as judge_stage  # noqa: E402
from stages import judge_eval as judge_eval_stage  # noqa: E402
from stages import merge as merge_stage  # noqa: E402
from stages import model as model_stage  # noqa: E402
from stages import report as report_stage  # noqa: E402
from stages import run as run_stage  # noqa: E402
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

def register(app: typer.Typer) -> None:
    app.command("sample")(guard(sample_stage.sample))
    app.command("judge")(guard(judge_stage.judge))
    app.command("judge-eval")(guard(judge_eval_stage.judge_eval))
    app.command("segment")(guard(segment_stage.segment))
    app.command("train")(guard(train_stage.train))
    app.command("eval")(guard(eval_stage.eval_cmd))
    app.command("merge")(guard(merge_stage.merge))
    app.command("inspect")(guard(inspect_stage.inspect))
    app.command("report")(guard(report_stage.report))
    app.add_typer(data_stage.app, name="data", help="List and prepare benchmark and task problem sets.")
    app.add_typer(model_stage.app, name="model", help="Build the tiny policy, warm-start it, import GGUF models.")
    app.command("run")(guard(run_stage.run))
    app.command("demo")(guard(demo_stage.demo))


register(app)


def main() -> None:
    try:
        app()
    except ThinkrlError as e:  # raised outside a guarded command (e.g. while registering)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
