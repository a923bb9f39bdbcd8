"""Speed benchmarks: print figures and write them into docs/BENCHMARKS.md (between section markers).

    python benchmarks/bench.py                 # every fast section (what `just bench` runs)
    python benchmarks/bench.py sampling train  # chosen sections

Every comparison is a ratio measured in one run on one machine, both sides on the same model, prompts and
settings. Sections:
- sampling: the sample stage's engine (prefix sharing, length batching, finished-row removal) against a
  plain `model.generate(num_return_sequences=n)` loop, one prompt at a time.
- train: seconds per optimizer step and model-FLOPs utilisation of `thinkrl train` against the machine's
  matmul peak (THINKRL_FLOPS_PEAK, default 196 GFLOP/s fp32 measured on this 2-core machine).
"""

from __future__ import annotations

import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "BENCHMARKS.md"
POLICY = Path(os.environ.get("THINKRL_BENCH_POLICY", REPO / "data" / "tiny-policy"))


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def write_section(name: str, body: str) -> None:
    DOC.parent.mkdir(exist_ok=True)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\nFigures measured by `just bench` unless a section says otherwise.\n"
    block = f"<!-- bench:{name} -->\n{body.strip()}\n<!-- /bench:{name} -->"
    pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)


def policy_dir(tmp: Path) -> tuple[Path, str]:
    if (POLICY / "config.json").exists():
        return POLICY, f"warm-started tiny policy `{POLICY.relative_to(REPO) if POLICY.is_relative_to(REPO) else POLICY}`"
    from thinkrl.models import init_model

    return init_model("tiny", tmp / "tiny", seed=0), "tiny preset, random init (no warm-started policy found)"


def bench_sampling(tmp: Path) -> str:
    from thinkrl.engine.base import SamplingParams
    from thinkrl.engine.hf import HFEngine
    from thinkrl.problems import arith_task
    from thinkrl.sampling import derive_seed
    from thinkrl.templates import encode_prompt, render, resolve_template

    path, what = policy_dir(tmp)
    engine = HFEngine.from_pretrained(path)
    tok, model = engine.tokenizer, engine.model
    tmpl = resolve_template("auto", tok, model_dir=path)
    problems = arith_task(n=32, seed=77)
    prompts = [encode_prompt(render(tmpl, p["question"], tok), tok) for p in problems]
    n, max_tokens = 8, 128
    params = SamplingParams(n=n, temperature=1.0, max_tokens=max_tokens)
    seeds = [[derive_seed(0, 0, p["problem_id"], j) for j in range(n)] for p in problems]

    t0 = time.perf_counter()
    outs = engine.generate(prompts, params, seeds)
    t_engine = time.perf_counter() - t0
    tok_engine = sum(len(c.token_ids) for group in outs for c in group)

    eos = tok.eos_token_id
    torch.manual_seed(0)
    t0 = time.perf_counter()
    tok_plain = 0
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids])
            y = model.generate(x, attention_mask=torch.ones_like(x), do_sample=True, temperature=1.0, top_p=1.0,
                               top_k=0, max_new_tokens=max_tokens, num_return_sequences=n, eos_token_id=eos,
                               pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos)
            gen = y[:, x.shape[1]:]
            for row in gen.tolist():  # count up to and including EOS, as the engine does
                tok_plain += row.index(eos) + 1 if eos in row else len(row)
    t_plain = time.perf_counter() - t0
    r_engine, r_plain = tok_engine / t_engine, tok_plain / t_plain
    lines = [
        "## Sampling: thinkrl engine vs plain `model.generate`",
        "",
        f"Model: {what}. {len(prompts)} ArithChain prompts × n = {n}, T = 1.0, max {max_tokens} tokens, "
        f"fp32 on CPU ({machine()}).",
        "",
        "| engine | tokens | seconds | tokens/s |",
        "|---|---|---|---|",
        f"| thinkrl HFEngine (prefix shared, length batches) | {tok_engine} | {t_engine:.2f} | {r_engine:.0f} |",
        f"| `model.generate`, one prompt at a time | {tok_plain} | {t_plain:.2f} | {r_plain:.0f} |",
        "",
        f"**Ratio: {r_engine / r_plain:.2f}x** tokens/s (target ≥ 2x). Command: `just bench sampling`.",
    ]
    return "\n".join(lines)


SECTIONS = {"sampling": bench_sampling}


def main(argv: list[str]) -> None:
    names = argv or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        sys.exit(f"unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    torch.set_num_threads(int(os.environ.get("THINKRL_THREADS", os.cpu_count() or 1)))
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            body = SECTIONS[name](Path(tmp))
            print(body, "\n", flush=True)
            write_section(name, body)
    print(f"written to {DOC}")


if __name__ == "__main__":
    main(sys.argv[1:])
