"""The TRL side of `just bench trl`: Hugging Face TRL's GRPOTrainer on the prompts thinkrl rendered, timed.

Runs inside the TRL virtualenv (TRL needs a newer transformers than thinkrl pins), never imports thinkrl:

    .bench/trl-venv/bin/python benchmarks/trl_grpo.py --model runs/bench/start --prompts prompts.jsonl \\
        --steps 10 --prompts-per-step 5 --steps-per-generation 10 --out-dir /tmp/trl-out

`--prompts` is a JSONL of {"prompt", "answer", "prompt_ids"}: `prompt` the text thinkrl's template rendered (passed to
TRL as a plain-text, non-conversational prompt), `prompt_ids` thinkrl's token ids for it; the run stops before
training unless TRL's own tokenization of every prompt gives exactly those ids. The last stdout line is one JSON
object (figures below); everything else goes to stderr.

Settings matched to `thinkrl run` (benchmarks/bench.py, section trl): fp32 on CPU, no vLLM, G = --num-generations,
--prompts-per-step prompts x G completions per optimizer step in one micro-batch, T = 1, top-p 1, top-k off,
β = 0, loss_type `grpo` (thinkrl's seq-mean-token-mean), ε = 0.2 both sides, one pass (num_iterations 1), AdamW
lr constant, no warm-up, weight decay 0, gradient norm clipped to 1, no gradient checkpointing (TRL's default is
on; thinkrl's off), dataset order kept (shuffle_dataset off: step k takes rows k·B.., as thinkrl's rounds do).
`--steps-per-generation S` generates S steps' prompts at once (S = steps: all of them, then the steps; TRL then
computes log π_old over the whole generation batch and shuffles it across the steps); S = 1 generates before every
step, and TRL skips the log π_old pass (on-policy: the ratio is 1).

Reward: 1 when the last `\\boxed{...}` of the completion equals the gold answer after dropping spaces, commas, `$`
and a final `.`, or when both parse as numbers that are equal; else 0. thinkrl grades with math-verify in worker
processes; on ArithChain's integer answers the verdicts agree, and this keeps TRL's grading cost near zero.

Timing (seconds, summed over the run): generate (model.generate), reward, old_logprobs (TRL's no-grad log π_old
pass), rollout (TRL's whole `_generate_and_score_completions`: generate + decode + reward + log π_old + advantages),
loss_forward (policy forward + GRPO loss, `compute_loss`), backward, optimizer (optimizer.step only; clipping and
zero_grad fall in `other_in_steps`), steps (sum of optimizer steps, callbacks on_step_begin..on_step_end), and
imports / setup (model load, dataset, trainer init) / train (trainer.train()) of this process.
Tokens: generated = completion tokens up to and including the first EOS; trained = completion tokens in the loss
mask (TRL keeps rollouts with zero advantage: their tokens are computed, with zero gradient), of them those with a
nonzero advantage; padded positions = prompt + completion positions of the loss batches, padding included.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402

for _k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_k, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

T_IMPORTED = time.perf_counter()


# ------------------------------------------------------------------------------------------------ reward
def last_boxed(text: str) -> str | None:
    i = text.rfind("\\boxed{")
    if i < 0:
        return None
    depth, j = 1, i + len("\\boxed{")
    for k in range(j, len(text)):
        depth += {"{": 1, "}": -1}.get(text[k], 0)
        if depth == 0:
            return text[j:k]
    return None


def _norm(s: str) -> str:
    return re.sub(r"[\s,$]", "", s).rstrip(".")


def same_answer(pred: str | None, gold: str) -> bool:
    if pred is None:
        return False
    a, b = _norm(pred), _norm(gold)
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------------ timing
class Clock:
    def __init__(self) -> None:
        self.s: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def add(self, key: str, seconds: float) -> None:
        self.s[key] = self.s.get(key, 0.0) + seconds
        self.calls[key] = self.calls.get(key, 0) + 1

    def wrap(self, key: str, fn, before=None, after=None):
        def timed(*a, **k):
            if before is not None:
                before(*a, **k)
            t = time.perf_counter()
            try:
                out = fn(*a, **k)
            finally:
                self.add(key, time.perf_counter() - t)
            if after is not None:
                after(out, *a, **k)
            return out

        return timed


class StepClock(TrainerCallback):
    def __init__(self, clock: Clock) -> None:
        self.clock, self.t_step, self.t_opt = clock, 0.0, 0.0
        self.step_seconds: list[float] = []

    def on_step_begin(self, args, state, control, **kw):
        self.t_step = time.perf_counter()

    def on_pre_optimizer_step(self, args, state, control, **kw):
        self.t_opt = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kw):
        self.clock.add("optimizer", time.perf_counter() - self.t_opt)

    def on_step_end(self, args, state, control, **kw):
        self.step_seconds.append(time.perf_counter() - self.t_step)


# ------------------------------------------------------------------------------------------------ run
def load_rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def check_prompt_ids(tok, rows: list[dict]) -> int:
    """TRL tokenizes a plain-text prompt as `processing_class(text=prompts)`: every prompt must give thinkrl's ids."""
    ids = tok(text=[r["prompt"] for r in rows])["input_ids"]
    bad = [i for i, (got, r) in enumerate(zip(ids, rows, strict=True)) if list(got) != list(r["prompt_ids"])]
    if bad:
        i = bad[0]
        sys.exit(f"trl_grpo: {len(bad)} prompts tokenize differently under TRL than under thinkrl; first, row {i}: "
                 f"{list(ids[i])[:12]}... vs {rows[i]['prompt_ids'][:12]}...")
    return sum(len(x) for x in ids)


