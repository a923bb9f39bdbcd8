"""Generation with Hugging Face transformers: batched, KV-cached, prefix-shared, seed-deterministic.

    engine = HFEngine.from_pretrained("runs/tiny", dtype="auto", device="cpu")
    outs = engine.generate(prompt_ids, SamplingParams(n=8, max_tokens=256), seeds)

How it works, per call:
1. Prompts are sorted by length and grouped into batches whose rows x (longest prompt + max_tokens)
   stay within `batch_tokens` (a batch holds at least one prompt, i.e. n rows).
2. Prefill: each prompt of a batch is run ONCE (left padding, attention_mask, position_ids counted
   from the first real token), keeping only the last position's logits. The DynamicCache and those
   logits are then repeated n times along the batch dimension (`batch_repeat_interleave`), so the n
   samples of a prompt share its prefill instead of recomputing it.
3. Decode: one token per row per step, with the cache. A row ends at an EOS id (tokenizer EOS and the
   model's generation_config EOS ids), when its decoded tail contains a stop string, or at max_tokens.
   Finished rows are removed from the batch at once (`batch_select_indices` on the cache, and the same
   rows of the mask, positions and noise), so a finished sequence costs nothing afterwards.
   The cache's layers keep their keys and values in buffers sized for prompt + max_tokens at the prefill
   (`GrowingLayer`): a step writes its one position in place, where transformers' DynamicLayer
   concatenates, copying the whole cache of every layer at every step.

Log-prob convention: `logprobs[k] = log_softmax(logits / T)[token_ids[k]]` in float32, before top-p
(T = 1 when greedy), from the same forward pass that chose the token.

Seed scheme: sample j of prompt i draws `max_tokens` uniforms u_0.. from its own CPU
`torch.Generator` seeded with `seeds[i][j]` (mod 2^64), and step t picks its token by inverse CDF
with u_t: the first token whose cumulative probability exceeds u_t x (kept mass), over the vocabulary
in id order (top_p = 1) or in the stable descending-probability order after the top-p cut (top_p < 1).
A sample's tokens therefore depend only on its prompt, its seed and the model's logits, never on which
other prompts share its batch: up to the float effects of padding, a prompt generated alone or in any
batch gives the same tokens. Same inputs and seeds on CPU give identical outputs.

Where it departs from vLLM:
- vLLM seeds a request (all n samples) with one generator and samples with its own kernels, so the
  same seed gives different tokens in the two engines; each engine is deterministic on its own.
- vLLM returns log-probs of the raw logits (before temperature) by default; this engine returns them
  after temperature, before top-p. They agree at T = 1.
- No repetition penalty, top-k, min-p or other generation_config processors: plain T / top-p sampling.
- Static batching: a new prompt waits for its batch, finished rows are dropped but not refilled.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

from thinkrl.engine.base import (
    Completion,
    Progress,
    SamplingParams,
    check_request,
    completion_text,
    eos_token_ids,
    find_stop,
)
from thinkrl.errors import ThinkrlError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are views of buffers of `capacity` positions (more when a longer
    update comes): `update` writes the new positions in place instead of concatenating. The views hold the
    same values as DynamicLayer's tensors, so attention computes the same thing. Only what the engine uses is
    supported: update, batch_repeat_interleave, batch_select_indices, get_seq_length."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None   # (B, H, capacity, D) each
        self._n = 0                                                      # positions filled

    def _views(self) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self._buffers
        self.keys, self.values = k[..., :self._n, :], v[..., :self._n, :]
        return self.keys, self.values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self._buffers is None:  # what DynamicLayer's lazy_initialization sets (its signature varies by release)
            self.dtype, self.device, self.is_initialized = key_states.dtype, key_states.device, True
        q = key_states.shape[-2]
        if self._buffers is None or self._n + q > self._buffers[0].shape[-2]:
            cap = max(self.capacity, self._n + q)
            grown = []
            for old, new in zip(self._buffers or (None, None), (key_states, value_states), strict=True):
                buf = new.new_empty((*new.shape[:-2], cap, new.shape[-1]))
                if old is not None:
                    buf[..., :self._n, :] = old[..., :self._n, :]
                grown.append(buf)
            self._buffers = (grown[0], grown[1])
        k, v = self._buffers
        k[..., self._n:self._n + q, :] = key_states
        v[..., self._n:self._n + q, :] = value_states
        self._n += q
        return self._views()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self._buffers is not None:
            self._buffers = tuple(b.repeat_interleave(repeats, dim=0) for b in self._buffers)
            self._views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._buffers is not None:
            self._buffers = tuple(b[indices, ...] for b in self._buffers)
            self._views()


def growing_cache(config, capacity: int) -> DynamicCache:
    """A DynamicCache for `config` whose full-attention layers are GrowingLayers of `capacity` positions
    (sliding-window layers stay as transformers makes them)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
