"""One training step's forward + backward of a policy on random rollouts, in a fresh process: peak RSS and time.

    python benchmarks/memory_step.py MODEL_DIR ROLLOUTS COMPLETION_TOKENS MODE     # MODE: whole | chunked | chunked+ckpt

Prints one JSON line: {"mode", "rollouts", "tokens", "peak_rss_gb", "model_rss_gb", "seconds"}. `whole` is the
whole-logits path (logprob_chunk 0), `chunked` the LM head in chunks of 1024 positions, `+ckpt` adds gradient
checkpointing. Run by `just bench memory` (benchmarks/bench.py), one process per measurement so each peak is its own.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import torch

from thinkrl.logprobs import DEFAULT_CHUNK, completion_logprobs
from thinkrl.models import load_policy


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main(model_dir: str, rollouts: int, tokens: int, mode: str) -> None:
    torch.set_num_threads(2)
    model, _ = load_policy(model_dir, dtype="float32")
    model.train()
    if mode.endswith("+ckpt"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    g = torch.Generator().manual_seed(0)
    V = model.config.vocab_size
    prompts = [torch.randint(10, V, (64,), generator=g).tolist() for _ in range(rollouts)]
    comps = [torch.randint(10, V, (tokens,), generator=g).tolist() for _ in range(rollouts)]
    base = rss_gb()
    t0 = time.perf_counter()
    logp, mask = completion_logprobs(model, prompts, comps, chunk=0 if mode == "whole" else DEFAULT_CHUNK)
    loss = -(logp * mask).sum() / mask.sum()
    loss.backward()
    seconds = time.perf_counter() - t0
    print(json.dumps({"mode": mode, "rollouts": rollouts, "tokens": tokens, "peak_rss_gb": round(rss_gb(), 3),
                      "model_rss_gb": round(base, 3), "seconds": round(seconds, 2), "loss": float(loss)}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
