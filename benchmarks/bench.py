"""Speed benchmarks: print figures and write them into docs/BENCHMARKS.md (between section markers).

    python benchmarks/bench.py                 # every fast section (what `just bench` runs)
    python benchmarks/bench.py sampling train  # chosen sections

Every comparison is a ratio measured in one run on one machine, both sides on the same model, prompts and
settings. Sections:
- sampling: the sample stage's engine (prefix sharing, length batching, finished-row removal) against a
  plain `model.generate(num_return_sequences=n)` loop, one prompt at a time.
- train: seconds per optimizer step and model-FLOPs utilisation of `thinkrl train` against the machine's
  matmul peak (196 GFLOP/s fp32 measured on this 2-core machine).
- judge: the rule judge's precision/recall of error steps against the exact oracle on the policy's own
  ArithChain rollouts, and its ProcessBench F1 (a reference figure).
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


def sample_rollouts_frame(path: Path, n_problems: int, n: int, seed: int, max_tokens: int = 160):
    """Rollouts of the policy on fresh ArithChain problems, through the sample stage's own function."""
    import polars as pl

    from thinkrl.engine.hf import HFEngine
    from thinkrl.problems import arith_task
    from thinkrl.sampling import SampleConfig, sample_part
    from thinkrl.templates import resolve_template

    engine = HFEngine.from_pretrained(path)
    tmpl = resolve_template("auto", engine.tokenizer, model_dir=path)
    problems = pl.DataFrame(arith_task(n=n_problems, seed=seed))
    cfg = SampleConfig(n=n, temperature=1.0, max_tokens=max_tokens, seed=seed)
    return pl.DataFrame(sample_part(problems, engine, cfg, tmpl, str(path)))


def bench_train(tmp: Path) -> str:
    import statistics

    from thinkrl.artifacts import ArtifactWriter, read_table
    from thinkrl.models import load_policy
    from thinkrl.segment import segment
    from thinkrl.trainer import TrainConfig, token_logprobs, train

    path, what = policy_dir(tmp)
    rollouts = sample_rollouts_frame(path, 40, 8, seed=11)
    model, _ = load_policy(path)
    segment(rollouts, None, "outcome", 1.0, ArtifactWriter(tmp / "t", "segment", {}),
            lambda p, c: token_logprobs(model, p, c))
    adv = read_table(tmp / "t", "advantages")
    cfg = TrainConfig(prompts_per_step=5, lr=1e-4, save_every=0)
    train(path, adv, cfg, tmp / "train")
    m = read_table(tmp / "train", "train_metrics")
    m = m.filter(~m["skipped"])
    secs, mfu = m["seconds"].to_list(), m["mfu"].to_list()
    toks = m["tokens"].to_list()
    lines = [
        "## Training: seconds per optimizer step and MFU",
        "",
        f"Model: {what}. {adv.height} rollouts kept of {rollouts.height} (40 ArithChain problems × 8, "
        f"outcome advantages, behaviour log-probs recomputed), 5 prompts × 8 rollouts per optimizer step, "
        f"fp32 on CPU ({machine()}). MFU = 6 × parameters × (prompt + completion tokens) / step seconds / "
        f"peak, peak = 196 GFLOP/s (this machine's measured fp32 matmul on 2 threads).",
        "",
        "| optimizer steps | median seconds/step | median completion tokens/step | median MFU |",
        "|---|---|---|---|",
        f"| {len(secs)} | {statistics.median(secs):.3f} | {statistics.median(toks):.0f} | "
        f"{100 * statistics.median(mfu):.1f}% |",
        "",
        "Command: `just bench train`.",
    ]
    return "\n".join(lines)


def bench_judge(tmp: Path) -> str:
    from thinkrl.judge import make_judge
    from thinkrl.judge_eval import oracle_suite, processbench_suite
    from thinkrl.problems import named_problems, resolve_data_dir

    path, what = policy_dir(tmp)
    rollouts = sample_rollouts_frame(path, 100, 4, seed=21)
    judge = make_judge("rule")
    t0 = time.perf_counter()
    o = oracle_suite(rollouts, judge)
    t_rule = time.perf_counter() - t0
    lines = [
        "## Judges: the rule judge against the exact oracle and on ProcessBench",
        "",
        f"ArithChain rollouts of the {what} (100 held-out problems × 4 samples, T = 1.0; "
        f"{int(rollouts['correct'].sum())} of {rollouts.height} correct). Error labels = `incorrect` (correct "
        "solutions) and `matched` (wrong solutions), per step, against `thinkrl.tasks.arith.oracle_label`.",
        "",
        "| judge | rollouts | precision | recall | exact error set | unknown | seconds |",
        "|---|---|---|---|---|---|---|",
        f"| rule | {o['items']} | {o['precision']:.3f} | {o['recall']:.3f} | {o['exact_interval_rate']:.3f} | "
        f"{o['unknown_rate']:.3f} | {t_rule:.2f} |",
        "",
    ]
    ddir = resolve_data_dir(None)
    if (ddir / "processbench").is_dir():
        lines += ["ProcessBench (first-error identification; F1 = harmonic mean of accuracy on erroneous and "
                  "on correct cases). Reference, not a target: GPT-4o 61.9, Qwen2.5-Math-PRM-7B 73.5 (4-subset "
                  "averages, published).", "",
                  "| judge | subset | cases | acc. erroneous | acc. correct | F1 |", "|---|---|---|---|---|---|"]
        for sub in ("gsm8k", "math", "olympiadbench", "omnimath"):
            r = processbench_suite(named_problems(f"processbench_{sub}", ddir), judge, sub)
            lines.append(f"| rule | {sub} | {r['items']} | {100 * r['acc_erroneous']:.1f} | "
                         f"{100 * r['acc_correct']:.1f} | {100 * r['f1']:.1f} |")
    else:
        lines.append(f"ProcessBench skipped: no processbench/ in the data directory {ddir}.")
    lines += ["", "Command: `just bench judge` (ProcessBench needs THINKRL_DATA_DIR)."]
    return "\n".join(lines)


SECTIONS = {"sampling": bench_sampling, "train": bench_train, "judge": bench_judge}


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
