"""The bundled SmolLM2-135M-Instruct GGUF against transformers loading the same file (gguf_file=)."""
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from conftest import run_cli, run_probe

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "<|im_start|>user\nName three primary colours.<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def hf_gguf(hf_gguf_tokenizer, hf_gguf_model):
    return hf_gguf_tokenizer, hf_gguf_model


@pytest.fixture(scope="module")
def dense_logits(hf_gguf, default_model_path, tmp_path_factory):
    """Our logits for PROMPTS (tokenized by transformers) at every position, dequantised weights in fp32."""
    tok, _ = hf_gguf
    prompts = [tok.encode(p, add_special_tokens=False) for p in PROMPTS]
    tmp = tmp_path_factory.mktemp("dense")
    out = tmp / "logits.safetensors"
    run_probe({"mode": "logits", "model": str(default_model_path), "prompts": prompts, "out": str(out)}, tmp)
    return prompts, load_file(str(out))


def test_logits_match_transformers_at_every_position(hf_gguf, dense_logits, default_model_path, tmp_path):
    """Both dequantise the same Q4_1 file and compute in fp32: top-1 agrees everywhere, and the logits agree
    to 1e-3 (5e-5 measured), far below the quantisation error a wrong dequantiser would add."""
    tok, model = hf_gguf
    ours_ids = run_probe({"mode": "tokenize", "model": str(default_model_path), "texts": PROMPTS}, tmp_path)["ids"]
    prompts, ours = dense_logits
    assert ours_ids == prompts
    worst = 0.0
    for i, ids in enumerate(prompts):
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0].float().numpy()
        got = ours[f"logits.{i}"]
        assert got.shape == ref.shape
        np.testing.assert_array_equal(got.argmax(-1), ref.argmax(-1))
        worst = max(worst, float(np.abs(got - ref).max()))
    print(f"SmolLM2-135M GGUF (Q4_1): max |logit diff| vs transformers = {worst:.3e}")
    assert worst <= 1e-3


def test_chat_answers_capital_of_france():
    r = run_cli("chat", "--model", "default", "--temperature", "0", "--max-tokens", "48",
                input_text="What is the capital of France?\n")
    assert r.returncode == 0, r.stderr
    print("chat reply:", r.stdout.strip())
    assert "Paris" in r.stdout


def test_int8_weights_track_the_dense_model(default_model_path, dense_logits, tmp_path):
    """--quantize int8 trades exactness for decode speed; its predictions must stay the model's."""
    prompts, a = dense_logits
    int8 = tmp_path / "int8.safetensors"
    run_probe({"mode": "logits", "model": str(default_model_path), "prompts": prompts, "quantize": "int8",
               "out": str(int8)}, tmp_path)
    b = load_file(str(int8))
    agree = total = 0
    for i in range(len(prompts)):
        agree += int((a[f"logits.{i}"].argmax(-1) == b[f"logits.{i}"].argmax(-1)).sum())
        total += len(prompts[i])
    print(f"int8 weights: top-1 agrees with dense at {agree}/{total} positions")
    assert agree >= 0.9 * total
    r = run_cli("chat", "--model", "default", "--quantize", "int8", "--temperature", "0", "--max-tokens", "48",
                input_text="What is the capital of France?\n")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
