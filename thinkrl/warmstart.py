"""Warm start: supervised training of a policy on the flawed ArithChain corpus (DESIGN §5).

    from thinkrl.warmstart import WarmstartConfig, warmstart
    warmstart("runs/tiny-init", "runs/tiny-ws", WarmstartConfig(minutes=4.5))

CLI: `thinkrl model warmstart --policy runs/tiny-init --out runs/tiny-ws --minutes 4.5`.

The corpus holds right steps, wrong steps caught by a reflection (`Wait, ..., not X.`), errors never
caught and redundant re-checks, so the warm-started policy is right sometimes, wrong sometimes and
reflects sometimes: the starting point RL needs. Each example is the chat-template prompt (exactly as
the sampler writes it, `thinkrl.json` template `chat-plain`) followed by the solution and eos; the loss
is the mean cross-entropy over solution + eos tokens (the prompt is masked).

Recipe and why (measured on 2 shared CPU cores; see docs/BENCHMARKS.md and the report of this module):
- batches of `batch_size` examples drawn from a seeded shuffle, grouped by length inside windows of
  `group_window` batches and right-padded: no attention mask is needed (causal attention never looks
  right) and padding stays a few percent, so a step costs ~60 tokens per example, not the longest.
- AdamW (betas 0.9/0.98, no weight decay), `warmup_steps` linear warm-up then cosine decay to
  `min_lr_frac` * lr over the run. With a `minutes` budget the schedule runs on the fraction of the
  training time budget spent (the run ends when the budget does, at the bottom of the cosine); with
  `steps` it runs on the step count, and then the same config and seed give identical weights on the
  same machine and thread count (a minutes run records its step count to rerun it with `steps`).
- `digit_weight` scales the loss of digit tokens in the solution: the numbers are what the policy
  must get right (the phrases around them are learned within a few dozen steps).
- gradient clipping at `grad_clip`; float32 weights; `threads` torch threads.
Nothing here is from the paper (its policies start from distilled reasoning models).

torch and the tokenizer libraries are imported by the functions that train, so WarmstartConfig and the skip
check (`is_up_to_date`) load without them (`thinkrl model warmstart --help` needs no torch).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from thinkrl.errors import ThinkrlError
from thinkrl.models import (
    check_model_dir,
    load_policy,
    prepare_out,
    read_thinkrl_json,
    recipe_matches,
    save_policy,
)
from thinkrl.settings import check_settings, setting
from thinkrl.tasks.arith import ArithConfig, CorpusConfig, corpus_stats, make_corpus

if TYPE_CHECKING:
    import torch

METRICS_JSON = "warmstart_metrics.json"
DEFAULT_MINUTES = 4.5  # with `thinkrl model init` (~10 s) inside the 5-minute target of DESIGN §5


@dataclass(frozen=True)
class WarmstartConfig:
    """Every setting of a warm start; saved as the recipe in thinkrl.json."""

    steps: int | None = setting(None, "optimizer steps (cosine over them; deterministic); default: as many as "
                                      "`minutes` allows", ge=1)
    minutes: float | None = setting(None, f"wall-clock budget of the whole call: corpus, training, saving "
                                          f"(default {DEFAULT_MINUTES} when steps is not given; with steps: a cap)",
                                    gt=0)
    batch_size: int = setting(32, "examples per optimizer step", ge=1)
    lr: float = setting(2e-3, "peak learning rate (AdamW)", gt=0, aliases=("learning_rate",))
    warmup_steps: int = setting(50, "linear warm-up steps before the cosine decay", ge=0)
    min_lr_frac: float = setting(0.05, "the cosine ends at this fraction of lr", ge=0, le=1)
    grad_clip: float = setting(1.0, "max global gradient norm (0: off)", ge=0)
    digit_weight: float = setting(1.0, "loss weight of digit tokens in the solution", ge=0)
    group_window: int = setting(32, "length grouping: sort this many batches' worth of shuffled examples by "
                                    "length", ge=1)
    corpus_size: int = setting(60000, "flawed ArithChain solutions to train on", ge=1)
    corpus_seed: int = setting(0, "seed of the corpus problems and flaws", ge=0)
    seed: int = setting(0, "seed of the data order", ge=0)
    p_err: float = setting(0.15, "corpus: probability that a step is wrong", ge=0, le=1)
    p_reflect: float = setting(0.5, "corpus: probability a wrong step is caught", ge=0, le=1)
    p_recheck: float = setting(0.1, "corpus: probability of a redundant re-check", ge=0, le=1)
    threads: int = setting(0, "torch CPU threads; 0 = auto: time 1, 2 (and 4) threads every few hundred steps and "
                              "keep the fastest (other processes on the cores can make 2 threads several times "
                              "slower than 1)", ge=0)

    def __post_init__(self) -> None:
        check_settings(self)  # the bounds declared above
        if self.steps is None and self.minutes is None:
            object.__setattr__(self, "minutes", DEFAULT_MINUTES)

    def corpus_config(self) -> CorpusConfig:
        return CorpusConfig(p_err=self.p_err, p_reflect=self.p_reflect, p_recheck=self.p_recheck)


# ---------------------------------------------------------------------------------------------------
# Data


@dataclass
class Encoded:
    """The tokenized corpus: per example the prompt length and prompt + solution + eos ids."""

    ids: list[list[int]]  # (N,) each (T_i,)
    prompt_len: list[int]  # (N,)

    def __len__(self) -> int:
        return len(self.ids)


def encode_corpus(examples, tok) -> Encoded:
    """Prompt = the chat template with one user turn and the generation prompt (as the sampler writes
    it); then the solution tokens and eos. Prompt and solution are tokenized apart, as in sampling."""
    convs = [[{"role": "user", "content": e.problem.question}] for e in examples]
    prompts = tok.apply_chat_template(convs, tokenize=False, add_generation_prompt=True)
    p_ids = tok(prompts, add_special_tokens=False)["input_ids"]
    s_ids = tok([e.solution_text for e in examples], add_special_tokens=False)["input_ids"]
    eos = tok.eos_token_id
    return Encoded([p + s + [eos] for p, s in zip(p_ids, s_ids, strict=True)], [len(p) for p in p_ids])


def batch_order(lengths: list[int], batch_size: int, window: int, rng: random.Random) -> list[list[int]]:
    """One epoch of batches (index lists): shuffle, sort by length inside windows of `window` batches,
    cut into batches, shuffle the batches. Deterministic for the rng state."""
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    batches: list[list[int]] = []
    span = batch_size * window
    for w in range(0, len(idx), span):
        chunk = sorted(idx[w:w + span], key=lambda i: lengths[i])
        batches.extend(chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def collate(enc: Encoded, rows: list[int], pad_id: int, digit_mask: torch.Tensor,
            digit_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids (B, T) right-padded, loss weights (B, T-1) for predicting token t+1 from t)."""
    import torch

    T = max(len(enc.ids[i]) for i in rows)
    x = torch.full((len(rows), T), pad_id, dtype=torch.long)
    w = torch.zeros((len(rows), T), dtype=torch.float32)
    for r, i in enumerate(rows):
        s = enc.ids[i]
        x[r, :len(s)] = torch.tensor(s, dtype=torch.long)
        w[r, enc.prompt_len[i]:len(s)] = 1.0  # solution + eos tokens are targets
    if digit_weight != 1.0:
        w = torch.where(digit_mask[x] & (w > 0), w * digit_weight, w)
    return x, w[:, 1:]


