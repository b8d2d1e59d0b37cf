"""Adapter gradients from libtorch autograd against transformers + PEFT autograd on a tiny random Qwen3."""
import copy

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.numpy import load_file

from conftest import create_adapter, run_cli, run_probe
from tiny_models import build_tiny_model, prompt_of


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen3_grad")
    return folder, build_tiny_model("qwen3_tied_gqa", folder)


def examples():
    # Prompt/completion pairs of different lengths: the loss counts completion tokens only.
    out = []
    for i, (p, c) in enumerate([(7, 5), (3, 9), (12, 4)]):
        tokens = prompt_of(p + c, 300 + i)
        out.append({"tokens": tokens, "targets": [0] * p + [1] * c})
    return out


def hf_inputs(batch):
    """The padded batch as transformers takes it: labels -100 except on target tokens."""
    longest = max(len(e["tokens"]) for e in batch)
    ids = torch.zeros(len(batch), longest, dtype=torch.long)
    labels = torch.full((len(batch), longest), -100, dtype=torch.long)
    mask = torch.zeros(len(batch), longest, dtype=torch.long)
    for b, e in enumerate(batch):
        n = len(e["tokens"])
        ids[b, :n] = torch.tensor(e["tokens"])
        mask[b, :n] = 1
        labels[b, :n] = torch.where(torch.tensor(e["targets"]) == 1, torch.tensor(e["tokens"]), -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def peft_gradients(model, peft_dir, batch):
    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), peft_dir, is_trainable=True)
    peft_model.train()
    out = peft_model(**hf_inputs(batch))
    out.loss.backward()
    grads = {}
    for name, p in peft_model.named_parameters():
        if "lora_" in name:
            layer = int(name.split("layers.")[1].split(".")[0])
            module = name.split(".")[-4]
            side = "A" if "lora_A" in name else "B"
            grads[f"layers.{layer}.{module}.lora_{side}"] = p.grad.detach().numpy()
    return out.loss.item(), grads


def adapter_and_peft_export(folder, tmp_path, name, **create):
    """A random sparse adapter made by the CLI, and its PEFT export: (adapter dir, PEFT dir)."""
    adir, peft_dir = tmp_path / "adapters", tmp_path / "peft"
    create_adapter(folder, adir, name, tmp_path, **create)
    r = run_cli("adapters", "export", name, peft_dir, "--adapter-dir", adir)
    assert r.returncode == 0, r.stderr
    return adir, peft_dir


# The last case bounds memory hard: one example per forward, three positions of logits at a time.
@pytest.mark.parametrize("sparsity,budget", [(0.0, {}), (0.9, {}),
                                             (0.9, {"tokens_per_forward": 8, "logits_chunk": 3})])
def test_gradients_match_peft(tiny, tmp_path, sparsity, budget):
    folder, model = tiny
    adir, peft_dir = adapter_and_peft_export(folder, tmp_path, "g", seed=21, b_std=0.3, sparsity=sparsity)
    batch = examples()
    out = tmp_path / "grads.safetensors"
    ours = run_probe({"mode": "lora_grad", "model": str(folder), "adapter_dir": str(adir), "name": "g",
                      "examples": batch, "out": str(out), **budget}, tmp_path)
    assert ours["target_tokens"] == sum(sum(e["targets"]) for e in batch)
    loss, theirs = peft_gradients(model, peft_dir, batch)
    assert ours["loss"] == pytest.approx(loss, rel=1e-5)
    mine = load_file(out)
    assert set(mine) == set(theirs)
    exported = load_file(peft_dir / "adapter_model.safetensors")
    for key, g in theirs.items():
        side = "lora_A" if key.endswith("A") else "lora_B"
        layer, module = key.split(".")[1], key.split(".")[2]
        group = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
        w = exported[f"base_model.model.model.layers.{layer}.{group}.{module}.{side}.weight"]
        active = w != 0  # exported values are non-zero exactly on the pattern (random A and B)
        scale = np.abs(g).max()
        assert scale > 0
        # Equal to PEFT's dense gradient on the active entries, zero elsewhere.
        assert np.abs(mine[key][active] - g[active]).max() <= 1e-5 * scale, key
        assert np.all(mine[key][~active] == 0), key
        if sparsity == 0.0:
            assert active.all()


