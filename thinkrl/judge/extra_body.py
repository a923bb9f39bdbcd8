"""The `extra_body` setting of the generative judges: a JSON object whose keys go into every judge request.

    extra_body_of('{"chat_template_kwargs": {"enable_thinking": false}}')  # {'chat_template_kwargs': {...}}
    extra_body_problem('[1]')        # 'must be a JSON object, got a JSON array' (the setting's check)

`openai:` judges: the keys are merged into the body of each /v1/chat/completions request, as the OpenAI
client's `extra_body` does. They carry what a server takes beyond the OpenAI API: vLLM's and SGLang's
`chat_template_kwargs` (Qwen3: `{"enable_thinking": false}` turns its thinking off), `top_p`, `top_k`,
`min_p`, `repetition_penalty`. The keys thinkrl sets itself (OWN: model, messages, max_tokens, temperature;
the last two are the judge's own settings) are refused, and so is `stream` (the client reads whole replies).
They are part of the request, so of the reply cache's key (thinkrl.judge.chat) and of the judge stage's key.
`hf:` judges send no request: only `chat_template_kwargs` apply (HF_KEYS), as arguments of the judge
tokenizer's chat template, the same thing vLLM does with them.
"""

from __future__ import annotations

import json
from typing import Any

OWN = ("model", "messages", "max_tokens", "temperature")  # set by every judge request itself
REFUSED = {**{k: "thinkrl sets it itself" for k in OWN}, "stream": "thinkrl reads whole replies, not streams"}
HF_KEYS = ("chat_template_kwargs",)                       # what a local (hf:) judge can use
EXAMPLE = '{"chat_template_kwargs": {"enable_thinking": false}}'
_JSON_KIND = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
              type(None): "null"}


def extra_body_problem(text: str) -> str | None:
    """What is wrong with `text` as an extra_body ('must be a JSON object, ...'), None when it is usable."""
    try:
        obj = json.loads(text)
    except ValueError as e:
        return f"must be a JSON object, e.g. '{EXAMPLE}'; got invalid JSON ({e})"
    if not isinstance(obj, dict):
        return f"must be a JSON object, e.g. '{EXAMPLE}'; got {_JSON_KIND.get(type(obj), 'JSON')}"
    for key in obj:
        if key in REFUSED:
            own = " (it is the judge's own setting)" if key in ("max_tokens", "temperature") else ""
            return f"must not set `{key}`: {REFUSED[key]}{own}"
    if "chat_template_kwargs" in obj and not isinstance(obj["chat_template_kwargs"], dict):
        return "must hold `chat_template_kwargs` as a JSON object, e.g. {\"enable_thinking\": false}"
    return None


def extra_body_of(text: str | None) -> dict[str, Any]:
    """The extra_body setting's object ({} when unset); the text is the one the setting's check let through."""
    return json.loads(text) if text else {}


def hf_problem(extra: dict[str, Any]) -> str | None:
    """What a local (hf:) judge cannot use of an extra_body object, None when it can use all of it."""
    unused = sorted(set(extra) - set(HF_KEYS))
    if unused:
        return (f"a local hf: judge sends no request: of extra_body only {', '.join(HF_KEYS)} applies (its chat "
                f"template's arguments), not {', '.join(unused)}")
    return None
