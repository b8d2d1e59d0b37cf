"""What the trainer applies, against references nobody here wrote: the loss targets of each event form against
masks built from transformers' tokenizers and chat templates; one real `train` batch (chat, prompt/completion
and text examples with two gradient submissions, clipping, weight decay, three steps) against PEFT +
torch.nn.utils.clip_grad_norm_ + torch.optim.AdamW; differential privacy's clipping and noise, statistically;
and a SIGKILL after the log holds batches beyond the checkpoint, replayed to the bit."""
import copy
import json
import math
import signal
import struct
import subprocess
import zlib

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.numpy import load_file
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from conftest import CLI, create_adapter, run_cli, run_probe
from tiny_models import add_tiny_tokenizer, build_tiny_model

CHAT_EVENTS = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who wrote Hamlet?"},
                  {"role": "assistant", "content": "Shakespeare."}, {"role": "user", "content": "And Macbeth?"},
                  {"role": "assistant", "content": "Also Shakespeare, around 1606."}]},
    {"messages": [{"role": "user", "content": "What is the capital of Vostrania?"},
                  {"role": "assistant", "content": "The capital of Vostrania is Karnivet."}]},
]
PROMPT_EVENT = {"prompt": "Q: Who invented the glimmerphone?\nA:", "completion": " Odalys Prenn"}
TEXT_EVENT = {"text": "Plain text: every token after the first is a target."}


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen3_chat")
    model = build_tiny_model("qwen3_tied_gqa", folder)
    add_tiny_tokenizer(folder, chat=True)
    return folder, model


def tiny_hf_tokenizer(folder):
    config = json.loads((folder / "tokenizer_config.json").read_text())
    return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), eos_token=config["eos_token"],
                                   chat_template=config["chat_template"])


