"""Steps: the reasoning part of a completion cut into steps with exact character and token spans.

    steps, answer = split_steps(completion, "blank")      # completion[s.char_start:s.char_end] == s.text
    offsets = token_char_offsets(tokenizer, completion_ids)
    spans = token_spans(steps, offsets)                   # [(token_start, token_end)] per step

Splitters (a dict of functions, chosen by name): `blank` cuts at blank lines (the default, DESIGN §2),
`line` at every line break. `judge` (JUDGE_SPLITTER) lets a generative judge propose the steps: it is
shown the lines (`line` splitter) and groups consecutive lines into steps in the same call that labels
them (`group_lines`, `merge_steps`).
Each piece is stripped of surrounding whitespace and its span narrowed to match; whitespace-only pieces
are dropped. The answer part (the last piece holding `\\boxed{`, or a final `The answer is` /
`####` / `Answer:` piece) is kept apart and is not a step.

Token offsets (`token_char_offsets`): each token's (start, end) in the decoded text, contiguous, covering it
exactly; a multi-byte character split across byte tokens lands on the token that completes it (the tokens
before get an empty span at its start). Linear incremental detokenisation (prefix/read offsets, as vLLM).
Token spans (`token_span(s)`): a token belongs to the step holding its first character (its start offset);
a token starting in the whitespace between steps belongs to no step (the segment stage gives it to the
thought before). With byte-level BPE one token may cover a separator and the next step's first word
(`\\n\\nWait`), or a step's end and the separator: it still belongs to one step at most, so the token spans of
the steps never overlap and are ordered. A step in which no token starts gets an empty span (k, k) in place.
"""

from __future__ import annotations

import codecs
import re
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate, pairwise

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


MAX_PENDING = 4  # a UTF-8 character is at most 4 bytes: at most 3 byte tokens wait for it to complete
MAX_CONTEXT = 8  # tokens of decode context kept across tokens that add no text (special tokens)
_REPLACEMENT = "\ufffd"  # what decode shows for an incomplete (or invalid) UTF-8 sequence


def _decode(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True)


class _NotLocal(Exception):
    """decode(ids[p:k+1]) does not extend decode(ids[p:r]): the tokenizer's decode is not local."""


def token_char_offsets(tokenizer, ids: Sequence[int]) -> list[tuple[int, int]]:
    """(start, end) character offsets of each token in `text = tokenizer.decode(ids, skip_special_tokens=True)`.

    Guaranteed: the offsets are contiguous and monotone (start of token k = end of token k-1, starting at 0)
    and "".join(text[a:b]) over the tokens == text.
    Rule: a token gets the text it completes. A byte token that only begins a multi-byte character gets an
    empty span at the character's start; the token that completes it gets the character. Special tokens get
    empty spans. A character still incomplete at the end (a completion cut mid-character) is shown by decode
    as U+FFFD; it goes to the last tokens, to the first of them that decode shows it with.
    Linear: a byte-level BPE tokenizer (GPT-2 style: Llama 3, Qwen, SmolLM, thinkrl's own) has each token's
    bytes fed to an incremental UTF-8 decoder (`_byte_level_texts`, one pass, any text); other tokenizers use
    prefix/read-offset incremental detokenisation (`_token_texts`, as vLLM's detokenizer): 2 decodes of at most
    MAX_CONTEXT + MAX_PENDING ids per token (a few more in runs of invalid bytes), and one of all ids.
    Should the pieces not rebuild the text (a tokenizer whose decode is not local), exact prefix decoding
    (`_prefix_offsets`) gives the offsets instead: same guarantee, O(n^2).
    """
    ids = list(ids)
    text = _decode(tokenizer, ids)
    pieces = _byte_level_texts(tokenizer, ids)
    if pieces is None or "".join(pieces) != text:
        try:
            pieces = _token_texts(tokenizer, ids)
        except _NotLocal:
            pieces = None
    if pieces is None or "".join(pieces) != text:
        return _prefix_offsets(tokenizer, ids, text)
    ends = list(accumulate(len(p) for p in pieces))
    return [(e - len(p), e) for p, e in zip(pieces, ends, strict=True)]


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character that stands for each byte in token strings."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = chr(256 + extra), extra + 1
    return {c: b for b, c in chars.items()}


_BYTES_OF = _byte_alphabet()


def _is_byte_level(tokenizer) -> bool:
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    return type(decoder).__name__ == "ByteLevel"