# ---------------------------------------------------------------------------------------------------
# Threads


class ThreadChooser:
    """Sets torch's thread count before each step. Fixed for threads >= 1; for 0 (auto) it runs
    `probe_steps` steps on each candidate, keeps the one with the lowest median seconds per token for
    the next `every` steps, then probes again. On a CPU shared with other processes, OpenMP barriers make
    2 threads up to 3-10x slower per step than 1 (measured here); on an idle one 2 threads are ~1.7x faster.
    The thread count does change the float bits (30 steps at 1 and at 2 threads give different weights), so auto
    (0) is not bit-reproducible on a loaded machine; a fixed count is (`threads_used` in the metrics says which ran)."""

    def __init__(self, threads: int, probe_steps: int = 6, every: int = 150):
        cpus = os.cpu_count() or 1
        self.candidates = [threads] if threads > 0 else sorted({c for c in (1, 2, 4) if c <= cpus})
        self.probe_steps, self.every = probe_steps, every
        self.best = self.candidates[-1]
        self.queue: list[int] = []
        self.probing = False
        self.samples: dict[int, list[float]] = {}
        self.used: dict[int, int] = {}

    def next(self) -> int:
        if len(self.candidates) == 1:
            t = self.candidates[0]
        else:
            if not self.queue:
                if self.probing:
                    med = {c: statistics.median(v[1:] or v) for c, v in self.samples.items() if v}
                    self.best = min(med, key=med.get) if med else self.best
                    self.queue, self.probing = [self.best] * self.every, False
                else:
                    self.queue = [c for c in self.candidates for _ in range(self.probe_steps)]
                    self.probing, self.samples = True, {c: [] for c in self.candidates}
            t = self.queue.pop(0)
        import torch

        if torch.get_num_threads() != t:
            torch.set_num_threads(t)
        self.used[t] = self.used.get(t, 0) + 1
        return t

    def record(self, threads: int, seconds: float, tokens: int) -> None:
        if self.probing and threads in self.samples:
            self.samples[threads].append(seconds / max(tokens, 1))


