"""Steps: exact character spans on tricky text, the answer part, token spans through offsets."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from thinkrl.errors import ThinkrlError
from thinkrl.steps import group_lines, merge_steps, split_steps, token_char_offsets, token_span, token_spans


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
