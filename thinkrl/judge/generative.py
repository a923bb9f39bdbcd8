"""Generative judges: a language model reads each rollout once and labels its steps (DESIGN §2, §6).

Two backends share the prompt (`thinkrl.judge.prompts`) and the parser; they differ only in how a
conversation becomes a reply:
- `hf:DIR`     a local Hugging Face causal LM on the sample stage's engine (chat template; greedy at temperature
               0, else sampled with a seed derived from the conversation, so the same request gets the same
               reply on every run);
- `openai:URL` any OpenAI-compatible /v1/chat/completions server, through `thinkrl.judge.chat.ChatClient`
               (bounded concurrency, timeouts, retries with backoff, on-disk reply cache).
A reply counts only when the parser turns it into a full verdict (a label for every step): the backend asks
again with a format reminder up to `parse_retries` times (`thinkrl.judge.chat.reminded`); a call that still
fails (transport, HTTP, timeout, or no usable reply) gives a failed Verdict (`ok=False`, every step
`unknown`, the reason as rationale), which the judge stage never passes as a finished judgment.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from thinkrl.engine.base import SamplingParams
from thinkrl.judge.chat import CUT, UNUSABLE, ChatResult, Validate, reminded, unusable
from thinkrl.judge.prompts import TEMPLATES, parse_reply, parse_steps_reply
from thinkrl.judge.protocol import UNKNOWN, JudgeRequest, Verdict


def conversation_seed(conversation: list[dict]) -> int:
    """A 63-bit sampling seed of a conversation: the same request is sampled the same way on every run."""
    digest = hashlib.sha256(json.dumps(conversation, sort_keys=True, ensure_ascii=False).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class HFChat:
    """Conversations -> replies with a local model: chat template (with `chat_template_kwargs`, e.g.
    {"enable_thinking": False}), greedy at temperature 0, else seeded sampling; one batched call."""

    def __init__(self, path: str | Path, max_tokens: int = 1024, dtype: str = "auto", engine: str = "hf",
                 device: str = "cpu", parse_retries: int = 2, temperature: float = 0.0,
                 chat_template_kwargs: dict | None = None):
        from thinkrl.engine import load_engine

        self.engine = load_engine(engine, path, dtype=dtype, device=device)
        self.max_tokens, self.parse_retries, self.temperature = max_tokens, parse_retries, temperature
        self.template_kwargs = dict(chat_template_kwargs or {})

    def _generate(self, conversations: list[list[dict]], progress: Callable[[int], None] | None
                  ) -> list[ChatResult]:
        tok = self.engine.tokenizer
        prompts = [list(tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False,
                                                **self.template_kwargs)) for c in conversations]
        params = SamplingParams(n=1, temperature=self.temperature, max_tokens=self.max_tokens)
        done = [0]

        def report(_new_tokens: int, finished: int) -> None:  # engine: deltas; backends report totals
            done[0] += finished
            if progress and finished:
                progress(done[0])

        seeds = [[conversation_seed(c)] for c in conversations]  # (unused when greedy)
        outs = self.engine.generate(prompts, params, seeds, progress=report)
        return [ChatResult(o[0].text, None, len(p), len(o[0].token_ids), 1, False, o[0].finish_reason)
                for p, o in zip(prompts, outs, strict=True)]

    def complete_many(self, conversations: list[list[dict]], progress: Callable[[int], None] | None = None,
                      validate: Validate | None = None) -> list[ChatResult]:
        """One batched call; then the replies `validate` refuses are asked again, in one batch per retry, with
        the format reminder (as ChatClient does per request)."""
        results = self._generate(conversations, progress)
        todo = list(range(len(results))) if validate else []
        for retry in range(self.parse_retries + 1):
            problems = {i: p for i in todo if (p := validate(i, results[i].text or ""))}  # type: ignore[misc]
            for i in [i for i in problems if results[i].finish_reason == "length"]:  # a reminder cannot help
                results[i] = replace(results[i], error=f"{UNUSABLE} ({problems.pop(i)}; {CUT})")
            if not problems:
                break
            if retry == self.parse_retries:
                for i, p in problems.items():
                    results[i] = replace(results[i], error=unusable(p, retry + 1))
                break
            todo = list(problems)
            again = self._generate([reminded(conversations[i], results[i].text or "", problems[i]) for i in todo],
                                   None)
            for i, r in zip(todo, again, strict=True):
                results[i] = replace(r, prompt_tokens=results[i].prompt_tokens + r.prompt_tokens,
                                     completion_tokens=results[i].completion_tokens + r.completion_tokens)
        return results


class GenerativeJudge:
    proposes_steps = True  # can group lines into steps itself (splitter `judge`)

    def __init__(self, backend, name: str, template: str = "intrinsic-v1"):
        self.backend, self.name, self.template = backend, name, TEMPLATES[template]

    def judge_many(self, requests: list[JudgeRequest], progress=None) -> list[Verdict]:
        """progress(k): k more rollouts finished (the backends report running totals)."""
        todo = [r for r in requests if r.steps]
        last = [0]

        def report(total: int) -> None:
            if progress:
                progress(total - last[0])
            last[0] = total

        def validate(i: int, text: str) -> str:  # '' for a reply read in full, else what was wrong with it
            req = todo[i]
            labels, _, problem, *_ = (parse_steps_reply if req.propose_steps else parse_reply)(text, req)
            return problem or ("unknown labels" if UNKNOWN in labels else "")

        results = self.backend.complete_many([self.template.messages(r) for r in todo], progress=report,
                                             validate=validate)
        if progress and len(requests) > len(todo):
            progress(len(requests) - len(todo))
        by_id = dict(zip((r.rollout_id for r in todo), results, strict=True))
        out = []
        for req in requests:
            if not req.steps:
                out.append(Verdict(req.rollout_id, (), ()))
                continue
            res = by_id[req.rollout_id]
            tokens = res.prompt_tokens + res.completion_tokens
            if res.error is not None or res.text is None:
                out.append(Verdict.failed(req, res.error or "no reply", tokens, reply=res.text))
                continue
            extra = {}
            if req.propose_steps:
                labels, reasons, problem, starts = parse_steps_reply(res.text, req)
                extra["step_starts"] = starts
            else:
                labels, reasons, problem = parse_reply(res.text, req)
            ok = not problem and UNKNOWN not in labels  # a full verdict (the backends refuse other replies)
            if res.finish_reason == "length":
                problem = ", ".join(p for p in (problem, CUT) if p)
            out.append(Verdict(req.rollout_id, labels, reasons, ok=ok, reason=problem, judge_tokens=tokens,
                               extra=extra, reply=res.text))
        return out
