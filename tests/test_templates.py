"""Tests for thinkrl.templates: each template's text, `auto` resolution, errors, encode_prompt's BOS rule."""

from __future__ import annotations

import json
import string

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from thinkrl.errors import ThinkrlError
from thinkrl.templates import INSTRUCTION, TEMPLATES, encode_prompt, render, resolve_template

CHAT = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
CHAT_NO_BOS = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
               "{% if add_generation_prompt %}[A]{% endif %}")
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>"]


def make_tokenizer(chat_template: str | None = None, add_bos: bool = False, bos: bool = True):
    chars = string.ascii_letters + string.digits + " \n.,?!+-*/=()\\{}:[]|<>"
    vocab = {t: i for i, t in enumerate(SPECIALS + list(chars))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    if add_bos:  # the tokenizer's default encoding prepends <s>, like Llama tokenizers
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>" if bos else None,
                                  eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                  additional_special_tokens=["<|user|>", "<|assistant|>"])
    if chat_template:
        tok.chat_template = chat_template
    return tok


Q = "What is 2+3?"


def test_each_template_renders_as_documented():
    tok = make_tokenizer(CHAT)
    assert INSTRUCTION == "\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert render("chat", Q, tok) == "<s><|user|>" + Q + INSTRUCTION + "<|assistant|>"
    assert render("chat-plain", Q, tok) == "<s><|user|>" + Q + "<|assistant|>"
    assert render("raw", Q, tok) == Q + INSTRUCTION + "\n"
    assert render("raw-plain", Q, tok) == Q + "\n"
    assert set(TEMPLATES) == {"chat", "chat-plain", "raw", "raw-plain"}


def test_chat_template_needs_a_chat_template():
    with pytest.raises(ThinkrlError, match="no chat template"):
        render("chat", Q, make_tokenizer())


def test_auto_resolution(tmp_path):
    with_chat, without = make_tokenizer(CHAT), make_tokenizer()
    assert resolve_template("auto", with_chat) == "chat"
    assert resolve_template("auto", without) == "raw"
    assert resolve_template("auto", with_chat, model_dir=tmp_path) == "chat"  # no thinkrl.json there
    (tmp_path / "thinkrl.json").write_text(json.dumps({"template": "raw-plain", "other": 1}))
    assert resolve_template("auto", with_chat, model_dir=tmp_path) == "raw-plain"
    assert render("auto", Q, with_chat, model_dir=tmp_path) == Q + "\n"
    (tmp_path / "thinkrl.json").write_text(json.dumps({"seed": 3}))  # no template field: fall back
    assert resolve_template("auto", without, model_dir=tmp_path) == "raw"
    assert resolve_template("chat-plain", without, model_dir=tmp_path) == "chat-plain"  # explicit wins


def test_unknown_names_are_errors(tmp_path):
    tok = make_tokenizer(CHAT)
    with pytest.raises(ThinkrlError, match="chat, chat-plain, raw, raw-plain"):
        resolve_template("fancy", tok)
    with pytest.raises(ThinkrlError, match="unknown template"):
        render("fancy", Q, tok)
    (tmp_path / "thinkrl.json").write_text(json.dumps({"template": "fancy"}))
    with pytest.raises(ThinkrlError, match="thinkrl.json"):
        resolve_template("auto", tok, model_dir=tmp_path)
    (tmp_path / "thinkrl.json").write_text("{not json")
    with pytest.raises(ThinkrlError, match="JSON object"):
        resolve_template("auto", tok, model_dir=tmp_path)


def test_encode_prompt_bos_rule():
    bos = 1
    plain = make_tokenizer(CHAT)  # defines <s> but does not add it on its own
    assert encode_prompt(render("raw", Q, plain), plain)[0] != bos
    chat_ids = encode_prompt(render("chat", Q, plain), plain)
    assert chat_ids[0] == bos and chat_ids[1] != bos  # the template's BOS, as one token
    adding = make_tokenizer(CHAT, add_bos=True)  # adds <s> by default, like Llama tokenizers
    raw_ids = encode_prompt(render("raw", Q, adding), adding)
    assert raw_ids[0] == bos and raw_ids[1] != bos and adding.decode(raw_ids[1:]) == Q + INSTRUCTION + "\n"
    chat_ids = encode_prompt(render("chat", Q, adding), adding)
    assert chat_ids[0] == bos and chat_ids.count(bos) == 1  # never doubled
    no_bos = make_tokenizer(CHAT_NO_BOS, bos=False)
    ids = encode_prompt(render("chat", Q, no_bos), no_bos)
    assert no_bos.decode(ids) == "[user]" + Q + INSTRUCTION + "[A]"
    assert encode_prompt("abc", no_bos) == no_bos("abc", add_special_tokens=False)["input_ids"]
