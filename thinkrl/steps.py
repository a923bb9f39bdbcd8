"""Steps: the reasoning part of a completion cut into steps with exact character and token spans.

    steps, answer = split_steps(completion, "blank")      # completion[s.char_start:s.char_end] == s.text
    offsets = token_char_offsets(tokenizer, completion_ids)
    spans = token_spans(steps, offsets)                   # [(token_start, token_end)] per step

Splitters (a dict of functions, chosen by name): `blank` cuts at blank lines (the default, DESIGN §2),
`line` at every line break. `judge` (JUDGE_SPLITTER) lets a generative judge propose the steps: it is
shown the lines (`line` splitter) and groups consecutive lines into steps in the same call that labels
them (`group_lines`); a judge may also give raw cut offsets (`steps_from_cuts`).
Each piece is stripped of surrounding whitespace and its span narrowed to match; whitespace-only pieces
are dropped. The answer part (the last piece holding `\\boxed{`, or a final `The answer is` /
`####` / `Answer:` piece) is kept apart and is not a step.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from thinkrl.errors import ThinkrlError


@dataclass(frozen=True)
class Step:
    idx: int
    char_start: int
    char_end: int
    text: str


_BLANK = re.compile(r"\r?\n[ \t\f\v]*\r?\n")  # a line break, optional spaces, another line break
_LINE = re.compile(r"\r?\n")
_ANSWER = re.compile(r"\\boxed|\\fbox|^\s*(the (final )?answer is|final answer|answer\s*:|####)", re.IGNORECASE)


def _pieces(text: str, sep: re.Pattern) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for m in sep.finditer(text):
        spans.append((pos, m.start()))
        pos = m.end()
    spans.append((pos, len(text)))
    out = []
    for a, b in spans:
        piece = text[a:b]
        stripped = piece.strip()
        if not stripped:
            continue
        a2 = a + (len(piece) - len(piece.lstrip()))
        out.append((a2, a2 + len(stripped)))
    return out


SPLITTERS: dict[str, Callable[[str], list[tuple[int, int]]]] = {
    "blank": lambda text: _pieces(text, _BLANK),
    "line": lambda text: _pieces(text, _LINE),
}


JUDGE_SPLITTER = "judge"  # the judge proposes the steps, from the lines of the `line` splitter
SPLITTER_NAMES = (*SPLITTERS, JUDGE_SPLITTER)


def check_splitter(splitter: str) -> None:
    if splitter not in SPLITTER_NAMES:
        raise ThinkrlError(f"unknown splitter '{splitter}' (known: {', '.join(SPLITTER_NAMES)})")


def split_steps(completion: str, splitter: str = "blank") -> tuple[list[Step], tuple[int, int] | None]:
    """Steps of the reasoning part and the (start, end) char span of the answer part (None if absent).
    Splitter `judge`: the lines, which the judge will group into steps (`group_lines`)."""
    check_splitter(splitter)
    spans = SPLITTERS["line" if splitter == JUDGE_SPLITTER else splitter](completion)
    answer = None
    if spans and _ANSWER.search(completion[spans[-1][0]:spans[-1][1]]):
        answer = spans.pop()
    return [Step(i, a, b, completion[a:b]) for i, (a, b) in enumerate(spans)], answer


def group_lines(n_lines: int, starts: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive runs of n_lines lines as steps: a new step begins at each line index in `starts` (index 0
    always begins one). Returns (first_line, last_line) per step, in order; every line is in one step."""
    begins = sorted({0, *(i for i in starts if 0 < i < n_lines)}) if n_lines else []
    return [(b, (begins[k + 1] if k + 1 < len(begins) else n_lines) - 1) for k, b in enumerate(begins)]


def merge_steps(completion: str, lines: Sequence[Step], groups: Sequence[tuple[int, int]]) -> list[Step]:
    """One Step per (first_line, last_line) group, spanning from the first line's start to the last's end."""
    out = []
    for i, (a, b) in enumerate(groups):
        start, end = lines[a].char_start, lines[b].char_end
        out.append(Step(i, start, end, completion[start:end]))
    return out


def token_char_offsets(tokenizer, ids: Sequence[int], window: int = 6) -> list[tuple[int, int]]:
    """(start, end) character offsets of each token in `tokenizer.decode(ids, skip_special_tokens=True)`.

    Incremental detokenisation: the text a token adds is decode(ids[w:k+1]) - decode(ids[w:k]) over a
    short window w..k, so multi-byte characters split across tokens land on the token that completes them.
    Special tokens (EOS) get an empty span at the end. O(len(ids) * window) decodes of short windows.
    """
    offsets: list[tuple[int, int]] = []
    pos = 0
    for k in range(len(ids)):
        w = max(0, k - window)
        before = tokenizer.decode(ids[w:k], skip_special_tokens=True)
        after = tokenizer.decode(ids[w:k + 1], skip_special_tokens=True)
        if after.startswith(before) and not after.endswith("\ufffd"):
            added = len(after) - len(before)
        else:  # an incomplete multi-byte character: nothing visible yet
            added = 0
        offsets.append((pos, pos + added))
        pos += added
    full = len(tokenizer.decode(list(ids), skip_special_tokens=True))
    if pos != full:  # fall back to exact prefix decoding (rare: tokenizers whose decode is not local)
        offsets, pos = [], 0
        for k in range(len(ids)):
            end = len(tokenizer.decode(list(ids[:k + 1]), skip_special_tokens=True))
            offsets.append((pos, max(pos, end)))
            pos = max(pos, end)
    return offsets


def token_span(char_start: int, char_end: int, offsets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """Tokens overlapping [char_start, char_end): (first, exclusive last); (n, n) if none overlap."""
    first = next((i for i, (a, b) in enumerate(offsets) if b > char_start and b > a), None)
    if first is None:
        return len(offsets), len(offsets)
    last = first
    for i in range(first, len(offsets)):
        a, b = offsets[i]
        if a >= char_end:
            break
        if b > a:
            last = i
    return first, last + 1


def token_spans(steps: Sequence[Step], offsets: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    return [token_span(s.char_start, s.char_end, offsets) for s in steps]