def grpo_config(args, out_dir: str) -> tuple[GRPOConfig, list[str]]:
    wanted = dict(
        output_dir=out_dir, use_vllm=False, use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False, activation_checkpointing=False,
        num_generations=args.num_generations, per_device_train_batch_size=args.prompts_per_step * args.num_generations,
        gradient_accumulation_steps=1, steps_per_generation=args.steps_per_generation, num_iterations=1,
        max_completion_length=args.max_completion_length, temperature=args.temperature, top_p=1.0, top_k=0,
        beta=0.0, loss_type="grpo", epsilon=0.2, scale_rewards="group", learning_rate=args.lr,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, weight_decay=0.0,
        max_steps=args.steps, shuffle_dataset=False, seed=args.seed, data_seed=args.seed,
        logging_steps=1, report_to="none", save_strategy="no", dataloader_num_workers=0, disable_tqdm=True,
        log_completions=False,
    )
    fields = GRPOConfig.__dataclass_fields__
    missing = [k for k in wanted if k not in fields]
    return GRPOConfig(**{k: v for k, v in wanted.items() if k in fields}), missing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a save_pretrained model directory with its tokenizer")
    ap.add_argument("--prompts", required=True, help="JSONL of {prompt, answer, prompt_ids}")
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps")
    ap.add_argument("--prompts-per-step", type=int, default=5)
    ap.add_argument("--num-generations", type=int, default=8)
    ap.add_argument("--steps-per-generation", type=int, default=1)
    ap.add_argument("--max-completion-length", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", required=True, help="TRL's output_dir (nothing is saved there)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    rows = load_rows(args.prompts)
    tok = AutoTokenizer.from_pretrained(args.model)
    prompt_tokens = check_prompt_ids(tok, rows)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    dataset = Dataset.from_list([{"prompt": r["prompt"], "answer": str(r["answer"])} for r in rows])
    clock = Clock()

    def boxed_reward(prompts, completions, answer, **kw):
        t = time.perf_counter()
        out = [1.0 if same_answer(last_boxed(c), a) else 0.0 for c, a in zip(completions, answer, strict=True)]
        clock.add("reward", time.perf_counter() - t)
        return out

    boxed_reward.__name__ = "boxed_reward"
    cfg, missing = grpo_config(args, args.out_dir)
    steps = StepClock(clock)
    trainer = GRPOTrainer(model=model, reward_funcs=boxed_reward, args=cfg, train_dataset=dataset,
                          processing_class=tok, callbacks=[steps])

    gen = dict.fromkeys(("sequences", "completion_tokens", "decode_positions", "prompt_positions"), 0)
    eos = torch.tensor(trainer.eos_token_ids)

    def count_generated(out, *a, **k):
        plen = k["input_ids"].shape[1]
        comp = out[:, plen:]
        is_eos = torch.isin(comp, eos)
        n = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, torch.full((comp.shape[0],), comp.shape[1]))
        gen["sequences"] += comp.shape[0]
        gen["completion_tokens"] += int(n.sum())
        gen["decode_positions"] += comp.numel()
        gen["prompt_positions"] += comp.shape[0] * plen

    trained = dict.fromkeys(("sequences", "zero_advantage_sequences", "completion_tokens",
                             "nonzero_advantage_tokens", "prompt_tokens", "padded_positions"), 0)

    def count_trained(model_, inputs, *a, **k):
        cm, pm, adv = inputs["completion_mask"], inputs["prompt_mask"], inputs["advantages"]
        nonzero = (adv != 0).reshape(adv.shape[0], -1).any(1)
        trained["sequences"] += cm.shape[0]
        trained["zero_advantage_sequences"] += int((~nonzero).sum())
        trained["completion_tokens"] += int(cm.sum())
        trained["nonzero_advantage_tokens"] += int(cm[nonzero].sum())
        trained["prompt_tokens"] += int(pm.sum())
        trained["padded_positions"] += cm.numel() + pm.numel()

    old_pass = dict.fromkeys(("calls", "tokens", "padded_positions"), 0)
    logps = trainer._get_per_token_logps_and_entropies

    def logps_timed(model_, input_ids, attention_mask, *a, **k):
        if torch.is_grad_enabled():  # the loss forward (timed within loss_forward)
            return logps(model_, input_ids, attention_mask, *a, **k)
        t = time.perf_counter()
        out = logps(model_, input_ids, attention_mask, *a, **k)
        clock.add("old_logprobs", time.perf_counter() - t)
        old_pass["calls"] += 1
        old_pass["tokens"] += int(attention_mask.sum())
        old_pass["padded_positions"] += attention_mask.numel()
        return out

    trainer.model.generate = clock.wrap("generate", trainer.model.generate, after=count_generated)
    trainer._generate_and_score_completions = clock.wrap("rollout", trainer._generate_and_score_completions)
    trainer._get_per_token_logps_and_entropies = logps_timed
    trainer.compute_loss = clock.wrap("loss_forward", trainer.compute_loss, before=count_trained)
    trainer.accelerator.backward = clock.wrap("backward", trainer.accelerator.backward)
    setup_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    out = trainer.train()
    train_s = time.perf_counter() - t0
    s = clock.s
    steps_s = sum(steps.step_seconds)
    in_steps = sum(s.get(k, 0.0) for k in ("rollout", "loss_forward", "backward", "optimizer"))
    rewards = [log["reward"] for log in trainer.state.log_history if "reward" in log]
    result = {
        "tool": "trl", "model": args.model, "prompts_file": args.prompts, "rows": len(rows),
        "prompt_tokens_per_prompt": prompt_tokens / max(len(rows), 1),
        "steps": len(steps.step_seconds), "prompts_per_step": args.prompts_per_step,
        "num_generations": args.num_generations, "steps_per_generation": args.steps_per_generation,
        "max_completion_length": args.max_completion_length, "lr": args.lr, "threads": torch.get_num_threads(),
        "optim": str(cfg.optim), "config_fields_missing": missing,
        "n_params": sum(p.numel() for p in model.parameters()),
        "seconds": {"imports": T_IMPORTED - T_START, "setup": setup_s, "train": train_s, "steps": steps_s,
                    "generate": s.get("generate", 0.0), "reward": s.get("reward", 0.0),
                    "old_logprobs": s.get("old_logprobs", 0.0), "rollout": s.get("rollout", 0.0),
                    "loss_forward": s.get("loss_forward", 0.0), "backward": s.get("backward", 0.0),
                    "optimizer": s.get("optimizer", 0.0), "other_in_steps": steps_s - in_steps,
                    "process": time.perf_counter() - T_START},
        "calls": clock.calls, "step_seconds": steps.step_seconds,
        "generated": gen, "trained": trained, "old_logprob_pass": old_pass,
        "reward_mean_per_step": rewards, "train_loss": getattr(out, "training_loss", None),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
