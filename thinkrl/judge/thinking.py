"""A reasoning judge's thinking in its reply: the part a verdict is read from.

    strip_thinking('<think>\\nstep 2 looks off...\\n</think>\\n{"labels": [...]}')  # ('\\n{"labels": [...]}', False)
    strip_thinking('<think>\\nstep 2 looks off, but')                               # ('', True): cut inside it

A Qwen3-class judge with thinking on writes `<think>…</think>` before its answer; a chat template that opens
the block in the prompt (Qwen3.5, DeepSeek-R1, QwQ) leaves only the closing tag in the reply, so a lone
`</think>` ends the thinking too. The verdict is read from what follows the thinking, so a draft verdict
inside it is never taken for the answer. A block that never closes, with nothing before it, means the reply
was cut inside the thinking (at max tokens): it holds no verdict, and THINK_CUT is the cause reported.

With a server-side reasoning parser (vLLM `--reasoning-parser qwen3`) the thinking comes in the message's
`reasoning_content` (`reasoning` in newer vLLM) instead, and the content is the answer alone: the chat client
reads only the content (thinkrl.judge.chat). Either way the judgments' `reply` column keeps the content as it
came, thinking included.
"""

from __future__ import annotations

import re

OPEN, CLOSE = "<think>", "</think>"
THINK_CUT = "reply cut inside <think>: raise the judge's max tokens or disable thinking"
_BLOCK = re.compile(re.escape(OPEN) + ".*?" + re.escape(CLOSE), re.DOTALL)


def strip_thinking(text: str) -> tuple[str, bool]:
    """(the reply without its thinking, whether it was cut inside an unclosed <think> with nothing before it)."""
    answer = _BLOCK.sub("", text)
    if CLOSE in answer:   # the template opened the block in the prompt: the thinking is all before the tag
        answer = answer.partition(CLOSE)[2]
    if OPEN in answer:    # opened and never closed: the reply ends inside the thinking
        answer = answer.partition(OPEN)[0]
        return answer, not answer.strip()
    return answer, False
