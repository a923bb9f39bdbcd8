"""One generation run for `just bench kvcache`, in a fresh process (its allocator starts cold, as a stage's does):

    python benchmarks/kvcache_run.py POLICY inplace|dynamic

Prints one JSON line: seconds, generated tokens, and a digest of the token ids (both caches must give the same)."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import thinkrl.engine.hf as hf  # noqa: E402
from thinkrl.engine.base import SamplingParams  # noqa: E402
from thinkrl.problems import arith_task  # noqa: E402
from thinkrl.templates import encode_prompt, render, resolve_template  # noqa: E402

PROMPTS, N, MAX_TOKENS = 8, 8, 450


def main() -> None:
    path, kind = sys.argv[1], sys.argv[2]
    torch.set_num_threads(2)
    if kind == "dynamic":
        hf.growing_cache = lambda config, capacity: hf.DynamicCache(config=config)
    engine = hf.HFEngine.from_pretrained(path)
    tok = engine.tokenizer
    tmpl = resolve_template("auto", tok, model_dir=path)
    prompts = [encode_prompt(render(tmpl, p["question"], tok), tok) for p in arith_task(n=PROMPTS, seed=77)]
    seeds = [[1000 * i + j for j in range(N)] for i in range(len(prompts))]
    t0 = time.perf_counter()
    outs = engine.generate(prompts, SamplingParams(n=N, temperature=1.0, max_tokens=MAX_TOKENS), seeds)
    seconds = time.perf_counter() - t0
    ids = [c.token_ids for o in outs for c in o]
    print(json.dumps({"seconds": seconds, "tokens": sum(map(len, ids)),
                      "digest": hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]}))


if __name__ == "__main__":
    main()
