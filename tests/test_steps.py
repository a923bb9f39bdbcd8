"""Steps: exact character spans on tricky text, the answer part, token spans through offsets.

Token offsets are checked on the project's tokenizer (byte-level BPE: multi-byte characters split across byte
tokens), a SentencePiece-style byte-fallback tokenizer and byte-string stand-ins; decode calls are counted, not
timed. Token spans follow one rule (a token belongs to the step holding its first character), checked on
hand-built offsets and on a byte-level BPE whose tokens cross step boundaries (`\\n\\nWait, x = `)."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from thinkrl.errors import ThinkrlError
from thinkrl.steps import (
    MAX_CONTEXT,
    MAX_PENDING,
    group_lines,
    merge_steps,
    split_steps,
    token_char_offsets,
    token_span,
    token_spans,
)
from thinkrl.tasks.arith import make_corpus
from thinkrl.tokenizer import build_tokenizer


def check_spans(text, steps):
    for s in steps:
        assert text[s.char_start:s.char_end] == s.text
        assert s.text == s.text.strip() and s.text


def test_blank_line_steps_and_answer():
    text = "17 + 28 = 45\n\n45 * 3 = 135\n\nThe answer is \\boxed{135}."
    steps, answer = split_steps(text)
    assert [s.text for s in steps] == ["17 + 28 = 45", "45 * 3 = 135"]
    assert text[answer[0]:answer[1]] == "The answer is \\boxed{135}."
    check_spans(text, steps)


@pytest.mark.parametrize("text", [
    "a = 1 \r\n\r\n  b = 2\t\r\n \r\nc=3   \n\n\\boxed{3}",      # CRLF, trailing and leading spaces
    "étape ① ∑ 3 = 3\n\n第二步 4 = 4\n\n😀 5\n\n",               # unicode, trailing blank lines
    "x = 1\n\nx = 1\n\nx = 1",                                   # steps that repeat verbatim
    "\n\n\n\nonly one step   ",
    "",
    "no blank lines at all\njust lines\n\\boxed{2}",
])
def test_spans_exact_on_tricky_text(text):
    steps, answer = split_steps(text)
    check_spans(text, steps)
    starts = [s.char_start for s in steps]
    assert starts == sorted(set(starts))  # distinct, increasing: repeated text gets distinct spans
    if answer:
        assert all(s.char_end <= answer[0] for s in steps)


def test_repeated_steps_get_distinct_spans():
    steps, _ = split_steps("x = 1\n\nx = 1\n\nx = 1")
    assert [(s.char_start, s.char_end) for s in steps] == [(0, 5), (7, 12), (14, 19)]


def test_line_splitter_and_unknown_splitter():
    steps, answer = split_steps("a\nb\n\nc\nAnswer: 4", "line")
    assert [s.text for s in steps] == ["a", "b", "c"] and answer is not None
    with pytest.raises(ThinkrlError, match="unknown splitter"):
        split_steps("a", "sentences")


def test_judge_groups_lines_into_steps():
    text = "first line\nsecond line\n\nthird  \nfourth"
    lines, _ = split_steps(text, "judge")  # the judge splitter shows the lines
    groups = group_lines(len(lines), [2, 999, 0, 2])
    assert groups == [(0, 1), (2, 3)]
    steps = merge_steps(text, lines, groups)
    assert [s.text for s in steps] == ["first line\nsecond line", "third  \nfourth"]
    check_spans(text, steps)
    assert group_lines(0, [1]) == [] and group_lines(3, []) == [(0, 2)]


@pytest.fixture(scope="module")
def tok():
    corpus = ["17 + 28 = 45\n\n45 * 3 = 135", "Wait, 45 * 3 = 135, not 125.", "The answer is \\boxed{63}."] * 20
    t = Tokenizer(models.BPE(unk_token=None))
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False)])
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<eos>")


@pytest.mark.parametrize("text", ["17 + 28 = 45\n\n45 * 3 = 135\n\nThe answer is \\boxed{135}.",
                                  "é ① 😀 ∑\n\nWait, 45 * 3 = 135, not 125.\r\n\r\n\\boxed{1}"])
def test_token_offsets_reconstruct_text(tok, text):
    ids = tok.encode(text) + [tok.eos_token_id]
    offsets = token_char_offsets(tok, ids)
    decoded = tok.decode(ids, skip_special_tokens=True)
    assert decoded == text
    assert offsets[-1][0] == offsets[-1][1] == len(text)  # EOS: empty span at the end
    assert "".join(decoded[a:b] for a, b in offsets) == text
    for i in range(1, len(offsets)):
        assert offsets[i][0] == offsets[i - 1][1]


def test_token_spans_cover_each_step(tok):
    text = "17 + 28 = 45\n\nWait, 45 * 3 = 135, not 125.\n\nThe answer is \\boxed{135}."
    ids = tok.encode(text)
    offsets = token_char_offsets(tok, ids)
    steps, answer = split_steps(text)
    for s, (a, b) in zip(steps, token_spans(steps, offsets), strict=True):
        covered = text[offsets[a][0]:offsets[b - 1][1]]
        assert s.text in covered  # the step's tokens cover it
        assert offsets[a][1] > s.char_start and offsets[b - 1][0] < s.char_end  # and only overlapping tokens
    assert token_span(len(text) + 5, len(text) + 9, offsets) == (len(offsets), len(offsets))



# ---------------------------------------------------------------------------------------------------
# Token spans: a token belongs to the step holding its first character


def check_span_rule(steps, offsets, spans):
    """Each step's span holds exactly the tokens starting in it; spans are ordered and never overlap."""
    for s, (a, b) in zip(steps, spans, strict=True):
        assert [i for i, (start, _) in enumerate(offsets) if s.char_start <= start < s.char_end] == list(range(a, b))
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:], strict=False))