# ---------------------------------------------------------------------------------------------------
# Schedule and loop


def lr_at(cfg: WarmstartConfig, step: int, frac: float) -> float:
    """lr for optimizer step `step` (0-based); frac = share of the run done (steps or time)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = min(max(frac, 0.0), 1.0)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))


def _loss(model, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Weighted mean next-token loss; the output layer runs only where a target is trained."""
    import torch.nn.functional as F

    hidden = model.base_model(input_ids=x, use_cache=False).last_hidden_state[:, :-1]  # (B, T-1, H); no mask:
    # right padding and causal attention, so no real token ever attends a pad
    keep = w > 0  # (B, T-1)
    logits = model.get_output_embeddings()(hidden[keep])  # (n, V)
    nll = F.cross_entropy(logits.float(), x[:, 1:][keep], reduction="none")  # (n,)
    wk = w[keep]
    return (nll * wk).sum() / wk.sum(), int(keep.sum())


ProgressFn = Callable[[dict], None]


def _adamw(model, lr: float) -> torch.optim.Optimizer:
    """AdamW, fused where torch has it (on CPU ~10x faster than the per-tensor loop: ~7% of a step)."""
    import torch

    kw = {"lr": lr, "betas": (0.9, 0.98), "eps": 1e-8, "weight_decay": 0.0}
    try:
        return torch.optim.AdamW(model.parameters(), fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(model.parameters(), **kw)


def train(model, tok, enc: Encoded, cfg: WarmstartConfig, deadline: float | None,
          progress: ProgressFn | None = None) -> dict:
    """The optimizer loop; returns metrics. deadline: time.monotonic() at which training must end."""
    import torch

    from thinkrl.tokenizer import digit_ids

    torch.manual_seed(cfg.seed)
    rng = random.Random(f"thinkrl.warmstart:{cfg.seed}")
    lengths = [len(s) for s in enc.ids]
    digit_mask = torch.zeros(len(tok), dtype=torch.bool)
    digit_mask[list(digit_ids(tok))] = True
    opt = _adamw(model, cfg.lr)
    model.train()
    threads = ThreadChooser(cfg.threads)
    t0 = time.monotonic()
    budget = None if deadline is None else max(deadline - t0, 1e-3)
    step, tokens, ema, curve, order, nan_steps, skipped = 0, 0, None, [], [], 0, 0
    while True:
        now = time.monotonic()
        if cfg.steps is not None and step >= cfg.steps:
            break
        if deadline is not None and now >= deadline and step > 0:  # at least one step, whatever the budget
            break
        frac = step / cfg.steps if cfg.steps is not None else (now - t0) / budget
        lr = lr_at(cfg, step, frac)
        for g in opt.param_groups:
            g["lr"] = lr
        if not order:
            order = batch_order(lengths, cfg.batch_size, cfg.group_window, rng)
        n_threads, t_step = threads.next(), time.monotonic()
        x, w = collate(enc, order.pop(), tok.pad_token_id, digit_mask, cfg.digit_weight)
        loss, n_tok = _loss(model, x, w)
        if not torch.isfinite(loss):
            nan_steps, skipped = nan_steps + 1, skipped + 1
            opt.zero_grad(set_to_none=True)
            if nan_steps > 10:
                raise ThinkrlError(f"warm start: loss was NaN/inf {nan_steps} steps in a row at step {step}; "
                                   f"lower --lr (now {cfg.lr})")
            step += 1
            continue
        nan_steps = 0
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else 1e30)
        opt.step()
        opt.zero_grad(set_to_none=True)
        threads.record(n_threads, time.monotonic() - t_step, x.numel())
        step += 1
        tokens += x.numel()
        lv = float(loss.detach())
        ema = lv if ema is None else 0.95 * ema + 0.05 * lv
        elapsed = time.monotonic() - t0
        if step % 10 == 0 or step == 1:
            curve.append({"step": step, "loss": round(lv, 5), "loss_ema": round(ema, 5), "lr": lr,
                          "grad_norm": round(float(gnorm), 4), "seconds": round(elapsed, 2)})
        if progress is not None:
            progress({"step": step, "total_steps": cfg.steps, "loss": lv, "loss_ema": ema, "lr": lr,
                      "tokens_per_s": tokens / max(elapsed, 1e-9), "elapsed": elapsed,
                      "frac": frac if cfg.steps is None else step / cfg.steps,
                      "budget_s": budget, "target_tokens": n_tok})
    seconds = time.monotonic() - t0
    return {"steps": step, "seconds": round(seconds, 2), "tokens": tokens,
            "tokens_per_s": round(tokens / max(seconds, 1e-9), 1), "final_loss_ema": ema,
            "stopped_by": "steps" if cfg.steps is not None and step >= cfg.steps else "time",
            "threads_used": {str(k): v for k, v in sorted(threads.used.items())}, "nonfinite_steps": skipped,
            "loss_curve": curve}


