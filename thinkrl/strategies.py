"""How the trainer spreads its model over torchrun's ranks: a registry of strategies, DDP and FSDP2.

    strategy = STRATEGIES[cfg.strategy]
    wrapped = strategy.wrap(model, dist, cfg)                 # what forward/backward go through
    sd = strategy.full_state_dict(wrapped, dist)              # collective; the whole state on rank 0
    extra = strategy.save(wrapped, optimizer, state_dir, dist)   # collective; trainer.pt's extra entries

    torchrun --nproc-per-node 2 -m stages.cli train ... --strategy fsdp

`ddp` (the default): every rank holds the whole model, its fp32 weights, gradients and AdamW moments (16 bytes
per parameter); gradients are all-reduced once per optimizer step (DDP's no_sync on every micro-batch but the
last). Only the gradient sync is a collective, so ranks may run different numbers of micro-batches. The resumable
state is model.safetensors plus the optimizer inside trainer.pt, written by rank 0.

`fsdp`: torch's FSDP2 (`fully_shard`) on every decoder layer and on the root (embeddings, final norm and LM head,
tied or not, in one group). Each rank keeps 1/world of the weights, gradients and AdamW moments; a layer's
forward all-gathers its weights and its backward reduce-scatters its gradients.
- Every forward is a collective, so all ranks run the same number of micro-batches: a rank with fewer runs idle
  ones (a two-token forward/backward with zero loss) to keep step with the others (`lockstep`).
- Gradients reduce-scatter after every micro-batch (no unsharded gradient accumulates across micro-batches: that
  memory is what FSDP is for); the sum is the same as DDP's single all-reduce, up to float rounding.
- The root is not resharded after its forward (FSDP2's default for the root), so the trainer's chunked LM head
  (thinkrl.logprobs) reads the gathered head weight after the forward, and its gradient reduce-scatters with the
  root's at the end of the backward.
- `bfloat16`: a MixedPrecisionPolicy (bf16 weights in forward/backward, fp32 gradient reduction) under the same
  autocast as DDP's; the master weights and AdamW moments stay fp32 and sharded. `fsdp_cpu_offload` keeps the
  shards, their gradients and the optimizer step on the CPU (CPUOffloadPolicy: GPU memory for one layer at a time).
- `policy/` is a plain Hugging Face checkpoint: the full state gathered on rank 0 (get_model_state_dict with
  full_state_dict and cpu_offload). `state/` is torch.distributed.checkpoint: each rank writes its own shards of
  the weights and AdamW moments under state/dcp (on a filesystem every rank sees), and DCP reshards on load, so a
  state written by 2 ranks resumes on 1 or 4 as well.
- A single process (no torchrun) runs the model unwrapped but keeps the DCP state format, so its states and
  those of any number of ranks resume each other.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thinkrl.errors import ThinkrlError

if TYPE_CHECKING:  # the registry loads without torch (the train settings name its strategies)
    import torch

    from thinkrl.distributed import Dist

STATE_WEIGHTS = "model.safetensors"   # ddp: the weights in state/
DCP_DIR = "dcp"                       # fsdp: torch.distributed.checkpoint's directory in state/


@dataclass(frozen=True)
class Strategy:
    name: str
    doc: str
    wrap: Callable[[torch.nn.Module, Dist, Any, bool], torch.nn.Module]  # (model, dist, cfg, trainable)
    lockstep: bool                 # every forward is a collective: all ranks run the same micro-batch count
    sharded: bool                  # each rank holds a shard of the weights (it loads the whole model on the CPU)
    full_state_dict: Callable[[torch.nn.Module, Dist], dict[str, torch.Tensor] | None]  # None: the model's own
    save: Callable[[torch.nn.Module, torch.optim.Optimizer, Path, Dist], dict[str, Any]]
    load: Callable[[torch.nn.Module, torch.optim.Optimizer, Path, dict, Dist], None]
    load_optimizer: Callable[[torch.nn.Module, torch.optim.Optimizer, Path, dict], None]
    has_state: Callable[[Path], bool]

    def load_device(self, dist: Dist):
        """Where the trainer loads the whole model before `wrap`: this rank's device, except under FSDP on several
        ranks, where it loads on the CPU and fully_shard moves only this rank's shards to the device (a model that
        does not fit one GPU never has to; host memory holds one whole copy per rank while it loads)."""
        import torch

        return torch.device("cpu") if self.sharded and dist.world > 1 else dist.device

    def no_sync(self, model: torch.nn.Module, last: bool):
        """The context of one micro-batch's backward: DDP syncs gradients on the last one only."""
        import torch

        ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
        return model.no_sync() if ddp and not last else nullcontext()