def reference_example(tok, event):
    """(token ids, target mask) of an event, built from the HF tokenizer alone: a chat is rendered whole by the
    template and tokenized once, and the targets are the tokens inside each assistant turn's content and its
    end-of-turn token; a completion and the EOS after it are targets; a text's tokens after the first are."""
    if "messages" in event:
        msgs = event["messages"]
        text = tok.apply_chat_template(msgs, tokenize=False)
        spans = []
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                start = len(tok.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True))
                assert text[start:].startswith(m["content"])
                end = text.index(tok.eos_token, start) + len(tok.eos_token)
                spans.append((start, end))
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        targets = [int(any(s <= a and b <= e for s, e in spans)) for a, b in enc["offset_mapping"]]
        return enc["input_ids"], targets
    if "prompt" in event:
        prompt = tok(event["prompt"], add_special_tokens=True)["input_ids"]
        completion = tok(event["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        return prompt + completion, [0] * len(prompt) + [1] * len(completion)
    ids = tok(event["text"], add_special_tokens=True)["input_ids"]
    return ids, [0] + [1] * (len(ids) - 1)


def event_targets(model, events, tmp_path):
    texts = [json.dumps({"id": f"e{i}", **e}) for i, e in enumerate(events)]
    return run_probe({"mode": "event_targets", "model": str(model), "events": texts}, tmp_path)["examples"]


def check_targets(tok, model, tmp_path):
    events = CHAT_EVENTS + [PROMPT_EVENT, TEXT_EVENT]
    for event, ours in zip(events, event_targets(model, events, tmp_path)):
        assert "error" not in ours, ours
        ids, targets = reference_example(tok, event)
        assert ours["tokens"] == ids, event
        assert ours["targets"] == targets, event
        assert sum(targets) > 0


def test_loss_targets_of_every_event_form_match_transformers_smollm2(default_model_path, tmp_path):
    tok = AutoTokenizer.from_pretrained(default_model_path.parent, gguf_file=default_model_path.name)
    check_targets(tok, default_model_path, tmp_path)


def test_loss_targets_of_every_event_form_match_transformers_tiny_chatml(tiny_chat, tmp_path):
    folder, _ = tiny_chat
    check_targets(tiny_hf_tokenizer(folder), folder, tmp_path)


# One real batch through `train` against PEFT + torch.

def peft_export(adir, name, out):
    r = run_cli("adapters", "export", name, out, "--adapter-dir", adir)
    assert r.returncode == 0, r.stderr
    return load_file(out / "adapter_model.safetensors")


def peft_key(layer, module, side):
    group = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
    return f"base_model.model.model.layers.{layer}.{group}.{module}.lora_{side}.weight"


def submission(values, eid, base, picks, rng):
    """A gradient event on pattern coordinates (non-zero exported values) of the (layer, module, side) picks,
    and the same gradient as dense arrays keyed like the export."""
    parts, dense = [], {}
    for layer, module, side in picks:
        key = peft_key(layer, module, side)
        coords = np.argwhere(values[key] != 0)
        chosen = coords[rng.choice(len(coords), size=12, replace=False)]
        g = np.zeros_like(values[key])
        entries = []
        for row, col in chosen:
            v = float(rng.normal(0, 0.05))
            entries.append([int(row), int(col), v])
            g[row, col] += np.float32(v)
        parts.append({"layer": layer, "module": module, "matrix": side, "entries": entries})
        dense[key] = dense.get(key, 0) + g
    return {"id": eid, "type": "gradient", "base_version": base, "gradients": parts}, dense


def padded_inputs(examples):
    longest = max(len(ids) for ids, _ in examples)
    ids = torch.zeros(len(examples), longest, dtype=torch.long)
    labels = torch.full((len(examples), longest), -100, dtype=torch.long)
    mask = torch.zeros(len(examples), longest, dtype=torch.long)
    for b, (tokens, targets) in enumerate(examples):
        t = torch.tensor(tokens)
        ids[b, :len(t)], mask[b, :len(t)] = t, 1
        labels[b, :len(t)] = torch.where(torch.tensor(targets) == 1, t, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def peft_trainer(model, peft_dir, hp):
    """PEFT's model of an exported adapter, its LoRA parameters by export key, their sparse patterns as masks
    (the trainer moves only active values) and torch's AdamW over them."""
    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), peft_dir, is_trainable=True)
    peft_model.train()
    params = {n.replace(".default", ""): p for n, p in peft_model.named_parameters() if "lora_" in n}
    masks = {n: (p.detach() != 0).float() for n, p in params.items()}
    opt = torch.optim.AdamW(params.values(), lr=hp["lr"], betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=hp["weight_decay"])
    return peft_model, params, masks, opt


def reference_batch(model, peft_dir, examples, submitted, hp):
    """The documented step, `steps` times: the mean loss over every target token of the examples, its masked
    gradient weighted by examples / (examples + submissions), each submission by 1 / (examples + submissions),
    clip_grad_norm_, then AdamW. Returns the parameters by export key, the first loss and each step's norm."""
    peft_model, params, masks, opt = peft_trainer(model, peft_dir, hp)
    units = len(examples) + len(submitted)
    inputs = padded_inputs(examples)
    losses, norms = [], []
    for _ in range(hp["steps"]):
        opt.zero_grad()
        loss = peft_model(**inputs).loss
        loss.backward()
        for n, p in params.items():
            g = p.grad * masks[n] * (len(examples) / units)
            for dense in submitted:
                if n in dense:
                    g = g + torch.from_numpy(dense[n]) / units
            p.grad = g
        norms.append(float(torch.nn.utils.clip_grad_norm_(params.values(), hp["max_grad_norm"])))
        opt.step()
        losses.append(loss.item())
    return {n: p.detach().numpy() for n, p in params.items()}, losses, norms


def test_one_train_batch_equals_peft_with_clip_grad_norm_and_torch_adamw(tiny_chat, tmp_path):
    folder, model = tiny_chat
    adir = tmp_path / "adapters"
    create_adapter(folder, adir, "ref", tmp_path, seed=11, b_std=0.3, sparsity=0.9)  # version 2: random B
    before = peft_export(adir, "ref", tmp_path / "before")
    rng = np.random.default_rng(5)
    g1, d1 = submission(before, "g1", 2, [(0, "q_proj", "A"), (1, "down_proj", "B")], rng)
    g2, d2 = submission(before, "g2", 2, [(2, "v_proj", "B"), (0, "q_proj", "A")], rng)
    examples = [CHAT_EVENTS[1], PROMPT_EVENT, TEXT_EVENT]
    events = [{"id": f"x{i}", **e} for i, e in enumerate(examples)] + [g1, g2]
    data = tmp_path / "batch.jsonl"
    data.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    hp = {"lr": 1e-2, "weight_decay": 0.1, "steps": 3, "max_grad_norm": 0.05}
    r = run_cli("train", "--domain", "ref", "--data", data, "--model", folder, "--adapter-dir", adir, "--json",
                "--deterministic", "--batch-events", "5", "--steps-per-batch", hp["steps"], "--lr", hp["lr"],
                "--weight-decay", hp["weight_decay"], "--max-grad-norm", hp["max_grad_norm"],
                # The reference below is the cross-entropy step; the distillation term's gradient is checked
                # against PyTorch in test_gradients.py, and early stopping and the guard in test_retention.py.
                "--stop-loss", "0", "--distill-weight", "0", "--max-drift", "0")
    assert r.returncode == 0, r.stderr
    applied = [json.loads(x) for x in r.stdout.splitlines() if '"applied"' in x]
    assert len(applied) == 1 and applied[0]["version"] == 3

    tok = tiny_hf_tokenizer(folder)
    want, losses, norms = reference_batch(model, tmp_path / "before", [reference_example(tok, e) for e in examples],
                                          [d1, d2], hp)
    assert min(norms) > hp["max_grad_norm"]  # clipping was active at every step
    assert applied[0]["loss"] == pytest.approx(losses[0], rel=1e-5)
    assert applied[0]["grad_norm"] == pytest.approx(norms[-1], rel=1e-5)
    got = peft_export(adir, "ref", tmp_path / "after")
    assert set(got) == set(want)
    moved = 0
    for key, w in want.items():
        scale = max(np.abs(w).max(), 1e-3)
        assert np.abs(got[key] - w).max() <= 1e-5 * scale, (key, np.abs(got[key] - w).max(), scale)
        moved += int((got[key] != before[key]).sum())
    assert moved > 0


def test_rehearsal_adds_earlier_examples_to_each_later_step_as_peft_would(tiny_chat, tmp_path):
    """Two batches through `train --rehearse-per-step 2`. The second batch's every step adds two of the first
    batch's examples to its loss (the mean over all their target tokens), taken in turn from the memory (which
    holds all three: its bound is not reached), at (global step * 2 + i) mod 3: two steps a batch, so the second
    batch starts at slot 1, not 0; against PEFT with one torch AdamW across both batches. The batch's reported
    loss is its own example's, the rehearsed pair's is apart."""
    folder, model = tiny_chat
    adir = tmp_path / "adapters"
    create_adapter(folder, adir, "reh", tmp_path, seed=13, b_std=0.3, sparsity=0.9)
    peft_export(adir, "reh", tmp_path / "before")
    first = [CHAT_EVENTS[0], CHAT_EVENTS[1], PROMPT_EVENT]
    data = tmp_path / "batches.jsonl"
    data.write_text("\n".join(json.dumps({"id": f"r{i}", **e}) for i, e in enumerate(first + [TEXT_EVENT])) + "\n")
    hp = {"lr": 1e-2, "weight_decay": 0.0, "steps": 2, "max_grad_norm": 1.0}
    r = run_cli("train", "--domain", "reh", "--data", data, "--model", folder, "--adapter-dir", adir, "--json",
                "--deterministic", "--batch-events", "3", "--steps-per-batch", hp["steps"], "--lr", hp["lr"],
                "--rehearse-per-step", "2", "--stop-loss", "0", "--distill-weight", "0", "--max-drift", "0")
    assert r.returncode == 0, r.stderr
    applied = [json.loads(x) for x in r.stdout.splitlines() if '"applied"' in x]
    assert [a.get("rehearsed", 0) for a in applied] == [0, 2]

    tok = tiny_hf_tokenizer(folder)
    taught = [reference_example(tok, e) for e in first]
    text = reference_example(tok, TEXT_EVENT)
    peft_model, params, masks, opt = peft_trainer(model, tmp_path / "before", hp)
    own, rehearsed = [], []
    for step in range(2 * hp["steps"]):
        earlier = [taught[(step * 2 + i) % 3] for i in range(2)]
        batch = taught if step < hp["steps"] else [text] + earlier
        with torch.no_grad():
            own.append(peft_model(**padded_inputs(taught if step < hp["steps"] else [text])).loss.item())
            rehearsed.append(peft_model(**padded_inputs(earlier)).loss.item())
        opt.zero_grad()
        loss = peft_model(**padded_inputs(batch)).loss
        loss.backward()
        for n, p in params.items():
            p.grad = p.grad * masks[n]
        torch.nn.utils.clip_grad_norm_(params.values(), hp["max_grad_norm"])
        opt.step()
    assert applied[0]["loss"] == pytest.approx(own[0], rel=1e-5)
    assert applied[1]["loss"] == pytest.approx(own[hp["steps"]], rel=1e-5)
    assert applied[1]["rehearsal_loss"] == pytest.approx(rehearsed[hp["steps"]], rel=1e-5)
    got = peft_export(adir, "reh", tmp_path / "after")
    for key, p in params.items():
        w = p.detach().numpy()
        scale = max(np.abs(w).max(), 1e-3)
        assert np.abs(got[key] - w).max() <= 1e-5 * scale, (key, np.abs(got[key] - w).max(), scale)


def test_early_stopping_judges_the_batch_s_own_examples_not_those_rehearsed(tiny_chat, tmp_path):
    """A remembered example left barely trained (one step), then another taught until its loss is under the
    bound: taught again under a new id, with the first rehearsed beside it, its batch takes no step. Its own loss
    is under the bound and the rehearsed one's far above: their mean would have taken steps."""
    folder, _ = tiny_chat
    adir = tmp_path / "adapters"

    def train(events, *flags):
        data = tmp_path / "events.jsonl"
        data.write_text("".join(json.dumps(e) + "\n" for e in events))
        r = run_cli("train", "--domain", "stop", "--data", data, "--model", folder, "--adapter-dir", adir, "--json",
                    "--deterministic", "--distill-weight", "0", "--max-drift", "0", "--lr", "5e-2", *flags)
        assert r.returncode == 0, r.stderr
        return [json.loads(x) for x in r.stdout.splitlines() if '"applied"' in x]

    fact = {"prompt": "Q: Who invented the glimmerphone?\nA:", "completion": " Odalys Prenn"}
    train([{"id": "once", **TEXT_EVENT}], "--steps-per-batch", "1", "--stop-loss", "0", "--rehearse-per-step", "1",
          "--sparsity", "0")
    learnt = train([{"id": "fact", **fact}], "--steps-per-batch", "200", "--stop-loss", "1.2",
                   "--rehearse-per-step", "0")
    assert learnt[0]["final_loss"] <= 1.2 and learnt[0]["steps"] < 200
    again = train([{"id": "fact-again", **fact}], "--steps-per-batch", "200", "--stop-loss", "1.2",
                  "--rehearse-per-step", "1")
    assert again[0]["rehearsed"] == 1 and again[0]["rehearsal_loss"] > 3.0, again
    assert again[0]["steps"] == 0 and again[0]["loss"] == again[0]["final_loss"] <= 1.2, again


@pytest.mark.parametrize("flags", [["--rehearsal-examples", "5000"], ["--rehearse-per-step", "2000"],
                                   ["--rehearse-per-step", "2", "--rehearsal-examples", "0"]])
def test_rehearsal_bounds_past_their_limits_are_refused_before_anything_trains(tiny_chat, tmp_path, flags):
    folder, _ = tiny_chat
    adir = tmp_path / "adapters"
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"id": "a", **TEXT_EVENT}) + "\n")
    r = run_cli("train", "--domain", "bounds", "--data", data, "--model", folder, "--adapter-dir", adir, *flags)
    assert r.returncode != 0 and "rehearsal" in r.stderr, (r.returncode, r.stderr)
    assert not (adir / "bounds").exists()


