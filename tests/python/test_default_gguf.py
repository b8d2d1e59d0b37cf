"""The bundled SmolLM2-135M-Instruct GGUF against transformers loading the same file (gguf_file=)."""
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import run_cli, run_probe

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "<|im_start|>user\nName three primary colours.<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def hf_gguf(default_model_path):
    kw = dict(gguf_file=default_model_path.name)
    tok = AutoTokenizer.from_pretrained(default_model_path.parent, **kw)
    model = AutoModelForCausalLM.from_pretrained(default_model_path.parent, dtype=torch.float32, **kw).eval()
    return tok, model


def test_top1_matches_transformers_at_every_position(hf_gguf, default_model_path, tmp_path):
    tok, model = hf_gguf
    ours_ids = run_probe({"mode": "tokenize", "model": str(default_model_path), "texts": PROMPTS}, tmp_path)["ids"]
    prompts = [tok.encode(p, add_special_tokens=False) for p in PROMPTS]
    assert ours_ids == prompts
    out = tmp_path / "logits.safetensors"
    run_probe({"mode": "logits", "model": str(default_model_path), "prompts": prompts, "out": str(out)}, tmp_path)
    ours = load_file(str(out))
    worst = 0.0
    for i, ids in enumerate(prompts):
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0].float().numpy()
        got = ours[f"logits.{i}"]
        assert got.shape == ref.shape
        np.testing.assert_array_equal(got.argmax(-1), ref.argmax(-1))
        worst = max(worst, float(np.abs(got - ref).max()))
    print(f"SmolLM2-135M GGUF (Q4_1): max |logit diff| vs transformers = {worst:.3e}")


def test_chat_answers_capital_of_france():
    r = run_cli("chat", "--model", "default", "--temperature", "0", "--max-tokens", "48",
                input_text="What is the capital of France?\n")
    assert r.returncode == 0, r.stderr
    print("chat reply:", r.stdout.strip())
    assert "Paris" in r.stdout


def test_int8_weights_track_the_dense_model(default_model_path, hf_gguf, tmp_path):
    """--quantize int8 trades exactness for decode speed; its predictions must stay the model's."""
    tok, _ = hf_gguf
    prompts = [tok.encode(p, add_special_tokens=False) for p in PROMPTS]
    dense, int8 = tmp_path / "dense.safetensors", tmp_path / "int8.safetensors"
    for out, quantize in ((dense, "none"), (int8, "int8")):
        run_probe({"mode": "logits", "model": str(default_model_path), "prompts": prompts, "quantize": quantize,
                   "out": str(out)}, tmp_path)
    a, b = load_file(str(dense)), load_file(str(int8))
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