def warmstart(model_dir: str | Path, out_dir: str | Path, cfg: WarmstartConfig = WarmstartConfig(),
              progress: ProgressFn | None = None, force: bool = False,
              arith_cfg: ArithConfig = ArithConfig()) -> Path:
    """SFT model_dir on a flawed ArithChain corpus and save the result (HF directory + tokenizer +
    thinkrl.json with the recipe + warmstart_metrics.json) at out_dir."""
    import torch

    from thinkrl.tokenizer import check_tokenizer

    start = time.monotonic()
    deadline = None if cfg.minutes is None else start + cfg.minutes * 60
    out_dir = Path(out_dir)
    settings = _settings(model_dir, cfg, arith_cfg)
    if not force and up_to_date(out_dir, settings):
        return out_dir
    prepare_out(out_dir, force)  # before the minutes of training, not after
    prev_threads = torch.get_num_threads()
    try:
        model, tok = load_policy(model_dir)
        check_tokenizer(tok)
        base = read_thinkrl_json(model_dir)
        examples = make_corpus(cfg.corpus_size, cfg.corpus_seed, arith_cfg, cfg.corpus_config())
        enc = encode_corpus(examples, tok)
        prep_s = time.monotonic() - start
        # Leave room to save (a few seconds for a small model) inside the budget.
        train_deadline = None if deadline is None else deadline - max(3.0, 0.02 * cfg.minutes * 60)
        metrics = train(model, tok, enc, cfg, train_deadline, progress)
    finally:
        torch.set_num_threads(prev_threads)
    metrics = {"prep_seconds": round(prep_s, 2), **metrics, "corpus": corpus_stats(examples),
               "n_examples": len(enc), "mean_tokens": sum(map(len, enc.ids)) / max(len(enc), 1)}
    recipe = dict(base.get("recipe", {}))
    recipe["warmstart"] = {**settings, "steps_done": metrics["steps"], "base": str(model_dir)}
    meta = {"preset": base.get("preset"), "recipe": recipe}
    save_policy(model, tok, out_dir, meta, force=force,
                extra_files={METRICS_JSON: json.dumps(metrics, indent=2) + "\n"})
    return out_dir


def _settings(model_dir: str | Path, cfg: WarmstartConfig, arith_cfg: ArithConfig) -> dict:
    """What determines a warm start's result: the config, the task config and the base weights' digest."""
    d = check_model_dir(model_dir)
    h = hashlib.sha256()
    for f in sorted(d.glob("*.safetensors")) + [d / "config.json"]:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return json.loads(json.dumps({**asdict(cfg), "arith": asdict(arith_cfg), "base_sha256": h.hexdigest()}))


def up_to_date(out_dir: str | Path, settings: dict) -> bool:
    """True if out_dir already holds a warm start with these settings (a rerun skips itself)."""
    return recipe_matches(out_dir, "warmstart", settings)


def is_up_to_date(model_dir: str | Path, out_dir: str | Path, cfg: WarmstartConfig,
                  arith_cfg: ArithConfig = ArithConfig()) -> bool:
    """Would warmstart(model_dir, out_dir, cfg) skip itself?"""
    return up_to_date(out_dir, _settings(model_dir, cfg, arith_cfg))
