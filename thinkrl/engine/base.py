"""The generation-engine interface: sampling settings in, completions with log-probs out.

    params = SamplingParams(n=8, temperature=1.0, top_p=1.0, max_tokens=256, stop=("\\n\\n\\n",))
    outs = engine.generate(prompt_ids, params, seeds)      # outs[i][j]: sample j of prompt i
    outs[0][0].text, outs[0][0].token_ids, outs[0][0].logprobs, outs[0][0].finish_reason

Every engine (transformers in `hf.py`, vLLM in `vllm.py`) keeps the same contract, so the rollouts
artifact has the same shape whichever produced it:
- `token_ids` are the generated ids, including the EOS id when one was produced and the tokens that
  completed a matched stop string; `finish_reason` is "stop" (EOS or stop string) or "length".
- `text` is `completion_text(...)` of those ids: decoded with special tokens skipped, without the
  EOS, cut before the first stop string. So `tokenizer.decode(token_ids, skip_special_tokens=True)
  .startswith(text)` always holds.
- `logprobs[k]` is the sampler's log-probability of `token_ids[k]`: log_softmax(logits / T) before
  top-p filtering (T = 1 for greedy). The trainer recomputes behaviour log-probs itself (DESIGN §2),
  so these are a record and a check, not an input to the loss.
- `seeds[i][j]` alone decides the randomness of sample j of prompt i (how it is used is the engine's
  business, and documented there).
- `progress(new_tokens, finished_sequences)` is called as work happens, with increments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

from thinkrl.errors import ThinkrlError

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. Temperature 0 means greedy (top_p is then irrelevant)."""

    n: int = 1  # samples per prompt
    temperature: float = 1.0
    top_p: float = 1.0  # keep the smallest set of most likely tokens whose mass >= top_p
    max_tokens: int = 256  # completion tokens at most, EOS included
    stop: tuple[str, ...] = ()  # stop strings: generation ends once the decoded text contains one

    def __post_init__(self):
        if self.n < 1:
            raise ThinkrlError(f"sampling: n must be >= 1, got {self.n}")
        if not self.temperature >= 0:  # also rejects NaN
            raise ThinkrlError(f"sampling: temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ThinkrlError(f"sampling: top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ThinkrlError(f"sampling: max_tokens must be >= 1, got {self.max_tokens}")
        if any(not s for s in self.stop):
            raise ThinkrlError("sampling: stop strings must be non-empty")
        object.__setattr__(self, "stop", tuple(self.stop))


@dataclass(frozen=True)
class Completion:
    text: str  # decoded completion, special tokens skipped, cut before a stop string
    token_ids: list[int]  # generated ids incl. EOS (if produced) and the tokens of a matched stop string
    logprobs: list[float]  # sampler log-probs of token_ids: log_softmax(logits / T) before top-p
    finish_reason: str  # "stop" (EOS or stop string) | "length"


@runtime_checkable
class Engine(Protocol):
    tokenizer: PreTrainedTokenizerBase
    name: str

    def generate(self, prompts: list[list[int]], params: SamplingParams, seeds: list[list[int]],
                 progress: Progress | None = None) -> list[list[Completion]]:
        """prompts: token ids per prompt; seeds[i][j] seeds sample j of prompt i; returns [prompt][n]."""
        ...

    def reload(self, path: str | Path) -> None:
        """Take the weights of the checkpoint at `path` (same architecture and tokenizer); afterwards the engine
        samples exactly what a fresh engine on `path` would."""
        ...


def check_request(prompts: Sequence[Sequence[int]], params: SamplingParams, seeds: Sequence[Sequence[int]]):
    """Raise ThinkrlError unless there is one non-empty prompt and n seeds per prompt."""
    if len(seeds) != len(prompts):
        raise ThinkrlError(f"generate: expected one seed list per prompt ({len(prompts)}), got {len(seeds)}")
    for i, (p, s) in enumerate(zip(prompts, seeds, strict=True)):
        if len(p) == 0:
            raise ThinkrlError(f"generate: prompt {i} is empty (expected at least one token id)")
        if len(s) != params.n:
            raise ThinkrlError(f"generate: prompt {i} has {len(s)} seeds, expected n={params.n}")


def eos_token_ids(tokenizer: PreTrainedTokenizerBase, generation_config=None) -> frozenset[int]:
    """The ids that end a sequence: the tokenizer's EOS plus the model's generation_config EOS id(s)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    extra = getattr(generation_config, "eos_token_id", None)
    if extra is not None:
        ids.update(int(e) for e in (extra if isinstance(extra, Iterable) else [extra]))
    return frozenset(ids)


def find_stop(text: str, stop: Sequence[str]) -> int:
    """Index of the earliest stop string in text, or -1."""
    hits = [k for k in (text.find(s) for s in stop) if k >= 0]
    return min(hits) if hits else -1


def completion_text(tokenizer: PreTrainedTokenizerBase, token_ids: Sequence[int], eos_ids: frozenset[int],
                    stop: Sequence[str]) -> str:
    """The text of a completion: decoded without special tokens, a final EOS dropped, cut before a stop."""
    ids = list(token_ids)
    if ids and ids[-1] in eos_ids:
        ids = ids[:-1]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    k = find_stop(text, stop)
    return text if k < 0 else text[:k]
