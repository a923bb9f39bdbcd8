"""The demo (`thinkrl demo`): its budgets (presets), its experiments (one per scheme and seed, the same start
and settings), and the warm-started start policy they share.

    cfgs = demo_configs("default", prepare_start_policy("runs/demo", "default"))   # {"outcome": ..., "thought": ...}
    run_experiments({name: (c, Path("runs/demo") / name) for name, c in cfgs.items()}, jobs=2)

The start policy is rebuilt only when its recipe changes (its thinkrl.json records the recipe it was built
from, as for `thinkrl model init` and `thinkrl model warmstart`). Where the presets depart from the paper: rounds are smaller than the paper's ~50 optimizer steps, so the
curves have points, and held-out accuracy is read at the training temperature T = 1 (see DemoPreset).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from thinkrl.errors import ThinkrlError
from thinkrl.experiment import ExperimentConfig


@dataclass(frozen=True)
class DemoPreset:
    """Budget of `thinkrl demo`: warm start, then one experiment per scheme with these settings."""

    warmstart: dict  # WarmstartConfig overrides ({}: thinkrl.warmstart's default recipe)
    rounds: int
    prompts_per_round: int
    eval_every: int
    eval_problems: int
    eval_k: int
    max_tokens: int = 160  # the tiny policy's solutions are 40-120 tokens
    part_size: int = 8     # problems per part file of sample and eval (it sets the batch make-up)
    # Held-out accuracy at the training temperature T = 1: at T = 0.6 the warm-started tiny policy is already
    # near its greedy accuracy, and what GRPO moves in a few hundred steps is the sampled accuracy (the
    # warm-start figures at both temperatures: `just bench warmstart`, docs/BENCHMARKS.md).
    eval_temperature: float = 1.0
    eval_top_p: float = 1.0


DEMO_PRESETS: dict[str, DemoPreset] = {
    # Warm starts are step counts, not minutes: the start policy's quality rises steeply with steps (1109
    # time-budgeted steps on a loaded machine: 27% greedy; 1500 steps: 78%), and a step count gives the
    # same start on every machine.
    # smoke run: a short warm start (the policy is rarely right), 2 rounds of 4 steps; 47 s measured
    "quick": DemoPreset(warmstart={"steps": 250, "corpus_size": 10000}, rounds=2, prompts_per_round=20,
                        eval_every=1, eval_problems=50, eval_k=2),
    # the DESIGN §5 warm start, then 8 rounds of ~20 steps (6400 samples) per scheme: 5.5-6.5 min measured on 2
    # cores (warm start 175-198 s), inside the 15-minute budget
    "default": DemoPreset(warmstart={"steps": 1500}, rounds=8, prompts_per_round=100, eval_every=1,
                          eval_problems=200, eval_k=4),
    "full": DemoPreset(warmstart={"steps": 3000}, rounds=20, prompts_per_round=100, eval_every=2,
                       eval_problems=400, eval_k=4),
}
DEMO_SCHEMES = ("outcome", "thought")
DEMO_MODEL = "tiny"  # the model preset (thinkrl.models.PRESETS) the demo warm-starts


def demo_configs(preset: str, policy: str | Path, seeds: tuple[int, ...] = (0,),
                 schemes: tuple[str, ...] = DEMO_SCHEMES) -> dict[str, ExperimentConfig]:
    """One ExperimentConfig per (scheme, seed), named `scheme` (one seed) or `scheme-sN`: the same start,
    budget and hyperparameters for all (DESIGN §5: lr 1e-4, 5 prompts x 8 samples per step, rule judge,
    held-out arith eval); no per-scheme tuning."""
    if preset not in DEMO_PRESETS:
        raise ThinkrlError(f"unknown demo preset {preset!r} (known: {', '.join(DEMO_PRESETS)})")
    if not seeds or not schemes:
        raise ThinkrlError("the demo needs at least one scheme and one seed")
    p = DEMO_PRESETS[preset]
    base = ExperimentConfig(policy=str(policy), rounds=p.rounds, prompts_per_round=p.prompts_per_round,
                            n=8, prompts_per_step=5, lr=1e-4, judge="rule", max_tokens=p.max_tokens,
                            part_size=p.part_size, eval_every=p.eval_every, eval_problems=p.eval_problems, eval_k=p.eval_k,
                            eval_temperature=p.eval_temperature, eval_top_p=p.eval_top_p, threads=1)
    return {(s if len(seeds) == 1 else f"{s}-s{seed}"): replace(base, scheme=s, seed=seed)
            for s in schemes for seed in seeds}


def warmstart_config(preset: str):
    """The WarmstartConfig of the demo's start policy."""
    from thinkrl.warmstart import WarmstartConfig

    return WarmstartConfig(**DEMO_PRESETS[preset].warmstart)


def prepare_start_policy(out_dir: str | Path, preset: str, progress: Callable[[dict], None] | None = None) -> Path:
    """Random-init the tiny policy (out_dir/init) and warm-start it (DESIGN §5) into out_dir/start; each step
    skips itself when its directory's thinkrl.json records the same recipe (the skip of `thinkrl model init`
    and `thinkrl model warmstart`: `thinkrl.models.recipe_matches`)."""
    from thinkrl.models import init_model, init_recipe, recipe_matches
    from thinkrl.warmstart import is_up_to_date, warmstart

    out_dir = Path(out_dir)
    init, start, cfg = out_dir / "init", out_dir / "start", warmstart_config(preset)
    init_model(DEMO_MODEL, init, seed=0, force=not recipe_matches(init, "init", init_recipe(DEMO_MODEL, 0)))
    if not is_up_to_date(init, start, cfg):
        warmstart(init, start, cfg, progress=progress, force=True)
    return start
