"""Judges: label each reasoning step of a rollout (DESIGN §2 "Judge verdicts").

`make_judge("rule" | "oracle" | "hf:DIR" | "openai:URL", **options)` builds one from a `NAME[:ARG]` spec;
the backends are a dict of factories. See protocol.py (the contract), prompts.py (generative prompts and
reply parser), rule.py, oracle.py, generative.py, chat.py (OpenAI-compatible client), judging.py (stage).
"""

from __future__ import annotations

from collections.abc import Callable

from thinkrl.errors import ThinkrlError
from thinkrl.judge.protocol import Judge


def _rule(arg: str | None, **_) -> Judge:
    from thinkrl.judge.rule import RuleJudge

    return RuleJudge()


def _oracle(arg: str | None, **_) -> Judge:
    from thinkrl.judge.oracle import OracleJudge

    return OracleJudge()


def _hf(arg: str | None, max_tokens: int = 1024, dtype: str = "auto", template: str = "intrinsic-v1",
        **_) -> Judge:
    from thinkrl.judge.generative import GenerativeJudge, HFChat

    if not arg:
        raise ThinkrlError("--judge hf:DIR needs a model directory, e.g. hf:runs/judge-model")
    return GenerativeJudge(HFChat(arg, max_tokens=max_tokens, dtype=dtype), f"hf:{arg}", template)


def _openai(arg: str | None, model: str | None = None, max_tokens: int = 1024, template: str = "intrinsic-v1",
            cache_dir: str | None = None, concurrency: int = 8, timeout_s: float = 120.0, retries: int = 4,
            api_key_env: str = "OPENAI_API_KEY", backoff_s: float = 1.0, **_) -> Judge:
    from thinkrl.judge.chat import ChatClient, ChatConfig
    from thinkrl.judge.generative import GenerativeJudge

    if not arg:
        raise ThinkrlError("--judge openai:URL needs a server URL, e.g. openai:http://127.0.0.1:8000")
    if not model:
        raise ThinkrlError("--judge openai:URL needs --judge-model (the model name the server serves)")
    cfg = ChatConfig(base_url=arg, model=model, max_tokens=max_tokens, cache_dir=cache_dir,
                     max_concurrency=concurrency, timeout_s=timeout_s, max_retries=retries, api_key_env=api_key_env,
                     backoff_s=backoff_s)
    return GenerativeJudge(ChatClient(cfg), f"openai:{arg}#{model}", template)


JUDGES: dict[str, Callable[..., Judge]] = {"rule": _rule, "oracle": _oracle, "hf": _hf, "openai": _openai}


def make_judge(spec: str, **options) -> Judge:
    name, _, arg = spec.partition(":")
    if name not in JUDGES:
        raise ThinkrlError(f"unknown judge '{spec}' (expected one of: rule, oracle, hf:DIR, openai:URL)")
    return JUDGES[name](arg or None, **options)
