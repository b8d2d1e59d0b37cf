"""Our native chat formatting against transformers rendering the models' own Jinja templates."""
import json

import pytest
from transformers import AutoTokenizer

from conftest import run_probe

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"}],
    [{"role": "user", "content": "Tell me a joke"}, {"role": "assistant", "content": "Why did the chicken..."},
     {"role": "user", "content": "Another one"}],
    [{"role": "system", "content": "Be kind"}, {"role": "user", "content": "q1"},
     {"role": "assistant", "content": "<think>\nreasoning here\n</think>\n\nanswer one"},
     {"role": "user", "content": "q2"}, {"role": "assistant", "content": "<think>\nmore\n</think>\n\nanswer two"}],
    [{"role": "user", "content": "multi\nline\n\ncontent with <b>markup</b> and émoji 🙂"}],
]


def render(model, tmp_path, **kw):
    rendered = run_probe({"mode": "chat", "model": str(model), "conversations": CONVERSATIONS, **kw},
                         tmp_path)["rendered"]
    # One rendering per conversation, each non-empty: comparing them pairwise must not pass on nothing.
    assert len(rendered) == len(CONVERSATIONS) and all(rendered)
    return rendered


@pytest.mark.parametrize("enable_thinking", [True, False])
def test_qwen3_template(qwen_tok_dir, tmp_path, enable_thinking):
    hf = AutoTokenizer.from_pretrained(qwen_tok_dir)
    ours = render(qwen_tok_dir, tmp_path, enable_thinking=enable_thinking)
    for conv, got in zip(CONVERSATIONS, ours):
        ref = hf.apply_chat_template(conv, tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking)
        assert got == ref


def test_smollm2_template(default_model_path, hf_gguf_tokenizer, tmp_path):
    hf = hf_gguf_tokenizer
    ours = render(default_model_path, tmp_path)
    for conv, got in zip(CONVERSATIONS, ours):
        assert got == hf.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert "You are a helpful AI assistant named SmolLM" in ours[0]
    assert "You are a helpful AI assistant named SmolLM" not in ours[1]


def test_template_without_generation_prompt(default_model_path, hf_gguf_tokenizer, tmp_path):
    hf = hf_gguf_tokenizer
    ours = render(default_model_path, tmp_path, add_generation_prompt=False)
    assert ours[2] == hf.apply_chat_template(CONVERSATIONS[2], tokenize=False, add_generation_prompt=False)


@pytest.mark.parametrize("model", ["qwen3", "smollm2"])
def test_history_is_what_a_longer_conversation_starts_with(model, qwen_tok_dir, default_model_path,
                                                           hf_gguf_tokenizer, tmp_path):
    """A conversation rendered as history (what a scope recalls before a request's turns, adapters/scope.h) is
    the start of the template's rendering of that conversation with a later user turn: Qwen3 drops the reasoning
    of assistant turns that are no longer last."""
    path, hf = (qwen_tok_dir, AutoTokenizer.from_pretrained(qwen_tok_dir)) if model == "qwen3" else (
        default_model_path, hf_gguf_tokenizer)
    ours = render(path, tmp_path, history=True)
    later = {"role": "user", "content": "And then?"}
    for conv, got in zip(CONVERSATIONS, ours):
        ref = hf.apply_chat_template(conv + [later], tokenize=False, add_generation_prompt=True)
        assert ref == got + "<|im_start|>user\nAnd then?<|im_end|>\n<|im_start|>assistant\n", (got, ref)
    if model == "qwen3":
        assert "reasoning here" not in ours[3] and "answer two" in ours[3]
