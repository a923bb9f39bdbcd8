"""The digit-friendly tokenizer of the tiny policy, trained offline with `tokenizers` (no download).

    from thinkrl.tokenizer import build_tokenizer
    tok = build_tokenizer()                     # trained on a default ArithChain corpus
    tok = build_tokenizer(["any", "texts"])     # or on your own texts / CorpusExamples
    tok.save_pretrained("DIR")                  # tokenizer.json + tokenizer_config.json + chat template

Design (each choice serves the tiny model or the step -> token span mapping):
- Pre-tokenization, in order: newline runs are isolated pieces; every digit is its own piece
  (`Digits(individual_digits=True)`), so a number is always one token per digit and arithmetic is
  learnable; then `ByteLevel` without its regex, so ANY text (unicode, emoji, control characters)
  encodes, losslessly, and the text between two digits/newlines is one piece.
- BPE trained on the task text merges those pieces into whole phrases: `. Multiply by `, ` = `,
  `Wait, `, `The answer is \\boxed{` are each one token. Sequences are short (a step `17 + 28 = 45`
  is 8 tokens + the separator), which is what makes warm start fast on a CPU. The vocabulary is the
  256 byte symbols, 5 special tokens and the merges (about 400 in all; `vocab_size` is a cap).
- Newlines never share a token with other text, so blank-line and line step boundaries are token
  boundaries: `return_offsets_mapping=True` gives exact character spans (every token of a
  multi-byte character maps to that character's span) and step char spans map to token spans exactly.
- No normalizer, no prefix space, no offset trimming, `clean_up_tokenization_spaces=False`:
  `decode(encode(x)) == x` for every string.
- Special tokens (ids 0-4): `<|pad|> <|bos|> <|eos|> <|user|> <|assistant|>`. The chat template writes
  `<|bos|>`, then `<|user|>question` per user turn and `<|assistant|>answer<|eos|>` per assistant
  turn; the generation prompt is `<|assistant|>`. A system message is written as plain text before
  the first turn. No post-processor: encoding never adds tokens; the template adds `<|bos|>`.
- Deterministic: the same texts give byte-identical tokenizer files (the BPE trainer breaks ties
  by pair order; tested).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from thinkrl.errors import ThinkrlError

PAD, BOS, EOS, USER, ASSISTANT = "<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, USER, ASSISTANT)  # ids 0..4, in this order

CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{- message['content'] + '\n\n' -}}"
    "{%- elif message['role'] == 'user' -%}{{- '<|user|>' + message['content'] -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- '<|assistant|>' + message['content'] + eos_token -}}"
    "{%- else -%}{{- raise_exception('unknown chat role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}"
)

DEFAULT_VOCAB_CAP = 512  # the merges of the ArithChain text run out near 400 tokens
DEFAULT_CORPUS_SIZE = 5000  # texts of the default ArithChain corpus the BPE is trained on
DEFAULT_CORPUS_SEED = 1234


def _texts(source: Iterable) -> list[str]:
    """Training texts from strings or CorpusExample-like objects (question + solution_text)."""
    out: list[str] = []
    for item in source:
        if isinstance(item, str):
            out.append(item)
        elif hasattr(item, "solution_text") and hasattr(item, "problem"):
            out.extend([item.problem.question, item.solution_text])
        else:
            raise ThinkrlError(f"build_tokenizer: expected strings or corpus examples, got {type(item).__name__}")
    if not out:
        raise ThinkrlError("build_tokenizer: expected at least one training text, got none")
    return out


def default_texts(n: int = DEFAULT_CORPUS_SIZE, seed: int = DEFAULT_CORPUS_SEED) -> list[str]:
    """Questions and flawed solutions of an ArithChain corpus (all phrases the task uses)."""
    from thinkrl.tasks.arith import make_corpus

    return _texts(make_corpus(n, seed))


def _backend() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[\r\n]+"), behavior="isolated"),  # newline runs: their own pieces
        pre_tokenizers.Digits(individual_digits=True),  # every digit its own piece
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),  # bytes: any text encodes
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def build_tokenizer(texts: Iterable | None = None, vocab_size: int = DEFAULT_VOCAB_CAP) -> PreTrainedTokenizerFast:
    """Train the tokenizer on texts (strings, or CorpusExamples: question + solution); None: a default
    ArithChain corpus. Deterministic: same texts, same tokenizer."""
    train_texts = default_texts() if texts is None else _texts(texts)
    backend = _backend()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(train_texts, trainer=trainer)
    return wrap(backend)


def wrap(backend: Tokenizer) -> PreTrainedTokenizerFast:
    """The transformers tokenizer around a trained backend: special tokens and chat template set."""
    for i, t in enumerate(SPECIAL_TOKENS):
        if backend.token_to_id(t) != i:
            raise ThinkrlError(f"tokenizer: expected special token {t} at id {i}, got {backend.token_to_id(t)}")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[USER, ASSISTANT],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        padding_side="left",  # generation pads on the left; training code pads itself
        model_max_length=512,
        model_input_names=["input_ids", "attention_mask"],  # no token_type_ids (transformers 4.x's default)
    )


def check_tokenizer(tok) -> None:
    """Raise ThinkrlError unless tok has what thinkrl needs: eos and pad tokens and a chat template."""
    if tok.eos_token_id is None:
        raise ThinkrlError("tokenizer: expected an eos token, found none")
    if tok.pad_token_id is None:
        raise ThinkrlError("tokenizer: expected a pad token, found none")
    if not getattr(tok, "chat_template", None):
        raise ThinkrlError("tokenizer: expected a chat template, found none")


def digit_ids(tok) -> Sequence[int]:
    """Token ids of the ten digits (each digit is exactly one token)."""
    ids = [tok.convert_tokens_to_ids(str(d)) for d in range(10)]
    if any(i is None or i == tok.unk_token_id for i in ids):
        raise ThinkrlError("tokenizer: expected every digit 0-9 to be a token")
    return ids
