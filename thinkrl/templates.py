"""Prompt templates: how a question becomes the prompt text a policy sees, and its token ids.

    name = resolve_template("auto", tokenizer, model_dir="runs/tiny")   # -> "chat", "raw", ...
    text = render(name, "Start at 17. Add 28.", tokenizer)
    ids = encode_prompt(text, tokenizer)

Templates (`TEMPLATES`, name -> function(question, tokenizer) -> text):
- `chat`: the tokenizer's chat template, one user turn: question + INSTRUCTION, with the generation
  prompt (the Qwen2.5-Math / DeepSeek-R1 evaluation prompt).
- `chat-plain`: the chat template with the question alone.
- `raw`: question + INSTRUCTION + "\\n" (base models without a chat template).
- `raw-plain`: question + "\\n".
`auto` resolves to the `template` field of `<model_dir>/thinkrl.json` when that file exists (thinkrl
writes it beside checkpoints it trains), else `chat` when the tokenizer has a chat template, else `raw`.

BOS rule of `encode_prompt` (explicit, one rule for every template): the text is tokenized with
`add_special_tokens=False`, then the BOS id is prepended iff the tokenizer defines one, its own
default encoding would prepend it (`tokenizer(x, add_special_tokens=True)` starts with BOS), and the
ids do not already start with it. Chat templates that need BOS write it into the text, so it is never
doubled; raw prompts get it exactly when the tokenizer would add it. EOS is never added.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from thinkrl.errors import ThinkrlError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

INSTRUCTION = "\nPlease reason step by step, and put your final answer within \\boxed{}."
CONFIG_FILE = "thinkrl.json"  # in a model directory: {"template": "<name>", ...}


def _chat(text: str, tokenizer: PreTrainedTokenizerBase) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ThinkrlError("template: the tokenizer has no chat template; use --template raw or raw-plain")
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=False)


TEMPLATES: dict[str, Callable[[str, PreTrainedTokenizerBase], str]] = {
    "chat": lambda q, tok: _chat(q + INSTRUCTION, tok),
    "chat-plain": lambda q, tok: _chat(q, tok),
    "raw": lambda q, tok: q + INSTRUCTION + "\n",
    "raw-plain": lambda q, tok: q + "\n",
}


def _unknown(name: str, where: str = "") -> ThinkrlError:
    return ThinkrlError(f"unknown template {name!r}{where}; expected auto or one of: {', '.join(TEMPLATES)}")


def resolve_template(name: str, tokenizer: PreTrainedTokenizerBase,
                     model_dir: str | Path | None = None) -> str:
    """A concrete template name: `name` itself, or for `auto` thinkrl.json's choice / chat / raw."""
    if name != "auto":
        if name not in TEMPLATES:
            raise _unknown(name)
        return name
    config = Path(model_dir) / CONFIG_FILE if model_dir is not None else None
    if config is not None and config.is_file():
        try:
            chosen = json.loads(config.read_text(encoding="utf-8")).get("template")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise ThinkrlError(f"{config}: expected a JSON object with a 'template' field ({e})") from e
        if chosen is not None:
            if chosen not in TEMPLATES:
                raise _unknown(chosen, f" in {config}")
            return chosen
    return "chat" if getattr(tokenizer, "chat_template", None) else "raw"


def render(name: str, question: str, tokenizer: PreTrainedTokenizerBase, *,
           model_dir: str | Path | None = None) -> str:
    """The prompt text for `question` under template `name` (`auto` is resolved first)."""
    return TEMPLATES[resolve_template(name, tokenizer, model_dir)](question, tokenizer)


def adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's own default encoding prepends its BOS token."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return with_special[:1] == [bos] and without[:1] != [bos]


def encode_prompt(prompt_text: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids of a rendered prompt; BOS per the rule in the module docstring, never twice."""
    ids = list(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    if adds_bos(tokenizer) and ids[:1] != [tokenizer.bos_token_id]:
        ids.insert(0, tokenizer.bos_token_id)
    return ids
