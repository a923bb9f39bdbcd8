"""`thinkrl demo`: the embedded default end to end: GRPO vs TP-GRPO on ArithChain with the tiny policy.

    thinkrl demo                 # 5.5-6.5 min on 2 CPU cores, warm start included (measured)
    thinkrl demo --quick         # a smoke run, about 1 min
    thinkrl demo --full          # a bigger budget
    thinkrl demo --policy DIR    # skip the warm start: train DIR
    thinkrl demo --full --schemes outcome,thought,thought-static,step --seeds 0,1,2   # the scheme comparison

1. builds the tiny policy and warm-starts it on the flawed ArithChain corpus (OUT/init, OUT/start; skipped
   when OUT/init and OUT/start record the same recipe in their thinkrl.json);
2. trains it twice from that start with the same seeds, budget and hyperparameters: scheme `outcome`
   (GRPO) in OUT/outcome and scheme `thought` (TP-GRPO) in OUT/thought, rule judge, held-out arith eval
   after every round (every 2nd with --full); two runs at a time, one thread each, on 2+ cores;
3. prints the comparison table and writes OUT/report.md with its plots (thinkrl.report, thinkrl.plots).
Budgets are `thinkrl.demo.DEMO_PRESETS`. Rerunning continues where a killed demo stopped.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer

from stages.common import console
from stages.model import warmstart_bar
from stages.report import print_comparison
from stages.run import Board


def demo(
    quick: Annotated[bool, typer.Option("--quick", help="smoke run: short warm start, 2 short rounds (about 1 min)")] = False,
    full: Annotated[bool, typer.Option("--full", help="bigger budget: longer warm start, 20 rounds, eval every 2nd round")] = False,
    out: Annotated[Path, typer.Option(help="output directory (start policy, one run per scheme, report)")] = Path("runs/demo"),
    policy: Annotated[Path | None, typer.Option(help="start from this policy directory (skips the warm start)")] = None,
    jobs: Annotated[int, typer.Option(help="runs at once (default: 2 when the machine has 2+ cores)")] = 0,
    schemes: Annotated[str, typer.Option(help="comma-separated reward schemes to compare")] = "outcome,thought",
    seeds: Annotated[str, typer.Option(help="comma-separated base seeds; each scheme runs once per seed")] = "0",
) -> None:
    """Warm-start the tiny policy, train it with GRPO and with TP-GRPO, compare, write a report."""
    from thinkrl.demo import demo_configs, prepare_start_policy
    from thinkrl.errors import ThinkrlError
    from thinkrl.report import write_report
    from thinkrl.workers import run_experiments

    if quick and full:
        raise ThinkrlError("--quick and --full exclude each other")
    preset = "quick" if quick else "full" if full else "default"
    try:
        seed_list = tuple(int(x) for x in seeds.split(",") if x.strip())
    except ValueError:
        raise ThinkrlError(f"--seeds {seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    scheme_list = tuple(x.strip() for x in schemes.split(",") if x.strip())
    demo_configs(preset, policy or out / "start", seeds=seed_list, schemes=scheme_list)  # bad options: fail now
    t0 = time.perf_counter()
    if policy is None:
        progress, update = warmstart_bar()
        with progress:
            policy = prepare_start_policy(out, preset, progress=update)
    console.print(f"start policy: {policy}  ({time.perf_counter() - t0:.0f} s)")
    cfgs = demo_configs(preset, policy, seeds=seed_list, schemes=scheme_list)
    with Board() as board:
        summaries = run_experiments({s: (c, out / s) for s, c in cfgs.items()},
                                    jobs=jobs or min(2, os.cpu_count() or 1), display=board.row)
    runs = [summaries[s] for s in cfgs]
    report = write_report(runs, out, title="thinkrl demo: reward schemes on ArithChain")
    c = next(iter(cfgs.values()))
    print_comparison(runs, f"held-out avg@{c.eval_k} (T = {c.eval_temperature:g}) on {c.eval_problems} "
                           f"{c.eval_bench} problems; same start, seeds and sample budget")
    console.print(f"report: {report}")
    mins, secs = divmod(int(time.perf_counter() - t0), 60)
    console.print(f"[green]demo ({preset}) finished in {mins} min {secs} s[/green]")