def test_adamw_steps_match_torch_adamw_on_masked_parameters(tiny, tmp_path):
    """Three AdamW steps (with weight decay) on our sparse state equal torch.optim.AdamW on PEFT's dense
    parameters whose gradients are masked to the pattern."""
    folder, model = tiny
    adir, peft_dir = adapter_and_peft_export(folder, tmp_path, "opt", seed=5, b_std=0.3, sparsity=0.9)
    batch = examples()
    opts = {"lr": 1e-2, "weight_decay": 0.05, "betas": [0.9, 0.999], "eps": 1e-8, "steps": 3}
    out = tmp_path / "after.safetensors"
    ours = run_probe({"mode": "adamw", "model": str(folder), "adapter_dir": str(adir), "name": "opt",
                      "examples": batch, "out": str(out), **opts}, tmp_path)
    mine = load_file(out)

    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), peft_dir, is_trainable=True)
    peft_model.train()
    params = {n: p for n, p in peft_model.named_parameters() if "lora_" in n}
    masks = {n: (p.detach() != 0).float() for n, p in params.items()}  # exported values are non-zero on the pattern
    opt = torch.optim.AdamW(params.values(), lr=opts["lr"], weight_decay=opts["weight_decay"],
                            betas=tuple(opts["betas"]), eps=opts["eps"])
    inputs = hf_inputs(batch)
    losses = []
    for _ in range(opts["steps"]):
        opt.zero_grad()
        loss = peft_model(**inputs).loss
        loss.backward()
        for n, p in params.items():
            p.grad.mul_(masks[n])
        opt.step()
        losses.append(loss.item())
    assert ours["losses"] == pytest.approx(losses, rel=1e-5)
    assert ours["losses"][-1] < ours["losses"][0]  # the steps did learn something
    for n, p in params.items():
        layer = int(n.split("layers.")[1].split(".")[0])
        module, side = n.split(".")[-4], "A" if "lora_A" in n else "B"
        got, want = mine[f"layers.{layer}.{module}.lora_{side}"], p.detach().numpy()
        m = masks[n].numpy().astype(bool)
        assert np.all(got[~m] == 0) and np.all(want[~m] == 0)
        assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max()), n
    assert ours["state_values"] == int(sum(m.sum() for m in masks.values()))  # moments only on active entries


def reference_topk_kl(teacher_logits, student_logits, k):
    """KL(teacher || student) per position over the teacher's top k tokens and one bucket for all others."""
    t, s = teacher_logits.log_softmax(-1), student_logits.log_softmax(-1)
    t_top, idx = t.topk(k, -1)
    others = torch.ones_like(t, dtype=torch.bool).scatter(-1, idx, False)
    t_rest = torch.logsumexp(t.masked_fill(~others, float("-inf")), -1)
    s_rest = torch.logsumexp(s.masked_fill(~others, float("-inf")), -1)
    s_top = s.gather(-1, idx)
    return (t_top.exp() * (t_top - s_top)).sum(-1) + t_rest.exp() * (t_rest - s_rest)


def test_distillation_term_gradients_match_torch_on_peft(tiny, tmp_path):
    """The training loss with the distillation term (cross-entropy on the examples plus weight x the mean over
    anchor positions of KL from the base model's top-k distributions) and its gradient, against the same loss
    written in PyTorch on PEFT's model, the teacher being that model with its adapter disabled."""
    folder, model = tiny
    adir, peft_dir = adapter_and_peft_export(folder, tmp_path, "kl", seed=9, b_std=0.4, sparsity=0.9)
    batch = examples()
    anchors = [{"tokens": prompt_of(14, 500), "first": 5}, {"tokens": prompt_of(9, 501), "first": 2}]
    top_k, weight = 8, 0.7
    out = tmp_path / "grads.safetensors"
    ours = run_probe({"mode": "lora_grad", "model": str(folder), "adapter_dir": str(adir), "name": "kl",
                      "examples": batch, "anchors": anchors, "top_k": top_k, "distill_weight": weight,
                      "out": str(out), "tokens_per_forward": 16, "logits_chunk": 5}, tmp_path)

    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), peft_dir, is_trainable=True)
    peft_model.train()
    ce = peft_model(**hf_inputs(batch)).loss
    kls = []
    for a in anchors:
        ids = torch.tensor([a["tokens"]])
        span = slice(a["first"], len(a["tokens"]) - 1)
        with torch.no_grad(), peft_model.disable_adapter():
            teacher = peft_model(input_ids=ids).logits[0, span]
        kls.append(reference_topk_kl(teacher, peft_model(input_ids=ids).logits[0, span], top_k))
    kl = torch.cat(kls).mean()
    assert kl.item() > 1e-4  # the adapter's random B moves the model: the term is not trivially zero
    (ce + weight * kl).backward()
    assert ours["loss"] == pytest.approx(ce.item(), rel=1e-5)
    assert ours["kl"] == pytest.approx(kl.item(), rel=1e-4)
    mine = load_file(out)
    for name, p in peft_model.named_parameters():
        if "lora_" not in name:
            continue
        layer = int(name.split("layers.")[1].split(".")[0])
        key = f"layers.{layer}.{name.split('.')[-4]}.lora_{'A' if 'lora_A' in name else 'B'}"
        g = p.grad.detach().numpy()
        active = p.detach().numpy() != 0  # the exported values are non-zero exactly on the pattern
        assert np.abs(mine[key][active] - g[active]).max() <= 1e-5 * np.abs(g).max(), key
        assert np.all(mine[key][~active] == 0), key
