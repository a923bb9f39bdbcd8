"""The demo (`thinkrl demo`): its budgets (presets), its experiments (one per scheme and seed, the same start
and settings), and the warm-started start policy they share.

    cfgs = demo_configs("default", prepare_start_policy("runs/demo", "default"))   # {"outcome": ..., "thought": ...}
    run_experiments({name: (c, Path("runs/demo") / name) for name, c in cfgs.items()}, jobs=2)

The start policy is rebuilt only when its recipe changes (runs/demo/start.json holds the recipe it was built
from). Where the presets depart from the paper: rounds are smaller than the paper's ~50 optimizer steps, so the
curves have points, and held-out accuracy is read at the training temperature T = 1 (see DemoPreset).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
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
    max_tokens: int = 160
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
                            eval_every=p.eval_every, eval_problems=p.eval_problems, eval_k=p.eval_k,
                            eval_temperature=p.eval_temperature, eval_top_p=p.eval_top_p, threads=1)
    return {(s if len(seeds) == 1 else f"{s}-s{seed}"): replace(base, scheme=s, seed=seed)
            for s in schemes for seed in seeds}


def warmstart_recipe(preset: str) -> dict:
    """What the demo's start policy is built from (its skip key)."""
    from thinkrl.warmstart import WarmstartConfig

    ws = WarmstartConfig(**DEMO_PRESETS[preset].warmstart)
    return {"model": "tiny", "init_seed": 0, "warmstart": asdict(ws)}


def prepare_start_policy(out_dir: str | Path, preset: str, progress: Callable[[dict], None] | None = None) -> Path:
    """Random-init the tiny policy and warm-start it (DESIGN §5) into out_dir/start, unless a start policy
    built from the same recipe is already there (out_dir/start.json holds the recipe it was built from)."""
    from thinkrl.models import init_model
    from thinkrl.warmstart import WarmstartConfig, warmstart

    out_dir = Path(out_dir)
    start, key_file = out_dir / "start", out_dir / "start.json"
    recipe = warmstart_recipe(preset)
    if (start / "config.json").is_file() and key_file.is_file():
        with contextlib.suppress(ValueError, OSError):
            if json.loads(key_file.read_text(encoding="utf-8")) == json.loads(json.dumps(recipe)):
                return start
    key_file.unlink(missing_ok=True)
    init_model(recipe["model"], out_dir / "init", seed=recipe["init_seed"], force=True)
    warmstart(out_dir / "init", start, WarmstartConfig(**recipe["warmstart"]), progress=progress, force=True)
    key_file.write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")
    return start
