"""Run one `thinkrl.trainer.train` under torchrun (tests/test_trainer.py launches it on CPU with gloo).

    torchrun --standalone --nproc-per-node 2 tests/ddp_worker.py POLICY DATA.parquet OUT CONFIG.json

CONFIG.json holds TrainConfig fields (`strategy` picks DDP or FSDP). THINKRL_TEST_KILL=R:K makes rank R kill
itself with SIGKILL right after its K-th optimizer step of this process (kill -9 of one rank). Rank 0 writes the summary metrics to OUT.metrics.json (a file, since the
ranks share stdout and their lines interleave); every rank prints `rank R/W ok` so the test can see that both
took part.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import thinkrl.trainer as trainer  # noqa: E402
from thinkrl.trainer import TrainConfig, train  # noqa: E402


def kill_after(rank: int, steps: int) -> None:
    """Rank `rank` SIGKILLs itself after `steps` optimizer steps of this process."""
    step, done = trainer.optimizer_step, []

    def counted(run, i):
        row = step(run, i)
        done.append(i)
        if run.dist.rank == rank and len(done) == steps:
            os.kill(os.getpid(), signal.SIGKILL)
        return row

    trainer.optimizer_step = counted


def main() -> None:
    policy, data, out, config = sys.argv[1:5]
    torch.set_num_threads(1)
    cfg = json.loads(Path(config).read_text())
    if "betas" in cfg:
        cfg["betas"] = tuple(cfg["betas"])
    if os.environ.get("THINKRL_TEST_KILL"):
        r, k = os.environ["THINKRL_TEST_KILL"].split(":")
        kill_after(int(r), int(k))
    metrics = train(policy, pl.read_parquet(data), TrainConfig(**cfg), out)
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    if rank == "0":
        Path(out + ".metrics.json").write_text(json.dumps(metrics))
    print(f"rank {rank}/{world} ok", flush=True)


if __name__ == "__main__":
    main()
