"""Run one `thinkrl.trainer.train` under torchrun (tests/test_trainer.py launches it on CPU with gloo).

    torchrun --standalone --nproc-per-node 2 tests/ddp_worker.py POLICY DATA.parquet OUT CONFIG.json

CONFIG.json holds TrainConfig fields. Rank 0 writes the summary metrics to OUT.metrics.json (a file, since the
ranks share stdout and their lines interleave); every rank prints `rank R/W ok` so the test can see that both
took part.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from thinkrl.trainer import TrainConfig, train  # noqa: E402


def main() -> None:
    policy, data, out, config = sys.argv[1:5]
    torch.set_num_threads(1)
    cfg = json.loads(Path(config).read_text())
    if "betas" in cfg:
        cfg["betas"] = tuple(cfg["betas"])
    metrics = train(policy, pl.read_parquet(data), TrainConfig(**cfg), out)
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    if rank == "0":
        Path(out + ".metrics.json").write_text(json.dumps(metrics))
    print(f"rank {rank}/{world} ok", flush=True)


if __name__ == "__main__":
    main()
