"""`thinkrl model`: build the tiny policy, warm-start it on the flawed ArithChain corpus, import GGUF models.

    thinkrl model init --preset tiny --out runs/tiny-init
    thinkrl model warmstart --policy runs/tiny-init --out runs/tiny-ws --minutes 4.5
    thinkrl model warmstart --policy runs/tiny-init --out runs/tiny-ws --steps 2400   # deterministic
    thinkrl model import-gguf SmolLM2-135M-Instruct-Q8_0.gguf --out runs/smollm2

Each writes a normal Hugging Face model directory (safetensors) with its tokenizer, chat template and a
thinkrl.json holding the recipe that regenerates it. The warm start's options are the fields of
thinkrl.warmstart.WarmstartConfig, where their defaults and help text are defined.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stages.common import Force, console, guard, show_progress, skipped, with_settings
from thinkrl.models import PRESETS
from thinkrl.warmstart import WarmstartConfig

app = typer.Typer(no_args_is_help=True, help="Build the tiny policy, warm-start it, import GGUF models.")



def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def init_cmd(
    out: Annotated[Path, typer.Option(help="output model directory")],
    preset: Annotated[str, typer.Option(help=f"model shape: {', '.join(PRESETS)}")] = "tiny",
    seed: Annotated[int, typer.Option(help="seed of the random initial weights")] = 0,
    force: Force = False,
) -> None:
    """Random-init a preset policy with the digit tokenizer and save it as a Hugging Face directory."""
    from thinkrl.models import init_model, read_thinkrl_json

    _quiet_transformers()
    init_model(preset, out, seed=seed, force=force)
    n = read_thinkrl_json(out)["recipe"]["init"]["n_params"]
    console.print(f"[green]{out}[/green]: {preset} policy, {n / 1e6:.2f}M parameters, seed {seed}")


def warmstart_bar():
    """The warm start's progress bar and its progress callback (also used by `thinkrl demo`)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]warm start"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("step {task.fields[step]}  loss {task.fields[loss]}  {task.fields[rate]} tok/s"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console,
        disable=not show_progress(),
    )
    task = progress.add_task("warm start", total=1.0, step=0, loss="-", rate="-")

    def update(d: dict) -> None:
        if d["step"] % 5 and d["step"] != 1:
            return
        progress.update(task, completed=d["frac"], step=d["step"], loss=f"{d['loss_ema']:.4f}",
                        rate=f"{d['tokens_per_s']:.0f}")

    return progress, update


@with_settings(cfg=WarmstartConfig)
def warmstart_cmd(
    policy: Annotated[Path, typer.Option(help="policy to start from: a model directory (thinkrl model init)")],
    out: Annotated[Path, typer.Option(help="output model directory")],
    cfg: WarmstartConfig,
    force: Force = False,
) -> None:
    """Supervised warm start on the flawed ArithChain corpus (loss on solution tokens only)."""
    import json

    from thinkrl.warmstart import METRICS_JSON, is_up_to_date, warmstart

    _quiet_transformers()
    if not force and is_up_to_date(policy, out, cfg):
        skipped(out)
        return
    progress, update = warmstart_bar()
    with progress:
        warmstart(policy, out, cfg, progress=update, force=force)
    m = json.loads((out / METRICS_JSON).read_text(encoding="utf-8"))
    console.print(f"[green]{out}[/green]: {m['steps']} steps in {m['seconds']:.0f}s "
                  f"(+{m['prep_seconds']:.0f}s corpus), loss {m['final_loss_ema']:.4f}, "
                  f"{m['tokens_per_s']:.0f} tok/s")


def import_gguf_cmd(
    file: Annotated[Path, typer.Argument(help="a GGUF model file (llama.cpp format)")],
    out: Annotated[Path, typer.Option(help="output model directory")],
    dtype: Annotated[str | None, typer.Option(help="weight dtype to save: float32, bfloat16, float16 "
                                                    "(default: what transformers dequantizes to)")] = None,
    force: Force = False,
) -> None:
    """Dequantize a GGUF model into a normal safetensors directory with its tokenizer (needs `gguf`)."""
    from thinkrl.models import import_gguf, read_thinkrl_json

    _quiet_transformers()
    import_gguf(file, out, dtype=dtype, force=force)
    r = read_thinkrl_json(out)["recipe"]["import_gguf"]
    console.print(f"[green]{out}[/green]: {r['architecture']}, {r['n_params'] / 1e6:.1f}M parameters from {file.name}")


app.command("init")(guard(init_cmd))
app.command("warmstart")(guard(warmstart_cmd))
app.command("import-gguf")(guard(import_gguf_cmd))
