"""Online learning through the real `hyprstream train` / `chat --learn` binaries: bad events, immediate effect,
crash safety under SIGKILL, and a chat correction teaching the default model, with the default settings, a fact
it did not know (test_retention.py teaches ten through the server and checks what else changes)."""
import json
import os
import random
import signal
import subprocess
import threading

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import CLI, cli_ok, json_lines, run_cli
from tiny_models import add_tiny_tokenizer, build_tiny_model

WORDS = "the quick brown fox jumps over lazy dog online learning sparse adapters every event applied".split()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen3_learn")
    build_tiny_model("qwen3_tied_gqa", folder)
    add_tiny_tokenizer(folder)
    return folder


def exported(adir, name, tmp_path, tag):
    out = tmp_path / f"export-{tag}"
    cli_ok("adapters", "export", name, out, "--adapter-dir", adir)
    return load_file(out / "adapter_model.safetensors")


def make_events(n, seed, prefix="e"):
    """Plain-text and prompt/completion examples with a gradient submission every fourth event (dense tiny
    adapter, so every in-shape coordinate is in the pattern; base version 1 is kept throughout)."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        eid = f"{prefix}{i}"
        if i % 4 == 3:
            entries = [[rng.randrange(16), rng.randrange(64), rng.uniform(-1, 1)] for _ in range(8)]
            events.append({"id": eid, "type": "gradient", "base_version": 1,
                           "gradients": [{"layer": rng.randrange(3), "module": "q_proj", "matrix": "A",
                                          "entries": entries}]})
        elif i % 2:
            events.append({"id": eid, "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))})
        else:
            events.append({"id": eid, "prompt": " ".join(rng.choice(WORDS) for _ in range(4)),
                           "completion": " " + " ".join(rng.choice(WORDS) for _ in range(3))})
    return events


TRAIN_FLAGS = ["--deterministic", "--batch-events", "16", "--checkpoint-every", "5", "--lr", "1e-2", "--json"]


def test_bad_events_are_rejected_with_clear_errors_and_never_change_the_adapter(tiny, tmp_path):
    adir = tmp_path / "adapters"
    cli_ok("adapters", "create", "bad", "--model", tiny, "--adapter-dir", adir, "--sparsity", "0.99")
    before = exported(adir, "bad", tmp_path, "before")
    # A coordinate inside q_proj.A's shape but outside its pattern (A is random on the pattern, zero elsewhere).
    qa = before["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    row, col = map(int, np.argwhere(qa == 0)[0])
    grad = {"id": "g", "type": "gradient", "base_version": 1,
            "gradients": [{"layer": 0, "module": "q_proj", "matrix": "A", "entries": [[row, col, 0.5]]}]}
    bad = {
        "{not json": "malformed JSON",
        json.dumps({"id": "u1", "text": "the fox", "colour": "red"}): 'unknown field "colour"',
        json.dumps({"id": 7, "text": "the fox"}): '"id"',
        json.dumps({"id": "t1", "prompt": 3, "completion": "x"}): '"prompt" must be a string',
        json.dumps({"id": "t2", "prompt": "the fox", "completion": ""}): "completion is empty",
        json.dumps({"id": "t3", "messages": [{"role": "user", "content": "hi"}]}): "chat template",
        json.dumps({"id": "t4", "text": "the quick brown fox " * 200}): "context holds",
        json.dumps({**grad, "id": "n1", "gradients": [{**grad["gradients"][0], "entries": [[0, 0, float("nan")]]}]}):
            "malformed JSON",
        json.dumps(grad).replace("0.5", "1e999").replace('"g"', '"n2"'): "not finite or out of range",
        json.dumps({**grad, "id": "p1"}): "outside the adapter's sparsity pattern",
        json.dumps({**grad, "id": "p2", "gradients": [{**grad["gradients"][0], "entries": [[999, 0, 1.0]]}]}):
            "outside the adapter's sparsity pattern",
        json.dumps({**grad, "id": "v1", "base_version": 7}): "base version 7 is newer than the adapter's current version 1",
        json.dumps({**grad, "id": "m1", "gradients": [{**grad["gradients"][0], "module": "lm_head"}]}): "lm_head",
        json.dumps({"id": "d1", "domain": "elsewhere", "text": "the fox"}): "domain 'elsewhere'",
    }
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(bad) + "\n")
    r = run_cli("train", "--domain", "bad", "--data", data, "--model", tiny, "--adapter-dir", adir, "--json")
    assert r.returncode == 2, r.stderr
    lines = json_lines(r.stdout)
    rejected = [x for x in lines if x["event"] == "rejected"]
    assert len(rejected) == len(bad)
    for (line, why), rej in zip(bad.items(), rejected):
        assert why in rej["error"], (line, rej["error"])
    assert not [x for x in lines if x["event"] in ("durable", "applied")]
    done = lines[-1]
    assert done["event"] == "done" and done["events_applied"] == 0 and done["rejected"] == len(bad)
    assert done["version"] == 1
    after = exported(adir, "bad", tmp_path, "after")
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_a_generation_after_training_returns_uses_the_new_version(tiny, tmp_path):
    adir = tmp_path / "adapters"
    data = tmp_path / "events.jsonl"
    data.write_text("\n".join(json.dumps(e) for e in make_events(40, 1)) + "\n")
    r = cli_ok("train", "--domain", "now", "--data", data, "--model", tiny, "--adapter-dir", adir, "--sparsity", "0",
               *TRAIN_FLAGS)
    lines = json_lines(r.stdout)
    applied = [x for x in lines if x["event"] == "applied"]
    assert [x["version"] for x in applied] == [2, 3, 4]  # 16 + 16 + 8 events
    assert lines[-1]["version"] == 4 and lines[-1]["events_applied"] == 40
    g = cli_ok("generate", "--model", tiny, "--adapter", "now", "--adapter-dir", adir, "-p", "the fox",
               "--max-tokens", "4", "--temperature", "0", "--json")
    assert json_lines(g.stdout)[-1]["adapter"] == {"name": "now", "version": 4}
    # Resubmitting the same file applies nothing twice.
    r = cli_ok("train", "--domain", "now", "--data", data, "--model", tiny, "--adapter-dir", adir, *TRAIN_FLAGS)
    done = json_lines(r.stdout)[-1]
    assert done["duplicates"] == 40 and done["events_applied"] == 40 and done["version"] == 4


def start_train(tiny, adir, domain):
    return subprocess.Popen([str(CLI), "train", "--domain", domain, "--data", "-", "--model", str(tiny),
                             "--adapter-dir", str(adir), *TRAIN_FLAGS], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_at_a_random_point_loses_nothing_and_applies_everything_once(tiny, tmp_path):
    events = make_events(1000, 7)
    lines = [json.dumps(e) for e in events]
    data = tmp_path / "all.jsonl"
    data.write_text("\n".join(lines) + "\n")

    # The uninterrupted run.
    ref_dir = tmp_path / "ref"
    for d in (ref_dir, tmp_path / "crash"):
        cli_ok("adapters", "create", "dom", "--model", tiny, "--adapter-dir", d, "--sparsity", "0", "--keep", "1000")
    r = cli_ok("train", "--domain", "dom", "--data", data, "--model", tiny, "--adapter-dir", ref_dir, *TRAIN_FLAGS,
               timeout=600)
    assert json_lines(r.stdout)[-1]["events_applied"] == 1000

    # The same stream, killed once a random number of events have been acknowledged.
    adir = tmp_path / "crash"
    kill_after = random.Random(os.getpid()).randrange(100, 900)
    proc = start_train(tiny, adir, "dom")

    def feed():
        try:
            for line in lines:
                proc.stdin.write(line + "\n")
            proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # killed

    writer = threading.Thread(target=feed)
    writer.start()
    acked, applied = [], set()
    for out in proc.stdout:
        msg = json.loads(out)
        if msg["event"] == "applied":
            applied |= set(msg["ids"])
        if msg["event"] == "durable":
            acked += msg["ids"]
            if len(acked) >= kill_after:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=60)
    writer.join(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert acked == [e["id"] for e in events[:len(acked)]]
    unread = json_lines(proc.stdout.read())  # what it printed before it died
    applied |= {i for m in unread if m["event"] == "applied" for i in m["ids"]}

    # Restart: resubmit every unacknowledged event, plus the last acknowledged batch (duplicates are skipped).
    acked_set = set(acked)
    resubmit = [line for e, line in zip(events, lines) if e["id"] not in acked_set]
    again = lines[len(acked) - 16:len(acked)]
    proc = start_train(tiny, adir, "dom")
    out, err = proc.communicate("\n".join(again + resubmit) + "\n", timeout=600)
    assert proc.returncode == 0, err
    msgs = json_lines(out)
    done = msgs[-1]
    assert done["events_applied"] == 1000, done
    assert done["replayed_batches"] >= 1 or len(acked) % 80 == 0  # the batches after the last checkpoint
    assert done["duplicates"] >= len(again)
    newly = [i for m in msgs if m["event"] == "durable" for i in m["ids"]]
    assert not set(newly) & acked_set  # no acknowledged event was applied a second time
    # Exact counters after replay: every event has an applied line (replayed batches too), and the manifest
    # counts each event once.
    applied |= {i for m in msgs if m["event"] == "applied" for i in m["ids"]}
    assert applied == {e["id"] for e in events}
    shown = json.loads(cli_ok("adapters", "show", "dom", "--json", "--adapter-dir", adir).stdout)
    assert next(v for v in shown["versions"] if v["version"] == shown["current"])["events"] == 1000

    ref = exported(ref_dir, "dom", tmp_path, "ref")
    got = exported(adir, "dom", tmp_path, "crash")
    assert set(ref) == set(got)
    for k in ref:
        assert np.array_equal(ref[k], got[k]), (k, float(np.abs(ref[k] - got[k]).max()))
    assert any(np.abs(v).max() > 0 for k, v in ref.items() if "lora_B" in k)  # training did move B


@pytest.mark.slow
def test_chat_learn_correction_changes_the_next_answer(default_model_path, tmp_path):
    q = "What is the capital of Vostrania?"
    script = f"{q}\n/correct The capital of Vostrania is Karnivet.\n/new\n{q}\n"
    r = run_cli("chat", "--model", default_model_path, "--adapter", "chat-demo", "--adapter-dir", tmp_path / "a",
                "--learn", "--temperature", "0", "--max-tokens", "24",
                input_text=script, timeout=900)
    assert r.returncode == 0, r.stderr
    first, rest = r.stdout.split("(learned: adapter chat-demo is now version 2)")
    assert "Karnivet" not in first
    second = rest.split("(new conversation)")[1]
    assert "Karnivet" in second, r.stdout
