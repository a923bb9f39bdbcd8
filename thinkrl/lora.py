"""LoRA through peft: low-rank adapters on a policy's linear layers, the adapter-free reference, the merged export.

    model = apply_lora(model, cfg)              # cfg.lora_r > 0: LoRA layers injected in place, base frozen
    with adapters_disabled(model):              # the base policy: the KL reference (β > 0), no second copy
        ref = model(input_ids=ids).logits
    model.save_pretrained(d, state_dict=merged_state_dict(model))   # a plain checkpoint: W + (alpha / r)·B·A

The adapters are injected into the Hugging Face model itself (peft's `inject_adapter_in_model`, no PeftModel
wrapper), so the trainer drives it as any causal LM: the chunked LM head (`logits_to_keep`), gradient
checkpointing, DDP and the safetensors state keep working unchanged. Only the adapters' A and B require grad;
AdamW gets only those (its moments: 2 × adapter parameters). Each targeted layer computes
W x + (alpha / r) · B (A x), B initialised to zero (the adapted policy starts as the base, so the first step's
ratio is exactly 1), A by peft's Kaiming-uniform init from the run's seed (`seed`; the global torch RNG is left
as it was). No adapter dropout: the forward stays deterministic, as the base model's (no LoRA bias either).

Export: `merged_state_dict` builds each adapted weight as base weight + peft's `get_delta_weight` (the same
B·A·scale peft's merge adds) under the base model's own key names, leaving the training weights untouched
(peft's merge_adapter/unmerge_adapter would change W by float rounding and break exact resume). policy/ is
then a plain checkpoint that transformers loads without peft.

peft is imported only when LoRA is asked for (`apply_lora`): `--help` and a full fine-tune never import it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from thinkrl.errors import ThinkrlError

if TYPE_CHECKING:
    from thinkrl.training import TrainConfig

ADAPTER = "default"  # peft's adapter name; one adapter per run


def lora_alpha(cfg: TrainConfig) -> float:
    """The LoRA alpha of a config: its own, else 2·r (scale alpha / r = 2 at every rank)."""
    return float(cfg.lora_alpha) if cfg.lora_alpha is not None else 2.0 * cfg.lora_r


def targets(cfg: TrainConfig) -> list[str]:
    """The module names of `lora_targets` (a comma list)."""
    return [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]


def _peft():
    try:
        import peft
    except ImportError:
        raise ThinkrlError("LoRA needs peft: pip install 'thinkrl[lora]'") from None
    return peft


def _check_targets(model: torch.nn.Module, names: list[str]) -> None:
    """Every target names at least one module of the model (peft only fails when none of them does)."""
    leaves = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n}
    missing = [t for t in names if t not in leaves]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ThinkrlError(f"lora_targets: no module named {', '.join(map(repr, missing))} in the policy "
                           f"({type(model).__name__}); its linear layers: {', '.join(linear)}")


def apply_lora(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """`model` with LoRA layers (rank cfg.lora_r) injected in place on the `lora_targets` modules; every base
    parameter frozen, the adapters trainable. Call before DDP wrapping."""
    peft = _peft()
    names = targets(cfg)
    _check_targets(model, names)
    config = peft.LoraConfig(r=cfg.lora_r, lora_alpha=lora_alpha(cfg), target_modules=names, lora_dropout=0.0,
                             bias="none")
    with torch.random.fork_rng(devices=[]):  # A's init from the run's seed; the caller's RNG untouched
        torch.manual_seed(cfg.seed)
        try:
            model = peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER)
        except ValueError as e:  # e.g. a target that is no layer type peft adapts
            raise ThinkrlError(f"lora_targets {cfg.lora_targets!r}: {e}") from None
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name)
    return model


def _lora_layers(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """(name, layer) of every LoRA layer; none when peft was never imported (no model can have one then)."""
    if "peft" not in sys.modules:
        return
    from peft.tuners.lora import LoraLayer

    for name, m in model.named_modules():
        if isinstance(m, LoraLayer):
            yield name, m


def has_lora(model: torch.nn.Module) -> bool:
    return next(_lora_layers(model), None) is not None


@contextmanager
def adapters_disabled(model: torch.nn.Module):
    """Inside: every LoRA layer computes its base layer alone, so `model` is the base policy (the KL reference,
    under no_grad). The adapters are re-enabled, trainable, on the way out."""
    layers = [m for _, m in _lora_layers(model)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield model
    finally:
        for m in layers:
            m.enable_adapters(True)


@torch.no_grad()
def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the base architecture with the adapters merged: for each LoRA layer
    `<name>.weight` = base weight + (alpha / r)·B·A (`<name>.base_layer.*` renamed `<name>.*`, the lora_* tensors
    dropped). Untouched tensors are the model's own (tied weights stay shared); the model is not modified."""
    state = model.state_dict()
    layers = dict(_lora_layers(model))
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        if ".lora_" in key:
            continue
        if ".base_layer." not in key:
            out[key] = t
            continue
        owner, leaf = key.split(".base_layer.", 1)
        if leaf == "weight":
            t = t + layers[owner].get_delta_weight(ADAPTER).to(t.dtype)
        out[f"{owner}.{leaf}"] = t
    return out