# --------------------------------------------------------------------------------------------- ddp
def _ddp_wrap(model: torch.nn.Module, dist: Dist, cfg, trainable: bool = True) -> torch.nn.Module:
    import torch

    if dist.world == 1 or not trainable:  # a frozen model (the reference) needs no gradient sync
        return model
    ids = [dist.device.index] if dist.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _ddp_full_state(model: torch.nn.Module, dist: Dist) -> dict[str, torch.Tensor] | None:
    return None  # rank 0's model holds it all: save_pretrained takes its own state_dict


def _ddp_save(model: torch.nn.Module, optimizer: torch.optim.Optimizer, d: Path, dist: Dist) -> dict[str, Any]:
    from safetensors.torch import save_model

    if dist.rank != 0:
        return {}
    save_model(unwrap(model), str(d / STATE_WEIGHTS))
    return {"optimizer": optimizer.state_dict()}


def _damaged(path: Path, e: Exception) -> ThinkrlError:
    return ThinkrlError(f"{path}: the interrupted run's weights are damaged ({type(e).__name__}); "
                        "remove the state (or rerun with --force)")


def _ddp_load(model: torch.nn.Module, optimizer: torch.optim.Optimizer, d: Path, s: dict, dist: Dist) -> None:
    from safetensors.torch import load_model

    try:
        load_model(unwrap(model), str(d / STATE_WEIGHTS), device=str(dist.device))
    except Exception as e:  # safetensors raises its own error kinds
        raise _damaged(d / STATE_WEIGHTS, e) from None
    optimizer.load_state_dict(s["optimizer"])


def _ddp_load_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, d: Path, s: dict) -> None:
    if "optimizer" not in s:
        raise ThinkrlError(f"continue_from {d}: an fsdp state (no optimizer in trainer.pt); continue it with "
                           "--strategy fsdp")
    try:
        optimizer.load_state_dict(s["optimizer"])
    except (ValueError, KeyError) as e:
        raise ThinkrlError(f"continue_from {d}: its optimizer state does not fit this policy ({e})") from None


# --------------------------------------------------------------------------------------------- fsdp
def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks FSDP shards one by one: the ModuleList of the model's decoder layers."""
    import torch

    inner = getattr(unwrap(model), "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise ThinkrlError(f"--strategy fsdp: {type(unwrap(model)).__name__} has no model.layers to shard "
                           "(Llama/Qwen2/Mistral-style causal LMs have); use --strategy ddp")
    return list(layers)


def _fsdp_wrap(model: torch.nn.Module, dist: Dist, cfg, trainable: bool = True) -> torch.nn.Module:
    if dist.world == 1:
        return model
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    kw: dict[str, Any] = {}
    if cfg.dtype == "bfloat16":
        import torch

        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if cfg.fsdp_cpu_offload:
        if dist.device.type == "cpu":
            raise ThinkrlError("--fsdp-cpu-offload: the model is on the CPU already (the option moves a GPU "
                               "run's shards to the CPU)")
        kw["offload_policy"] = CPUOffloadPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, **kw)
    fully_shard(model, **kw)
    return model


def _fsdp_options(full: bool = False):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=full)


def _fsdp_full_state(model: torch.nn.Module, dist: Dist) -> dict[str, torch.Tensor] | None:
    if dist.world == 1:
        return None
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(model, options=_fsdp_options(full=True))  # every rank takes part; rank 0 gets it
    if dist.rank != 0:
        return None
    for name in tied_aliases(model):  # gathered as separate copies: the checkpoint keeps one (its config ties)
        sd.pop(name, None)
    return sd


