"""The transformers side of bench/gpu/run.sh, on the same machine and weights as our benchmarks.

save:     random weights of a config, saved as a Hugging Face folder (our engine loads the same file); eager
          decode ms/step at several batch sizes and the time to first token of one prompt.
compile:  decode with a static cache and torch.compile (mode reduce-overhead: CUDA graphs), batch 1.
parity:   our decode logits (hyprstream-bench --logits-out) against transformers on the same tokens, in
          bf16 and in float32; the float32 forward is the reference for both.
"""
import argparse
import json
import sys
import time

import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def load_config(path):
    with open(path) as f:
        return AutoConfig.for_model(**{k: v for k, v in json.load(f).items() if k != "architectures"})


def time_decode(model, batch, context, steps):
    gen = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, model.config.vocab_size, (batch, context), generator=gen).to(model.device)
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
        cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        for step in range(steps + 2):
            if step == 2:
                sync()
                t0 = time.perf_counter()
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
            cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        nxt.cpu()
    return (time.perf_counter() - t0) / steps


def time_prefill(model, n, repeats=3):
    ids = torch.randint(0, model.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(1)).to(model.device)
    best = 1e30
    with torch.inference_mode():
        for r in range(repeats + 1):
            sync()
            t0 = time.perf_counter()
            model(input_ids=ids, use_cache=True).logits[:, -1].argmax(-1).cpu()
            if r:
                best = min(best, time.perf_counter() - t0)
    return best


def save(a):
    torch.manual_seed(0)
    config = load_config(a.config)
    with torch.device(a.device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    t0 = time.perf_counter()
    model.save_pretrained(a.dir)
    out = {"transformers": transformers.__version__, "torch": torch.__version__, "save_s": time.perf_counter() - t0,
           "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none", "eager": {}}
    out["eager"]["prefill_128_ms"] = time_prefill(model, 128) * 1e3
    for b in a.batches:
        s = time_decode(model, b, a.context, a.steps)
        out["eager"][f"batch_{b}"] = {"ms_per_step": s * 1e3, "tokens_per_s": b / s}
    return out


def compile_peer(a):
    # generate() with a static cache compiles the decode step itself (CUDA graphs through torch.compile).
    config = load_config(a.config)
    model = AutoModelForCausalLM.from_pretrained(a.dir, dtype=torch.bfloat16).to(a.device).eval()
    ids = torch.randint(0, config.vocab_size, (1, a.context), generator=torch.Generator().manual_seed(1234)).to(a.device)

    def run(n):
        sync()
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, cache_implementation="static")
        sync()
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    run(a.steps + 1)  # compiles
    run(a.steps + 1)
    compile_s = time.perf_counter() - t0
    one, many = min(run(1) for _ in range(2)), min(run(a.steps + 1) for _ in range(2))
    return {"static_compile": {"batch_1": {"ms_per_step": (many - one) / a.steps * 1e3}, "ttft_ms": one * 1e3,
                               "warmup_s": compile_s}}


def parity(a):
    with open(a.engine) as f:
        p = json.load(f)["parity"]
    vocab = p["vocab"]
    ours = np.fromfile(p["logits_file"], dtype=np.float32).reshape(-1, vocab)
    seq = p["prompt"] + p["tokens"][: len(ours) - 1]
    ids = torch.tensor([seq], device=a.device)
    positions = range(len(p["prompt"]) - 1, len(seq))
    model = AutoModelForCausalLM.from_pretrained(a.dir, dtype=torch.bfloat16).to(a.device).eval()
    with torch.inference_mode():
        bf16 = model(input_ids=ids).logits[0].float()
        ref = model.float()(input_ids=ids).logits[0].double()
    ours_t = torch.from_numpy(ours).to(a.device).double()
    rows = list(positions)

    def rel(x):
        return [float((x[i] - ref[r]).norm() / ref[r].norm()) for i, r in enumerate(rows)]

    ours_rel, hf_rel = rel(ours_t), rel(bf16[rows].double())
    top_ours = ours_t.argmax(-1).tolist()
    top_ref = ref[rows].argmax(-1).tolist()
    return {"steps": len(rows), "graphs": p["graphs"],
            "ours_vs_fp32_rel_max": max(ours_rel), "ours_vs_fp32_rel_mean": sum(ours_rel) / len(ours_rel),
            "transformers_bf16_vs_fp32_rel_max": max(hf_rel),
            "transformers_bf16_vs_fp32_rel_mean": sum(hf_rel) / len(hf_rel),
            "argmax_agree_with_fp32": sum(x == y for x, y in zip(top_ours, top_ref)) / len(rows)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["save", "compile", "parity"])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--config")
    ap.add_argument("--engine", help="hyprstream-bench JSON with a parity section (parity mode)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--steps", type=int, default=64)
    a = ap.parse_args()
    a.batches = [int(x) for x in a.batches.split(",")]
    out = {"save": save, "compile": compile_peer, "parity": parity}[a.mode](a)
    json.dump(out, sys.stdout, indent=2)


if __name__ == "__main__":
    main()