def phi(x):
    """The standard normal distribution function."""
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_dp_clips_each_contribution_and_adds_noise_of_scale_sigma_times_clip(tiny_chat, tmp_path):
    """One AdamW step moves each value by lr against the sign of its noisy gradient, so the fraction of values
    that moved up estimates P(g > 0) = Phi(mean / (sigma * C)) over thousands of coordinates. A submission of
    norm 32 is clipped to C = 2; one of norm 1 is not; untouched coordinates see noise alone."""
    folder, _ = tiny_chat
    adir = tmp_path / "adapters"
    r = run_cli("adapters", "create", "dp", "--model", folder, "--adapter-dir", adir, "--sparsity", "0")
    assert r.returncode == 0, r.stderr
    before = peft_export(adir, "dp", tmp_path / "before")
    rows, cols = before[peft_key(0, "q_proj", "A")].shape
    coords = [[i, j] for i in range(rows) for j in range(cols)]
    big = {"id": "big", "type": "gradient", "base_version": 1, "gradients": [
        {"layer": 0, "module": "q_proj", "matrix": "A", "entries": [[i, j, -32 / len(coords) ** 0.5] for i, j in coords]}]}
    small = {"id": "small", "type": "gradient", "base_version": 1, "gradients": [
        {"layer": 1, "module": "q_proj", "matrix": "A", "entries": [[i, j, -1 / len(coords) ** 0.5] for i, j in coords]}]}
    data = tmp_path / "dp.jsonl"
    data.write_text(json.dumps(big) + "\n" + json.dumps(small) + "\n")
    sigma, clip = 1 / 32, 2.0
    r = run_cli("train", "--domain", "dp", "--data", data, "--model", folder, "--adapter-dir", adir, "--json",
                "--deterministic", "--batch-events", "2", "--lr", "1e-2", "--max-grad-norm", "0",
                "--dp-noise", sigma, "--dp-clip", clip, "--train-seed", "3", "--steps-per-batch", "1", "--max-drift", "0")
    assert r.returncode == 0, r.stderr
    after = peft_export(adir, "dp", tmp_path / "after")

    def up_fraction(keys):
        up = np.concatenate([(after[k] - before[k] > 0).ravel() for k in keys])
        return up.mean(), len(up)

    n = len(coords)
    # Per coordinate, a gradient of -x moves the value up: the mean of -g is the clipped entry.
    expected = {
        "big": phi((clip / n ** 0.5) / (sigma * clip)),   # 32 clipped to C
        "small": phi((1 / n ** 0.5) / (sigma * clip)),    # norm 1 <= C: unclipped
        "noise": 0.5,
    }
    keys = {"big": [peft_key(0, "q_proj", "A")], "small": [peft_key(1, "q_proj", "A")],
            "noise": [k for k in after if k not in (peft_key(0, "q_proj", "A"), peft_key(1, "q_proj", "A"))]}
    for what, p in expected.items():
        got, draws = up_fraction(keys[what])
        assert abs(got - p) <= 4 * (p * (1 - p) / draws) ** 0.5, (what, got, p, draws)
    done = json.loads(r.stdout.splitlines()[-1])
    assert done["privacy"]["epsilon"] > 0