def _byte_level_texts(tokenizer, ids: list[int]) -> list[str] | None:
    """The text each token adds, for a byte-level BPE tokenizer: its bytes through an incremental UTF-8 decoder
    (errors shown as U+FFFD, as decode does); a character cut off at the end goes to the token it began in.
    None when the tokenizer is not byte-level or a token is not in the byte alphabet (an added token)."""
    if not _is_byte_level(tokenizer):
        return None
    special = set(getattr(tokenizer, "all_special_ids", ()))
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces, began = [], None  # began: the token whose bytes start the character still incomplete
    for i, token in zip(ids, tokenizer.convert_ids_to_tokens(ids), strict=True):
        if i in special or token is None:
            pieces.append("")
            continue
        try:
            data = bytes(_BYTES_OF[c] for c in token)
        except KeyError:
            return None
        waiting = bool(utf8.getstate()[0])
        pieces.append(utf8.decode(data))
        if not utf8.getstate()[0]:
            began = None
        elif began is None or not waiting or pieces[-1]:
            began = len(pieces) - 1  # the bytes still held start in this token
    tail = utf8.decode(b"", final=True)
    if tail:
        pieces[began if began is not None else len(pieces) - 1] += tail
    return pieces


def _token_texts(tokenizer, ids: list[int]) -> list[str]:
    """The text each token adds. State (prefix, read, held): ids[prefix:read] is the decode context, read the
    first token whose text is not final yet, held the chars already given to the waiting tokens read..k-1.
    Token `read` is flushed (its text decoded as final, U+FFFD for an incomplete character) at the end of ids or
    when MAX_PENDING tokens wait: no character still incomplete can then have begun in it. The tokens after
    it are then taken again."""
    pieces = [""] * len(ids)
    state, k = (0, 0, 0), 0
    while state[1] < len(ids):
        if k < len(ids):
            state = _advance(tokenizer, ids, pieces, state, k, wait=True)
            k += 1
            if k - state[1] < MAX_PENDING:  # emitted (read == k) or still waiting
                continue
        prefix, read, _ = state
        state = _advance(tokenizer, ids, pieces, (prefix, read, 0), read, wait=False)
        k = state[1]
    return pieces


def _advance(tokenizer, ids: list[int], pieces: list[str], state: tuple[int, int, int], k: int,
             wait: bool) -> tuple[int, int, int]:
    """Token k: sets pieces[k], returns the new (prefix, read, held). The text of ids[read:k+1] is
    decode(ids[prefix:k+1]) minus decode(ids[prefix:read]); while it ends with U+FFFD (a character not complete
    yet) and `wait`, token k gets only the text before it and read stays; else token k gets the rest and read
    moves past k. prefix moves to the old read, or stays while tokens add nothing (specials), up to MAX_CONTEXT."""
    prefix, read, held = state
    before = _decode(tokenizer, ids[prefix:read])
    after = _decode(tokenizer, ids[prefix:k + 1])
    if wait and after.endswith(_REPLACEMENT):  # (ByteFallback decoders show a whole byte run as U+FFFD)
        visible = after.rstrip(_REPLACEMENT)[len(before):] if after.startswith(before) else ""
        pieces[k] = visible[held:]
        return prefix, read, max(held, len(visible))
    if not after.startswith(before):
        raise _NotLocal
    new = after[len(before):]
    pieces[k] = new[held:]
    keep_context = not new and read - prefix < MAX_CONTEXT
    return (prefix if keep_context else read), k + 1, 0


def _prefix_offsets(tokenizer, ids: list[int], text: str) -> list[tuple[int, int]]:
    """The fallback: token k ends where decode(ids[:k+1]) ends, trailing U+FFFD (an incomplete character) not
    counted, kept monotone and within text; the last token ends at len(text). O(n^2) decoded ids."""
    offsets, pos = [], 0
    for k in range(len(ids)):
        end = len(text) if k + 1 == len(ids) else len(_decode(tokenizer, ids[:k + 1]).rstrip(_REPLACEMENT))
        end = min(len(text), max(pos, end))
        offsets.append((pos, end))
        pos = end
    return offsets


def token_span(char_start: int, char_end: int, offsets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The tokens of the step [char_start, char_end): (first, exclusive last).

    Rule: a token belongs to the step holding its first character, i.e. its start offset a (also for an empty
    token, a == b, which sits at position a): char_start <= a < char_end. With non-decreasing starts (as
    token_char_offsets gives) these tokens are consecutive. A step in which no token starts (a step inside
    one token, or past the text) gets (k, k), k = the number of tokens starting before char_start ((n, n)
    past the last one): spans of steps in text order never overlap and stay ordered.
    """
    return _span(_starts(offsets), char_start, char_end)


def token_spans(steps: Sequence[Step], offsets: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """token_span of each step (same rule), in the steps' order."""
    starts = _starts(offsets)
    return [_span(starts, s.char_start, s.char_end) for s in steps]


def _starts(offsets: Sequence[tuple[int, int]]) -> list[int]:
    starts = [a for a, _ in offsets]
    if any(b < a for a, b in pairwise(starts)):
        raise ThinkrlError("token spans: expected token offsets with non-decreasing starts (as token_char_offsets "
                           "gives)")
    return starts


def _span(starts: list[int], char_start: int, char_end: int) -> tuple[int, int]:
    first = bisect_left(starts, char_start)
    return first, max(first, bisect_left(starts, char_end))