DEFAULT_BATCH_TOKENS = 65536  # rows x (prompt + max_tokens) per batch


def sample_tokens(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float,
                  top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row. logits (R, V) float32, uniforms (R,) in [0, 1) -> tokens (R,), logprobs (R,).

    Row-wise only: a row's result depends on its logits and its uniform, nothing else in the batch.
    Log-probs are log_softmax(logits / T) before the top-p cut; greedy (T = 0) reports log_softmax(logits)."""
    if temperature == 0:
        tokens = logits.argmax(-1)  # first maximal index, as transformers' greedy search
        return tokens, torch.log_softmax(logits, -1).gather(1, tokens[:, None])[:, 0]
    logp = torch.log_softmax(logits / temperature, -1)  # (R, V)
    probs = logp.double().exp()
    order = None
    if top_p < 1:
        probs, order = probs.sort(dim=-1, descending=True, stable=True)
        mass_before = probs.cumsum(-1) - probs
        probs = probs.masked_fill(mass_before >= top_p, 0.0)  # the first token always stays
    cdf = probs.cumsum(-1)  # (R, V)
    total = cdf[:, -1:]
    target = torch.minimum(uniforms[:, None].to(cdf) * total, torch.nextafter(total, torch.zeros_like(total)))
    idx = torch.searchsorted(cdf, target, right=True)  # first index with cdf > target: a token of mass > 0
    tokens = (idx if order is None else order.gather(1, idx))[:, 0]
    return tokens, logp.gather(1, tokens[:, None])[:, 0]


def plan_batches(lengths: Sequence[int], n: int, max_tokens: int, batch_tokens: int) -> list[list[int]]:
    """Prompt indices grouped by ascending length; rows x (longest + max_tokens) <= batch_tokens per batch."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * n * (lengths[i] + max_tokens) <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class HFEngine:
    """A transformers causal LM behind the Engine interface (see the module docstring)."""

    name = "hf"

    def __init__(self, model, tokenizer: PreTrainedTokenizerBase, *,
                 batch_tokens: int = DEFAULT_BATCH_TOKENS):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_tokens = batch_tokens
        self.device = next(model.parameters()).device
        self.eos_ids = eos_token_ids(tokenizer, getattr(model, "generation_config", None))
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids, default=0)
        self._keep_last = "logits_to_keep" in inspect.signature(model.forward).parameters

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: str = "auto", device: str = "cpu",
                        batch_tokens: int = DEFAULT_BATCH_TOKENS) -> HFEngine:
        """Load a checkpoint directory. dtype auto = float32 on CPU, bfloat16 on CUDA."""
        if dtype not in ("auto", *DTYPES):
            raise ThinkrlError(f"hf engine: dtype must be auto, float32 or bfloat16, got {dtype!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ThinkrlError(f"hf engine: device {device!r} asked for, but CUDA is not available")
        if dtype == "auto":
            dtype = "float32" if device == "cpu" else "bfloat16"
        from thinkrl.models import check_model_dir, load_causal_lm, load_tokenizer

        check_model_dir(path)  # one line naming the directory and what is wrong with it, before any load
        tokenizer = load_tokenizer(path)
        model = load_causal_lm(path, DTYPES[dtype])
        return cls(model.to(device), tokenizer, batch_tokens=batch_tokens)

    def reload(self, path: str | Path) -> None:
        """The weights of `path`, in this engine's dtype and device (a small model loads in the time a weight
        copy would take, so it is loaded and swapped in)."""
        from thinkrl.models import check_model_dir, load_tokenizer

        check_model_dir(path)  # a broken directory fails here, with the engine's weights still in place
        tokens = len(load_tokenizer(path))
        if tokens != len(self.tokenizer):
            raise ThinkrlError(f"hf engine: {path} has another tokenizer ({tokens} tokens, this engine "
                               f"{len(self.tokenizer)}); build a new engine for it")
        dtype = next(k for k, v in DTYPES.items() if v == next(self.model.parameters()).dtype)
        self.model = None  # free the old weights before the new ones load (one model in memory, not two)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        fresh = HFEngine.from_pretrained(path, dtype=dtype, device=str(self.device), batch_tokens=self.batch_tokens)
        self.model, self.eos_ids = fresh.model, fresh.eos_ids

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], params: SamplingParams, seeds: list[list[int]],
                 progress: Progress | None = None) -> list[list[Completion]]:
        check_request(prompts, params, seeds)
        out: list[list[Completion]] = [[] for _ in prompts]
        lengths = [len(p) for p in prompts]
        for batch in plan_batches(lengths, params.n, params.max_tokens, self.batch_tokens):
            done = self._generate_batch([prompts[i] for i in batch], params, [seeds[i] for i in batch],
                                        progress)
            for i, completions in zip(batch, done, strict=True):
                out[i] = completions
        return out

    def _prefill(self, prompts: list[list[int]], max_tokens: int):
        """Run each prompt once, left-padded, into a cache with room for max_tokens more positions.

        -> last logits (P, V) float32, cache, attention mask (P, L), next position (P,)."""
        P, L = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((P, L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((P, L), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, L - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[r, L - len(p):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (P, L): 0 at each prompt's first real token
        cache = growing_cache(self.model.config, L + max_tokens)
        extra = {"logits_to_keep": 1} if self._keep_last else {}
        res = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True, **extra)
        return res.logits[:, -1, :].float(), res.past_key_values, mask, positions[:, -1] + 1

    def _hit_stop(self, ids: list[int], stop: tuple[str, ...], tail: int) -> bool:
        """Whether the decoded last `tail` tokens hold a stop string (cheap: only the tail, each step)."""
        if not stop:
            return False
        return find_stop(self.tokenizer.decode(ids[-tail:], skip_special_tokens=True), stop) >= 0

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams, seeds: list[list[int]],
                        progress: Progress | None) -> list[list[Completion]]:
        n, T = params.n, params.max_tokens
        logits, cache, mask, pos = self._prefill(prompts, T)
        if n > 1:  # prefix sharing: copy each prompt's cache to its n sample rows
            cache.batch_repeat_interleave(n)
            logits, mask, pos = (x.repeat_interleave(n, dim=0) for x in (logits, mask, pos))
        R = len(prompts) * n  # rows; row r is sample r % n of prompt r // n
        noise = torch.stack([torch.rand(T, generator=torch.Generator().manual_seed(int(s) % 2**64),
                                        dtype=torch.float64) for row in seeds for s in row])  # (R, T)
        tokens: list[list[int]] = [[] for _ in range(R)]
        logps: list[list[float]] = [[] for _ in range(R)]
        reasons = ["length"] * R
        live = list(range(R))  # batch position -> row
        tail = max((len(s) for s in params.stop), default=0) + 4  # tokens decoded for the stop check
        for t in range(T):
            tok, lp = sample_tokens(logits, noise[:, t], params.temperature, params.top_p)
            keep = []
            for k, (row, tk, lk) in enumerate(zip(live, tok.tolist(), lp.tolist(), strict=True)):
                tokens[row].append(tk)
                logps[row].append(lk)
                if tk in self.eos_ids or self._hit_stop(tokens[row], params.stop, tail):
                    reasons[row] = "stop"
                else:
                    keep.append(k)
            if progress is not None:
                progress(len(live), len(live) - len(keep) if t < T - 1 else len(live))
            if not keep or t == T - 1:
                break
            if len(keep) < len(live):  # drop finished rows from the batch
                sel = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(sel)
                mask, pos, tok, noise = mask[sel], pos[sel], tok[sel], noise[sel.cpu()]
                live = [live[k] for k in keep]
            mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)  # (B, past + 1)
            res = self.model(input_ids=tok[:, None], attention_mask=mask, position_ids=pos[:, None],
                             past_key_values=cache, use_cache=True)
            logits, pos = res.logits[:, -1, :].float(), pos + 1
        texts = [completion_text(self.tokenizer, tokens[r], self.eos_ids, params.stop) for r in range(R)]
        rows = [Completion(texts[r], tokens[r], logps[r], reasons[r]) for r in range(R)]
        return [rows[p * n:(p + 1) * n] for p in range(len(prompts))]