def tied_aliases(model: torch.nn.Module) -> list[str]:
    """Names of parameters that are another parameter (tied embeddings: lm_head.weight), but the first name."""
    seen: set[int] = set()
    out = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            out.append(name)
        seen.add(id(p))
    return out


def _single() -> bool:
    """No process group: DCP reads and writes as one process."""
    import torch.distributed as td

    return not (td.is_available() and td.is_initialized())


@contextmanager
def _one_process():
    """Silences DCP's warning that it works as one process (which is meant here, without torchrun)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def _fsdp_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, with_optimizer: bool) -> dict[str, Any]:
    """The sharded state DCP writes and reads. Without the optimizer when it holds no state yet (every step so far
    skipped): torch's get_optimizer_state_dict would first take an AdamW step at lr 0 to create one, which moves
    the step counter (and so the bias correction of every later update)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {"model": get_model_state_dict(model, options=_fsdp_options())}
    if with_optimizer:
        state["optimizer"] = get_optimizer_state_dict(model, optimizer, options=_fsdp_options())
    return state


def _fsdp_save(model: torch.nn.Module, optimizer: torch.optim.Optimizer, d: Path, dist: Dist) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp

    with_optimizer = bool(optimizer.state)  # the same on every rank: they step together
    with _one_process():
        dcp.save(_fsdp_state(model, optimizer, with_optimizer), checkpoint_id=str(d / DCP_DIR), no_dist=_single())
    return {"strategy": "fsdp", "optimizer_saved": with_optimizer}


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """thinkrl.logprobs.unwrap, imported when called (this module loads without torch)."""
    from thinkrl.logprobs import unwrap as inner

    return inner(model)


def _dcp_load(state: dict, d: Path, error: Callable[[Exception], ThinkrlError]) -> None:
    import torch.distributed.checkpoint as dcp

    try:
        with _one_process():
            dcp.load(state, checkpoint_id=str(d / DCP_DIR), no_dist=_single())
    except Exception as e:  # DCP raises CheckpointException and others for a damaged or mismatched directory
        raise error(e) from None


def _fsdp_load(model: torch.nn.Module, optimizer: torch.optim.Optimizer, d: Path, s: dict, dist: Dist) -> None:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state = _fsdp_state(model, optimizer, s.get("optimizer_saved", True))
    _dcp_load(state, d, lambda e: _damaged(d / DCP_DIR, e))
    set_model_state_dict(model, state["model"], options=_fsdp_options())
    if "optimizer" in state:
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=_fsdp_options())


def _fsdp_load_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, d: Path, s: dict) -> None:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    if not (d / DCP_DIR / ".metadata").is_file():
        raise ThinkrlError(f"continue_from {d}: a ddp state (no {DCP_DIR}/ there); continue it with --strategy ddp")
    if not s.get("optimizer_saved", True):
        return  # the continued run never stepped: nothing to carry
    osd = {"optimizer": get_optimizer_state_dict(model, optimizer, options=_fsdp_options())}
    _dcp_load(osd, d, lambda e: ThinkrlError(f"continue_from {d}: its optimizer state does not fit this policy "
                                             f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]})"))
    set_optimizer_state_dict(model, optimizer, osd["optimizer"], options=_fsdp_options())


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("ddp", "DistributedDataParallel: the whole model on every rank, gradients all-reduced",
             _ddp_wrap, False, False, _ddp_full_state, _ddp_save, _ddp_load, _ddp_load_optimizer,
             lambda d: (d / STATE_WEIGHTS).is_file()),
    Strategy("fsdp", "FSDP2 fully_shard per decoder layer: weights, gradients and AdamW moments sharded over ranks",
             _fsdp_wrap, True, True, _fsdp_full_state, _fsdp_save, _fsdp_load, _fsdp_load_optimizer,
             lambda d: (d / DCP_DIR / ".metadata").is_file()),
)}


def any_state(d: Path) -> bool:
    """Does directory d hold the weights of a trainer state of some strategy?"""
    return any(s.has_state(d) for s in STRATEGIES.values())