@pytest.mark.parametrize("offsets, want", [
    ([(0, 1), (1, 3), (3, 5), (5, 11), (11, 12), (12, 14)], [(0, 3), (4, 6)]),   # "\n\nWait": in no step
    ([(0, 1), (1, 3), (3, 4), (4, 8), (8, 11), (11, 12), (12, 14)], [(0, 4), (4, 7)]),  # "1\n\nW": step 0 only
    ([(0, 1), (1, 3), (3, 5), (5, 5), (5, 7), (7, 7), (7, 11), (11, 14)], [(0, 3), (5, 8)]),  # empty tokens
])
def test_token_belongs_to_the_step_of_its_first_character(offsets, want):
    text = "a = 1\n\nWait, b"
    steps, _ = split_steps(text)
    assert "".join(text[a:b] for a, b in offsets) == text
    assert token_spans(steps, offsets) == want
    check_span_rule(steps, offsets, want)


def test_step_inside_one_token_gets_an_empty_span_in_place():
    text = "x\n\ny\n\nz"
    offsets = [(0, 1), (1, 6), (6, 6), (6, 7), (7, 7)]  # "\n\ny\n\n" is one token; (6, 6) a partial byte at z
    steps, _ = split_steps(text)
    assert token_spans(steps, offsets) == [(0, 1), (2, 2), (2, 4)]  # EOS (7, 7) is in no step
    assert token_span(len(text) + 5, len(text) + 9, offsets) == (len(offsets), len(offsets))
    with pytest.raises(ThinkrlError, match="non-decreasing"):
        token_spans(steps, [(0, 1), (2, 3), (1, 2)])


@pytest.fixture(scope="module")
def crossing_tok():
    """Byte-level BPE without pre-split: merges cross step boundaries (`\\n\\nWait, x = `, `.\\n\\nSo y = 1`)."""
    corpus = [f"x = {i}\n\nWait, x = {i + 1}.\n\nSo y = {2 * i}." for i in range(40)]
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=290, special_tokens=["<eos>"], show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<eos>")


def test_tokens_crossing_step_boundaries_real_bpe(crossing_tok):
    text = "x = 7\n\nWait, x = 8.\n\nSo y = 14."
    ids = crossing_tok.encode(text) + [crossing_tok.eos_token_id]
    offsets = token_char_offsets(crossing_tok, ids)
    steps, _ = split_steps(text)
    assert [text[a:b] for a, b in offsets][2:5] == ["\n\nWait, x = ", "8", ".\n\nSo y = 1"]  # the crossing tokens
    spans = token_spans(steps, offsets)
    assert spans == [(0, 2), (3, 5), (5, 6)]  # "\n\nWait, x = " in no step; ".\n\nSo y = 1" in step 1 only
    check_span_rule(steps, offsets, spans)


@pytest.fixture(scope="module")
def project_tok():
    return build_tokenizer([e.solution_text for e in make_corpus(300, 0)])


def test_project_tokenizer_steps_are_whole_tokens(project_tok):
    # newline runs are their own tokens in the project's tokenizer: no token crosses a step boundary
    for text in [e.solution_text for e in make_corpus(20, 7)] + ["é ① 😀 ∑\n\nWait, 45 * 3 = 135, not 125.\n\n第二步"]:
        ids = project_tok.encode(text)
        offsets = token_char_offsets(project_tok, ids)
        steps, _ = split_steps(text)
        spans = token_spans(steps, offsets)
        check_span_rule(steps, offsets, spans)
        assert [project_tok.decode(ids[a:b]) for a, b in spans] == [s.text for s in steps]


# ---------------------------------------------------------------------------------------------------
# Token offsets: linear incremental detokenisation, multi-byte characters on the token that completes them


class CountingTokenizer:
    """Counts decode calls and the ids they decode."""

    def __init__(self, tok):
        self.tok, self.lengths = tok, []

    def decode(self, ids, skip_special_tokens=False):
        self.lengths.append(len(ids))
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def __getattr__(self, name):  # the rest of the tokenizer (byte-level detection, token strings)
        return getattr(self.tok, name)


class BytesTokenizer:
    """A byte-level stand-in: token i is the bytes vocab[i] (None: a special token); decode replaces bad UTF-8."""

    def __init__(self, vocab: list[bytes | None]):
        self.vocab = vocab

    def decode(self, ids, skip_special_tokens=False):
        return b"".join(self.vocab[i] or b"" for i in ids).decode("utf-8", errors="replace")


