"""Judges: label each reasoning step of a rollout (DESIGN §2 "Judge verdicts").

`make_judge("rule" | "oracle" | "noisy:P" | "hf:DIR" | "openai:URL", **options)` builds one from a `NAME[:ARG]`
spec; the backends are a dict of factories. See protocol.py (the contract), prompts.py (generative prompts and
reply parser), rule.py, oracle.py, noisy.py (the oracle with a share of its labels flipped), generative.py,
chat.py (OpenAI-compatible client), judging.py (stage).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from thinkrl.errors import ThinkrlError
from thinkrl.judge.protocol import Judge


def _rule(arg: str | None, **_) -> Judge:
    from thinkrl.judge.rule import RuleJudge

    return RuleJudge()


def _oracle(arg: str | None, **_) -> Judge:
    from thinkrl.judge.oracle import OracleJudge

    return OracleJudge()


def _noisy(arg: str | None, **_) -> Judge:
    from thinkrl.judge.noisy import NoisyJudge, parse_noisy

    p, seed = parse_noisy(arg)
    return NoisyJudge(p, seed, name=f"noisy:{arg}")


def _hf(arg: str | None, max_tokens: int = 1024, dtype: str = "auto", template: str = "intrinsic-v1",
        device: str = "cpu", parse_retries: int = 2, temperature: float = 0.0, extra_body: dict | None = None,
        **_) -> Judge:
    from thinkrl.judge.extra_body import hf_problem
    from thinkrl.judge.generative import GenerativeJudge, HFChat

    if not arg:
        raise ThinkrlError("--judge hf:DIR needs a model directory, e.g. hf:runs/judge-model")
    if problem := hf_problem(extra_body or {}):
        raise ThinkrlError(f"judge hf:{arg}: {problem}")
    chat = HFChat(arg, max_tokens=max_tokens, dtype=dtype, device=device, parse_retries=parse_retries,
                  temperature=temperature, chat_template_kwargs=(extra_body or {}).get("chat_template_kwargs"))
    return GenerativeJudge(chat, f"hf:{arg}", template)


def _openai(arg: str | None, model: str | None = None, max_tokens: int = 1024, template: str = "intrinsic-v1",
            cache_dir: str | None = None, concurrency: int = 8, timeout_s: float = 120.0, retries: int = 4,
            api_key_env: str = "OPENAI_API_KEY", backoff_s: float = 1.0, parse_retries: int = 2,
            temperature: float = 0.0, extra_body: dict | None = None, **_) -> Judge:
    from thinkrl.judge.chat import ChatClient, ChatConfig
    from thinkrl.judge.generative import GenerativeJudge

    if not arg:
        raise ThinkrlError("--judge openai:URL needs a server URL, e.g. openai:http://127.0.0.1:8000")
    if not model:
        raise ThinkrlError("--judge openai:URL needs --judge-model (the model name the server serves)")
    cfg = ChatConfig(base_url=arg, model=model, max_tokens=max_tokens, cache_dir=cache_dir,
                     max_concurrency=concurrency, timeout_s=timeout_s, max_retries=retries, api_key_env=api_key_env,
                     backoff_s=backoff_s, parse_retries=parse_retries, temperature=temperature,
                     extra_body=extra_body or None)
    return GenerativeJudge(ChatClient(cfg), f"openai:{arg}#{model}", template)


def _rule_version() -> int:
    from thinkrl.judge.rule import RuleJudge

    return RuleJudge.version


def _oracle_version() -> int:
    from thinkrl.judge.oracle import OracleJudge

    return OracleJudge.version


def _noisy_version() -> int:
    from thinkrl.judge.noisy import NoisyJudge

    return NoisyJudge.version


def _noisy_check(arg: str | None) -> None:
    from thinkrl.judge.noisy import parse_noisy

    parse_noisy(arg)


@dataclass(frozen=True)
class JudgeKind:
    """A judge backend of the registry: its factory and the facts other code asks of it."""
    build: Callable[..., Judge]
    generative: bool                          # a language model: prompt, reply length, model name are in its
                                              # key, and it can propose the steps (splitter `judge`)
    needs_model_name: bool = False            # openai: the server's model name is required
    local_model: bool = False                 # hf: runs in this process, on `device` (in its key)
    version: Callable[[], int] | None = None  # rule/oracle/noisy: their code is the judge, its version in the key
    check: Callable[[str | None], None] | None = None  # noisy: raises a one-line ThinkrlError for a bad ARG


JUDGES: dict[str, JudgeKind] = {
    "rule": JudgeKind(_rule, generative=False, version=_rule_version),
    "oracle": JudgeKind(_oracle, generative=False, version=_oracle_version),
    "noisy": JudgeKind(_noisy, generative=False, version=_noisy_version, check=_noisy_check),
    "hf": JudgeKind(_hf, generative=True, local_model=True),
    "openai": JudgeKind(_openai, generative=True, needs_model_name=True),
}


def judge_kind(spec: str) -> JudgeKind:
    """The registry entry of a `NAME[:ARG]` judge spec; a one-line ThinkrlError for an unknown name or (where the
    backend checks it) a bad ARG."""
    name, _, arg = spec.partition(":")
    if name not in JUDGES:
        raise ThinkrlError(f"unknown judge '{spec}' (expected one of: rule, oracle, noisy:P, hf:DIR, openai:URL)")
    kind = JUDGES[name]
    if kind.check is not None:
        kind.check(arg or None)
    return kind


def make_judge(spec: str, **options) -> Judge:
    arg = spec.partition(":")[2]
    return judge_kind(spec).build(arg or None, **options)