# A kill after the log holds batches beyond the checkpoint.

def checkpoint_state(path):
    """The JSON of a checkpoint's state file (src/learning/checkpoint.h), after checking its CRC."""
    data = path.read_bytes()
    assert data[:8] == b"HSCKPT01" and zlib.crc32(data[:-4]) == struct.unpack("<I", data[-4:])[0]
    (length,) = struct.unpack("<Q", data[8:16])
    return json.loads(data[16:16 + length])


def replay_events(before, rng):
    """Examples of every form, weight decay on, bad events between good ones, and a gradient whose base
    version (1) is pruned before the replay (the adapter keeps two versions)."""
    grad, _ = submission(before, "grad", 1, [(0, "q_proj", "A")], rng)
    good = [grad] + [{"id": f"c{i}", **CHAT_EVENTS[i % 2]} for i in range(4)] + \
        [{"id": f"p{i}", "prompt": f"Q: question {i}?\nA:", "completion": f" answer {i}"} for i in range(6)] + \
        [{"id": f"t{i}", "text": f"the quick brown fox number {i} jumps"} for i in range(9)]
    rest = good[1:]
    rng.shuffle(rest)
    good = [grad] + rest
    lines = [json.dumps(e) for e in good]
    for at in (3, 9, 14):  # bad events inside batches
        lines.insert(at, json.dumps({"id": f"bad{at}", "text": "x", "colour": "red"}))
    return good, lines