def check_offsets(tok, ids) -> tuple[list[tuple[int, int]], CountingTokenizer]:
    """Offsets of ids through a counting tokenizer: contiguous, covering the decoded text exactly, and linear
    (about 2 short decodes per token, none of a long prefix but the one decode of all ids)."""
    counting = CountingTokenizer(tok)
    offsets = token_char_offsets(counting, ids)
    text = tok.decode(ids, skip_special_tokens=True)
    assert "".join(text[a:b] for a, b in offsets) == text
    assert [a for a, _ in offsets] == [0, *(b for _, b in offsets[:-1])] and offsets[-1][1] == len(text)
    assert len(counting.lengths) < 4 * len(ids) + 10
    assert all(n <= MAX_CONTEXT + MAX_PENDING for n in sorted(counting.lengths)[:-1])  # no O(n^2) prefix decoding
    return offsets, counting


def test_multibyte_characters_through_the_project_tokenizer(project_tok):
    text = "café naïve é ① 😀 ∑ 第二步\n\nWait, 45 * 3 = 135 ✓ 🎉"
    ids = project_tok.encode(text) + [project_tok.eos_token_id]
    assert project_tok.decode(ids[:1]) == "c" and "\ufffd" in project_tok.decode(ids[3:4])  # é is split in bytes
    offsets, _ = check_offsets(project_tok, ids)
    assert offsets[-1] == (len(text), len(text))  # EOS: empty span at the end


def test_character_lands_on_the_token_that_completes_it(project_tok):
    ids = project_tok.encode("é😀")
    assert len(ids) == 6  # 2 + 4 byte tokens
    assert token_char_offsets(project_tok, ids) == [(0, 0), (0, 1), (1, 1), (1, 1), (1, 1), (1, 2)]
    merged = BytesTokenizer([b"a\xf0\x9f", b"\x98\x80b", b"\x80", None])  # "a" + the first bytes of 😀
    assert check_offsets(merged, [0, 1])[0] == [(0, 1), (1, 3)]
    assert check_offsets(merged, [0, 3])[0] == [(0, 2), (2, 2)]  # cut mid-character (U+FFFD), then EOS
    assert check_offsets(merged, [2, 0, 1])[0] == [(0, 0), (0, 2), (2, 4)]  # a bad byte: shown with the next token


def test_byte_fallback_tokenizer_offsets():
    # SentencePiece style (Llama 2): byte tokens <0xNN>, and its decoder shows a whole incomplete byte run as U+FFFD
    vocab = {"<unk>": 0, "</s>": 1, **{f"<0x{i:02X}>": 2 + i for i in range(256)}}
    vocab.update({c: len(vocab) + j for j, c in enumerate("▁abdehlnorstw")})
    t = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token="<unk>"))
    t.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="</s>", unk_token="<unk>")
    ids = tok.encode("hello é 😀 第二步 the answer") + [tok.eos_token_id]
    offsets, _ = check_offsets(tok, ids)
    assert offsets[7:9] == [(6, 6), (6, 7)]  # é: <0xC3> <0xA9>


def test_offsets_linear_on_3000_tokens(project_tok):
    unit = "17 + 28 = 45 é ① 😀 第二步 ∑\n\nWait, 45 * 3 = 135, not 125. café 🎉\n\n"
    ids = project_tok.encode(unit * 60)[:3000]  # cut mid-character at the end, maybe
    assert len(ids) == 3000
    _, counting = check_offsets(project_tok, ids)
    assert sum(counting.lengths) < 20 * len(ids)  # prefix decoding would be ~n^2 / 2 = 4.5M ids


def test_non_local_decode_falls_back_and_stays_exact():
    class Ligature(BytesTokenizer):  # "fi" decodes as one ligature character: decode is not local
        def decode(self, ids, skip_special_tokens=False):
            return super().decode(ids).replace("fi", "\ufb01")

    tok = Ligature([b"f", b"i", b"x"])
    offsets = token_char_offsets(tok, [2, 0, 1, 2])
    text = tok.decode([2, 0, 1, 2])
    assert text == "x\ufb01x" and "".join(text[a:b] for a, b in offsets) == text
    assert [a for a, _ in offsets] == [0, *(b for _, b in offsets[:-1])]


@pytest.mark.parametrize("text", ["∑" * 1000, "第二步骤" * 300, "é😀" * 400])
def test_tokens_that_end_one_character_and_begin_the_next_stay_linear(project_tok, text):
    """Byte tokens such as [91 e2] complete one ∑ and begin the next: the byte-level path decodes once (the
    generic path fell back to prefix decoding here: 2,003,064 ids decoded for 1000 ∑)."""
    ids = project_tok.encode(text)
    offsets, counting = check_offsets(project_tok, ids)
    assert sum(counting.lengths) <= 2 * len(ids)
    starts = [a for a, b in offsets if b > a]
    assert starts == list(range(len(text)))  # every character on exactly one token (the one completing it)
