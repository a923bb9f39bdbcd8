"""Generation engines: token-id prompts in, n completions per prompt with sampler log-probs out.

    from thinkrl.engine import load_engine
    engine = load_engine("hf", "runs/tiny", dtype="auto")          # or "vllm" on a GPU
    outs = engine.generate(prompt_ids, SamplingParams(n=8), seeds)   # outs[i][j]: Completion

`ENGINES` maps a name to a factory `(path, **options) -> Engine`:
- `hf`: transformers (`hf.py`), CPU by default, batched, KV-cached, prefix-shared, seed-deterministic.
- `vllm`: vLLM (`vllm.py`, the optional `vllm` extra). Its module, and vllm itself, are imported only
  when this entry is called: no core code path imports vllm.
The interface and the conventions every engine keeps (log-probs, stop strings, finish reasons) are in
`base.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from thinkrl.engine.base import Completion, Engine, SamplingParams
from thinkrl.errors import ThinkrlError


def _hf(path: str | Path, **options) -> Engine:
    from thinkrl.engine.hf import HFEngine  # lazy: transformers' model code loads only when an engine is made

    return HFEngine.from_pretrained(path, **options)


def _vllm(path: str | Path, **options) -> Engine:
    from thinkrl.engine.vllm import VLLMEngine  # lazy: vllm is an optional extra

    return VLLMEngine.from_pretrained(path, **options)


ENGINES: dict[str, Callable[..., Engine]] = {"hf": _hf, "vllm": _vllm}


def __getattr__(name: str):
    if name == "HFEngine":
        from thinkrl.engine.hf import HFEngine

        return HFEngine
    raise AttributeError(name)


def check_engine(name: str) -> None:
    if name not in ENGINES:
        raise ThinkrlError(f"unknown engine {name!r}; expected one of: {', '.join(ENGINES)}")


def load_engine(name: str, path: str | Path, **options) -> Engine:
    """The engine `name` loaded from the checkpoint at `path` (options: dtype, device, ...)."""
    check_engine(name)
    return ENGINES[name](path, **options)


__all__ = ["ENGINES", "check_engine", "Completion", "Engine", "HFEngine", "SamplingParams", "load_engine"]
