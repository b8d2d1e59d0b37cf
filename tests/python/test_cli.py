"""The hyprstream CLI on the bundled default model, checked against gguf-py and transformers."""
import json

import numpy as np
import pytest
import torch
from gguf import GGUFReader

from conftest import run_cli


def generate_json(*extra):
    r = run_cli("generate", "--model", "default", "--json", *extra)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    return lines[:-1], lines[-1]


def test_info_reports_the_gguf_shape(default_model_path):
    r = run_cli("info", "--model", "default", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    reader = GGUFReader(default_model_path)
    field = lambda k: reader.fields[k].contents()
    assert info["architecture"] == field("general.architecture") == "llama"
    assert info["parameters"] == sum(int(np.prod(t.shape)) for t in reader.tensors)
    assert info["context_length"] == field("llama.context_length")
    assert info["layers"] == field("llama.block_count")
    assert info["dtype"] == "float32"
    # Its projections are Q4_1: served from those 4-bit codes unless told otherwise (--quantize auto).
    assert info["weights"] == "int4"
    dense = json.loads(run_cli("info", "--model", "default", "--json", "--quantize", "none").stdout)
    assert dense["weights"] == "float32" and dense["parameters"] == info["parameters"]


def test_generate_json_streams_tokens_with_logprobs(hf_gguf_model):
    # Dense: the default (--quantize auto) computes from the file's 4-bit blocks, which test_default_gguf.py
    # measures against llama.cpp; here the logprobs must be the exact model's.
    tokens, final = generate_json("--prompt", "The three primary colours are", "--temperature", "0",
                                  "--max-tokens", "12", "--quantize", "none")
    assert len(tokens) == final["completion_tokens"] == 12
    assert final["finish_reason"] == "length"
    assert "".join(t["text"] for t in tokens) == final["text"]
    # Each logprob is log softmax of the model's logits: check against transformers on the same GGUF.
    model = hf_gguf_model
    prompt = json.loads(run_cli("tokenize", "--model", "default", "--text", "The three primary colours are",
                                "--json").stdout)["ids"]
    ids = prompt + [t["id"] for t in tokens]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    for k, t in enumerate(tokens):
        ref = logp[len(prompt) - 1 + k]
        assert t["id"] == int(ref.argmax())
        assert abs(t["logprob"] - float(ref[t["id"]])) < 1e-3


def test_seed_makes_sampling_reproducible():
    args = ("--prompt", "Once upon a time", "--temperature", "1.0", "--top-k", "0", "--top-p", "1", "--min-p", "0",
            "--max-tokens", "16")
    a, _ = generate_json(*args, "--seed", "7")
    b, _ = generate_json(*args, "--seed", "7")
    c, _ = generate_json(*args, "--seed", "8")
    assert [t["id"] for t in a] == [t["id"] for t in b]
    assert [t["id"] for t in a] != [t["id"] for t in c]


def test_stop_string_ends_generation_and_is_excluded():
    free, _ = generate_json("--prompt", "Count: one, two, three,", "--temperature", "0", "--max-tokens", "24")
    text = "".join(t["text"] for t in free)
    assert "," in text
    stop = text[text.index(","):text.index(",") + 1]
    _, final = generate_json("--prompt", "Count: one, two, three,", "--temperature", "0", "--max-tokens", "24",
                             "--stop", stop)
    assert final["finish_reason"] == "stop"
    assert final["text"] == text[:text.index(stop)]


def test_stop_token_id_ends_generation():
    free, _ = generate_json("--prompt", "Count: one, two, three,", "--temperature", "0", "--max-tokens", "24")
    stop_id = free[3]["id"]
    first = next(i for i, t in enumerate(free) if t["id"] == stop_id)
    tokens, final = generate_json("--prompt", "Count: one, two, three,", "--temperature", "0", "--max-tokens", "24",
                                  "--stop-token-id", str(stop_id))
    assert final["finish_reason"] == "stop"
    assert [t["id"] for t in tokens] == [t["id"] for t in free[:first]]


def test_plain_generate_streams_text():
    r = run_cli("generate", "--model", "default", "--prompt", "The capital of France is", "--temperature", "0",
                "--max-tokens", "8")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


@pytest.mark.parametrize("flag,value", [("--temperature", "-1"), ("--top-p", "0"), ("--max-tokens", "0"),
                                        ("--top-k", "-3")])
def test_bad_sampling_flags_are_refused(flag, value):
    r = run_cli("generate", "--model", "default", "--prompt", "hi", flag, value)
    assert r.returncode == 2
    assert r.stderr.startswith("error:")
