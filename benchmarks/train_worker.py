"""Train a policy for a few optimizer steps on synthetic rollouts, under torchrun or alone: s/step and peak RSS.

    python benchmarks/train_worker.py MODEL_DIR OUT CONFIG.json PROMPTS GROUP PROMPT_TOKENS COMPLETION_TOKENS
    torchrun --standalone --nproc-per-node 2 benchmarks/train_worker.py ...

CONFIG.json holds TrainConfig fields (strategy, lora_r, ...). The rollouts are random token ids of fixed lengths
with random nonzero advantages (a step's cost does not depend on what the tokens say), seed 0, the same for every
strategy. Each rank writes OUT.rank<R>.json: its peak RSS (GB) and, on rank 0, the steps' seconds. Run by
`just bench scaleout` (benchmarks/bench.py).
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

import numpy as np
import polars as pl
import torch

from thinkrl.artifacts import read_table
from thinkrl.models import load_policy
from thinkrl.trainer import TrainConfig, train


def rollouts(vocab: int, prompts: int, group: int, prompt_tokens: int, completion_tokens: int) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for p in range(prompts):
        prompt = rng.integers(10, vocab, prompt_tokens).tolist()
        for s in range(group):
            comp = rng.integers(10, vocab, completion_tokens).tolist()
            a = float(rng.normal()) or 1.0
            rows.append({"rollout_id": f"p{p:03d}/s{s}", "problem_id": f"p{p:03d}", "prompt_ids": prompt,
                         "completion_ids": comp, "advantages": [a] * len(comp), "outcome_advantage": a,
                         "correct": a > 0, "round": 0, "temperature": 1.0, "max_tokens": completion_tokens,
                         "finish_reason": "stop", "incorrect_tokens": 0,
                         "behaviour_logprobs": [-1.0] * len(comp)})
    return pl.DataFrame(rows)


def main(model_dir: str, out: str, config: str, prompts: int, group: int, prompt_tokens: int,
         completion_tokens: int) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, int(os.environ.get("THINKRL_THREADS", "2")) // world))
    _, tok = load_policy(model_dir, dtype="float32")
    cfg = TrainConfig(**json.loads(Path(config).read_text()))
    metrics = train(model_dir, rollouts(len(tok), prompts, group, prompt_tokens, completion_tokens), cfg, out)
    rank = int(os.environ.get("RANK", "0"))
    report = {"rank": rank, "world": world, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if rank == 0:
        report.update(seconds=read_table(out, "train_metrics")["seconds"].to_list(), steps=metrics["steps"],
                      n_params=metrics["n_params"])
    Path(f"{out}.rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], int(a[3]), int(a[4]), int(a[5]), int(a[6]))