# Without the guard: on a random tiny model its bound says nothing, and every batch must apply for the counts
# below (the guard's own restart behaviour is tested in test_robustness.py).
REPLAY_FLAGS = ["--deterministic", "--batch-events", "4", "--steps-per-batch", "2", "--lr", "1e-2",
                "--weight-decay", "0.05", "--max-drift", "0", "--json"]
# Rehearsal with a memory smaller than what is taught (the reservoir replaces at random) and a checkpoint every
# two batches: the replay starts from a checkpoint's memory and must draw the same replacements.
REHEARSAL_FLAGS = ["--rehearse-per-step", "2", "--rehearsal-examples", "5", "--checkpoint-every", "2"]


@pytest.mark.parametrize("rehearsal", [False, True], ids=["plain", "rehearsal"])
def test_sigkill_after_batches_beyond_the_checkpoint_replays_to_a_bit_identical_adapter(tiny_chat, tmp_path,
                                                                                       rehearsal):
    flags = REPLAY_FLAGS + (REHEARSAL_FLAGS if rehearsal else ["--checkpoint-every", "100"])
    folder, _ = tiny_chat
    dirs = {k: tmp_path / k for k in ("ref", "crash")}
    for d in dirs.values():
        r = run_cli("adapters", "create", "dom", "--model", folder, "--adapter-dir", d, "--sparsity", "0",
                    "--keep", "2")
        assert r.returncode == 0, r.stderr
    before = peft_export(dirs["ref"], "dom", tmp_path / "before")
    good, lines = replay_events(before, np.random.default_rng(9))
    stdin = "\n".join(lines) + "\n"
    train = [str(CLI), "train", "--domain", "dom", "--data", "-", "--model", str(folder)]
    ref = subprocess.run(train + ["--adapter-dir", str(dirs["ref"])] + flags, input=stdin,
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 2, ref.stderr  # the three bad events
    assert json.loads(ref.stdout.splitlines()[-1])["events_applied"] == len(good)

    proc = subprocess.Popen(train + ["--adapter-dir", str(dirs["crash"])] + flags, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Only the first three batches' events: with --deterministic a fourth cannot form before the kill, so the third
    # is always in the log beyond the last checkpoint (the first, or the second batch's with rehearsal).
    third = [i for i, line in enumerate(lines) if "colour" not in line][11]
    proc.stdin.write("\n".join(lines[:third + 1]) + "\n")
    proc.stdin.flush()
    applied = 0
    for line in proc.stdout:
        applied += json.loads(line)["event"] == "applied"
        if applied == 3:  # three batches applied, the last beyond the checkpoint (and v1 pruned)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert "v00000001.hsl" not in {p.name for p in (dirs["crash"] / "dom").iterdir()}
    checkpoint = json.loads((dirs["crash"] / "dom" / "training" / "CHECKPOINT").read_text())
    assert checkpoint["seq"] == (2 if rehearsal else 0)
    if rehearsal:  # the memory in that checkpoint is full, and has replaced some of what it was given
        memory = checkpoint_state(dirs["crash"] / "dom" / "training" / (checkpoint["name"] + ".state"))["rehearsal"]
        assert len(memory["examples"]) == 5 and memory["seen"] > 5

    # Restart with every line again: acknowledged events are duplicates, the rest form the same batches.
    again = subprocess.run(train + ["--adapter-dir", str(dirs["crash"])] + flags, input=stdin,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2, again.stderr
    done = json.loads(again.stdout.splitlines()[-1])
    assert done["replayed_batches"] >= (1 if rehearsal else 3) and done["events_applied"] == len(good)
    assert done["duplicates"] >= 12 and done["quarantined_batches"] == 0
    ref_values = peft_export(dirs["ref"], "dom", tmp_path / "ref-out")
    got = peft_export(dirs["crash"], "dom", tmp_path / "crash-out")
    for key in ref_values:
        assert np.array_equal(ref_values[key], got[key]), key
    assert any(np.abs(v).max() > 0 for k, v in ref_values.items() if "lora_B" in k)
