"""Hostile and careless input to the learning pipeline and the adapter store, through the real CLI: one bad
event or one damaged file never takes a domain or the store down, and no writer wipes data it did not write."""
import json
import os
import resource
import signal
import subprocess
import threading
import time

import pytest

from conftest import CLI, cli_ok, json_lines, run_cli
from tiny_models import add_tiny_tokenizer, build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen3_robust")
    build_tiny_model("qwen3_tied_gqa", folder)
    add_tiny_tokenizer(folder)
    return folder


def train(tiny, adir, domain, events, *flags, raw=None):
    """`train --json` on the given events (or raw bytes), returning (returncode, lines, stderr)."""
    data = adir.parent / f"{domain}-{time.monotonic_ns()}.jsonl"
    data.write_bytes(raw if raw is not None else ("\n".join(json.dumps(e) for e in events) + "\n").encode())
    r = subprocess.run([str(CLI), "train", "--domain", domain, "--data", str(data), "--model", str(tiny),
                        "--adapter-dir", str(adir), "--json", "--deterministic", *map(str, flags)],
                       capture_output=True, timeout=300)
    return r.returncode, json_lines(r.stdout.decode()), r.stderr.decode()


def manifest(adir, name):
    return json.loads((adir / name / "manifest.json").read_text())


def start_trainer(model, adir, domain, *flags, **popen):
    return subprocess.Popen([str(CLI), "train", "--domain", domain, "--data", "-", "--model", str(model),
                             "--adapter-dir", str(adir), "--json", *map(str, flags)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finish(proc):
    """Closes the trainer's input and returns (stdout, stderr) once it exits."""
    proc.stdin.close()
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.wait(timeout=60)
    return out, err


def wait_for(proc, event):
    for line in proc.stdout:
        msg = json.loads(line)
        if msg["event"] == event:
            return msg
    raise AssertionError(f"the trainer ended before '{event}': {proc.stderr.read()}")


# 1. One long example must not take the domain down.

def test_an_example_over_the_token_limit_is_refused_before_it_is_acknowledged(tiny, tmp_path):
    adir = tmp_path / "adapters"
    long_text = "the quick brown fox jumps over the lazy dog " * 12
    rc, lines, err = train(tiny, adir, "long", [{"id": "long", "text": long_text}, {"id": "short", "text": "the fox"}],
                           "--max-example-tokens", 32)
    assert rc == 2, err
    rejected = [x for x in lines if x["event"] == "rejected"]
    assert len(rejected) == 1 and "at most 32 per example" in rejected[0]["error"]
    durable = [i for x in lines if x["event"] == "durable" for i in x["ids"]]
    assert durable == ["short"]  # the long one was never acknowledged


def test_a_batch_that_fails_to_apply_is_quarantined_and_the_domain_carries_on(tiny, tmp_path):
    adir = tmp_path / "adapters"
    events = [{"id": "a", "text": "the quick brown fox"}, {"id": "b", "text": "online learning of adapters"}]
    # A learning rate beyond float range makes the update non-finite: the batch fails on every attempt.
    rc, lines, err = train(tiny, adir, "q", events, "--lr", "1e39")
    assert rc == 0, err
    quarantined = [x for x in lines if x["event"] == "quarantined"]
    assert len(quarantined) == 1 and quarantined[0]["ids"] == ["a", "b"]
    assert "non-finite" in quarantined[0]["reason"]
    record = json.loads(open(quarantined[0]["file"]).read())
    assert [json.loads(e)["id"] for e in record["events"]] == ["a", "b"]  # the events are kept
    done = lines[-1]
    assert done["quarantined_batches"] == 1 and done["quarantined_events"] == 2 and done["version"] == 1
    assert not [x for x in lines if x["event"] == "applied"]
    # The domain is not wedged: a restart trains, and the quarantined ids may be sent again.
    rc, lines, err = train(tiny, adir, "q", events + [{"id": "c", "text": "every event applied"}])
    assert rc == 0, err
    applied = [x for x in lines if x["event"] == "applied"]
    assert [i for x in applied for i in x["ids"]] == ["a", "b", "c"]
    assert lines[-1]["quarantined_batches"] == 1 and lines[-1]["version"] == 2
    assert manifest(adir, "q")["versions"][-1]["events"] == 3


def test_the_guard_refuses_a_drifting_version_keeps_the_candidate_and_uses_registered_canaries(tiny, tmp_path):
    adir = tmp_path / "adapters"
    canaries = tmp_path / "canaries.txt"
    canaries.write_text("the lazy dog sleeps\n\nonline learning of adapters\n")
    events = [{"id": "a", "text": "the quick brown fox"}, {"id": "b", "text": "jumps over the lazy dog"}]
    # Any change drifts further than a bound this small: the batch's version is refused, not published.
    rc, lines, err = train(tiny, adir, "g", events, "--max-drift", "1e-9", "--canaries", canaries)
    assert rc == 0, err
    refused = [x for x in lines if x["event"] == "refused"]
    assert len(refused) == 1 and refused[0]["ids"] == ["a", "b"], lines
    guard = refused[0]["guard"]
    assert guard["drift"] > guard["max_drift"] == 1e-9 and guard["worst_canary"] >= guard["drift"]
    assert "publication guard refused" in refused[0]["reason"]
    assert (adir / "g" / "training" / "quarantine").exists() and os.path.getsize(guard["candidate"]) > 0
    done = lines[-1]
    assert done["version"] == 1 and done["rejected_versions"] == 1 and done["quarantined_batches"] == 1
    assert done["guard"]["last_drift"] == guard["drift"] and manifest(adir, "g")["current"] == 1
    assert not [x for x in lines if x["event"] == "applied"]
    # The registered canaries stay with the domain and are judged with the built-in ones.
    kept = json.loads((adir / "g" / "training" / "canary-targets.json").read_text())
    assert kept["prompts"][-2:] == ["the lazy dog sleeps", "online learning of adapters"]
    # Under a bound the update fits, the same events train (their ids were never applied).
    rc, lines, err = train(tiny, adir, "g", events, "--max-drift", "100")
    assert rc == 0, err
    applied = [x for x in lines if x["event"] == "applied"]
    assert [i for x in applied for i in x["ids"]] == ["a", "b"] and 0 < applied[0]["drift"] <= 100
    assert lines[-1]["version"] == 2 and lines[-1]["rejected_versions"] == 1


def test_teacher_answers_are_made_at_the_first_batch_and_a_damaged_store_refuses_the_start(tiny, tmp_path):
    adir = tmp_path / "adapters"
    targets = adir / "t" / "training" / "canary-targets.json"
    # A trainer with nothing to apply makes nothing: acknowledging events never waits for the teachers.
    rc, lines, err = train(tiny, adir, "t", [], "--max-drift", "100")
    assert rc == 0 and not targets.exists(), err
    rc, lines, err = train(tiny, adir, "t", [{"id": "a", "text": "the quick brown fox"}], "--max-drift", "100")
    applied = [x for x in lines if x["event"] == "applied"]
    assert rc == 0 and len(applied) == 1 and applied[0]["teacher_ms"] > 0 and targets.exists(), err
    # Made once: the next batch reads them back.
    rc, lines, err = train(tiny, adir, "t", [{"id": "b", "text": "jumps over"}], "--max-drift", "100")
    applied = [x for x in lines if x["event"] == "applied"]
    assert rc == 0 and len(applied) == 1 and "teacher_ms" not in applied[0], err
    # Made on the model as loaded: the same model in another form makes them again (a guard comparing int8
    # answers with float32 targets would count the rounding as the adapter's drift).
    assert json.loads(targets.read_text())["weights"] == "float32"
    rc, lines, err = train(tiny, adir, "t", [{"id": "b2", "text": "over the"}], "--max-drift", "100",
                           "--quantize", "int8")
    applied = [x for x in lines if x["event"] == "applied"]
    assert rc == 0 and len(applied) == 1 and applied[0]["teacher_ms"] > 0, err
    assert json.loads(targets.read_text())["weights"] == "int8"
    # Damaged, they are refused when the trainer starts, before any event is acknowledged.
    targets.write_text(targets.read_text()[:-40])
    rc, lines, err = train(tiny, adir, "t", [{"id": "c", "text": "the lazy dog"}], "--max-drift", "100")
    assert rc == 4 and "canary-targets.json" in err and "unreadable" in err, err
    assert not [x for x in lines if x["event"] == "durable"]


@pytest.mark.slow
def test_a_batch_the_process_dies_on_twice_is_quarantined_at_the_next_start(default_model_path, tmp_path):
    """The process is killed while applying a long example (the CPU limit stands in for the kernel's OOM
    killer), then again while replaying it; the third start sets the batch aside instead of looping."""
    adir = tmp_path / "adapters"
    model = default_model_path
    long_event = {"id": "huge", "text": "Plain text about rivers and mountains, repeated. " * 60}
    # Without distillation or a guard, so that the CPU limit falls on the batch's own steps rather than on
    # making the base model's answers to replay prompts (which is not the batch's fault and is not counted).
    recipe = ["--distill-weight", "0", "--max-drift", "0"]
    def limited():
        resource.setrlimit(resource.RLIMIT_CPU, (8, 8))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # First run: acknowledged, then killed while applying it.
    proc = start_trainer(model, adir, "oom", *recipe, preexec_fn=limited)
    proc.stdin.write(json.dumps(long_event) + "\n")
    proc.stdin.close()
    assert wait_for(proc, "durable")["ids"] == ["huge"]
    proc.wait(timeout=120)
    assert proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL), proc.stderr.read()
    # Second run: the replay of the logged batch is killed the same way.
    proc = start_trainer(model, adir, "oom", *recipe, preexec_fn=limited)
    proc.stdin.close()
    proc.wait(timeout=120)
    assert proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL), proc.stderr.read()
    # Third run: quarantined, and training goes on.
    r = subprocess.run([str(CLI), "train", "--domain", "oom", "--data", "-", "--model", str(model),
                        "--adapter-dir", str(adir), "--json", *recipe],
                       input=json.dumps({"id": "next", "text": "Hello there."}),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = json_lines(r.stdout)
    quarantined = [x for x in lines if x["event"] == "quarantined"]
    assert len(quarantined) == 1 and quarantined[0]["ids"] == ["huge"]
    assert "died 2 times" in quarantined[0]["reason"]
    assert [i for x in lines if x["event"] == "applied" for i in x["ids"]] == ["next"]
    assert lines[-1]["quarantined_batches"] == 1 and lines[-1]["events_applied"] == 1


# 2. Invalid UTF-8 is refused line by line, with the bytes escaped, and the run goes on.

def test_invalid_utf8_lines_are_rejected_with_escaped_bytes_and_later_lines_train(tiny, tmp_path):
    adir = tmp_path / "adapters"
    raw = (b'\xff\xfe garbage\n'
           b'{"id": "bad-text", "text": "caf\xe9 au lait"}\n'
           b'{"id": "good", "text": "the quick brown fox"}\n')
    rc, lines, err = train(tiny, adir, "utf", None, raw=raw)
    assert rc == 2, err
    rejected = [x for x in lines if x["event"] == "rejected"]
    assert [x["line"] for x in rejected] == [1, 2]
    assert "\\xff" in rejected[0]["error"] and "\\xe9" in rejected[1]["error"]
    assert [i for x in lines if x["event"] == "applied" for i in x["ids"]] == ["good"]


# 3. `adapters create` never deletes a folder it did not write.

def test_create_refuses_a_folder_that_is_not_an_adapter_and_leaves_it_untouched(tiny, tmp_path):
    adir = tmp_path / "adapters"
    (adir / "notes").mkdir(parents=True)
    (adir / "notes" / "mine.txt").write_text("a user's file")
    r = run_cli("adapters", "create", "notes", "--model", tiny, "--adapter-dir", adir)
    assert r.returncode == 9 and "holds no adapter manifest" in r.stderr and "nothing in it was changed" in r.stderr
    assert (adir / "notes" / "mine.txt").read_text() == "a user's file"
    assert sorted(p.name for p in (adir / "notes").iterdir()) == ["mine.txt"]


# 4. Every writer respects the domain lock.

def test_rm_and_rollback_are_busy_while_the_domain_trains_and_work_after(tiny, tmp_path):
    adir = tmp_path / "adapters"
    proc = start_trainer(tiny, adir, "live", "--batch-events", 1)
    proc.stdin.write(json.dumps({"id": "e1", "text": "the quick brown fox"}) + "\n")
    proc.stdin.flush()
    assert wait_for(proc, "applied")["version"] == 2
    try:
        r = run_cli("adapters", "rm", "live", "--adapter-dir", adir)
        assert r.returncode == 8 and "being trained" in r.stderr and "retry" in r.stderr, r.stderr
        r = run_cli("adapters", "rollback", "live", "1", "--adapter-dir", adir)
        assert r.returncode == 8 and "being trained" in r.stderr, r.stderr
        assert manifest(adir, "live")["current"] == 2
        # The trainer still works and its acknowledged events are all there.
        proc.stdin.write(json.dumps({"id": "e2", "text": "online learning"}) + "\n")
        proc.stdin.flush()
        assert wait_for(proc, "applied")["version"] == 3
    finally:
        out, err = finish(proc)
    assert proc.returncode == 0, err
    assert json_lines(out)[-1]["events_applied"] == 2
    cli_ok("adapters", "rm", "live", "--adapter-dir", adir)
    assert not (adir / "live").exists()


def test_rollback_while_no_trainer_runs_restarts_training_from_the_rolled_back_version(tiny, tmp_path):
    adir = tmp_path / "adapters"
    rc, lines, err = train(tiny, adir, "rb", [{"id": f"e{i}", "text": "the quick brown fox"} for i in range(3)],
                           "--batch-events", 1)
    assert rc == 0 and lines[-1]["version"] == 4, err
    cli_ok("adapters", "rollback", "rb", "2", "--adapter-dir", adir)
    assert (adir / "rb" / "training.rolled-back-1").is_dir()  # kept, not deleted
    rc, lines, err = train(tiny, adir, "rb", [{"id": "after", "text": "online learning"}])
    assert rc == 0, err
    m = manifest(adir, "rb")
    assert m["current"] == 5 and m["versions"][-1]["parent"] == 2
    assert lines[-1]["batches"] == 1  # a fresh trainer state, not the one that produced version 4


# 5. One damaged manifest does not hide the healthy adapters.

def test_list_shows_healthy_adapters_and_marks_a_damaged_one(tiny, tmp_path):
    adir = tmp_path / "adapters"
    for name in ("alpha", "beta", "gamma"):
        cli_ok("adapters", "create", name, "--model", tiny, "--adapter-dir", adir)
    (adir / "beta" / "manifest.json").write_text("{ not json")
    r = cli_ok("adapters", "list", "--json", "--adapter-dir", adir)
    listed = {a["name"]: a for a in json.loads(r.stdout)}
    assert set(listed) == {"alpha", "beta", "gamma"}
    assert listed["alpha"]["version"] == 1 and listed["gamma"]["version"] == 1
    assert "manifest" in listed["beta"]["error"]
    r = cli_ok("adapters", "list", "--adapter-dir", adir)
    assert "alpha  v1" in r.stdout and "beta  damaged:" in r.stdout and "gamma  v1" in r.stdout


# 6. Paths that are not regular files are refused at once.

def test_a_named_pipe_as_model_or_version_file_is_refused_without_hanging(tiny, tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    r = run_cli("info", "--model", fifo, timeout=20)
    assert r.returncode == 2 and "not a regular file" in r.stderr, r.stderr
    adir = tmp_path / "adapters"
    cli_ok("adapters", "create", "piped", "--model", tiny, "--adapter-dir", adir)
    version = adir / "piped" / "v00000001.hsl"
    version.unlink()
    os.mkfifo(version)
    r = run_cli("generate", "--model", tiny, "--adapter", "piped", "--adapter-dir", adir, "-p", "the",
                "--max-tokens", "1", timeout=20)
    assert r.returncode == 4 and "not a regular file" in r.stderr, r.stderr


# 7. Non-finite logits are never served.

def peft_export(tiny, adir, tmp_path, b_value):
    """A dense PEFT adapter for the tiny model whose B matrices all hold b_value."""
    from safetensors.numpy import load_file, save_file
    cli_ok("adapters", "create", "src", "--model", tiny, "--adapter-dir", adir, "--sparsity", "0")
    peft = tmp_path / "peft"
    cli_ok("adapters", "export", "src", peft, "--adapter-dir", adir)
    tensors = load_file(peft / "adapter_model.safetensors")
    for k in tensors:
        if "lora_B" in k:
            tensors[k][:] = b_value
    save_file(tensors, peft / "adapter_model.safetensors")
    return peft, tensors


def test_non_finite_logits_stop_generation_with_a_clear_error(tiny, tmp_path):
    adir = tmp_path / "adapters"
    peft, _ = peft_export(tiny, adir, tmp_path, 1e4)  # the largest magnitude import accepts
    cli_ok("adapters", "import", "big", peft, "--model", tiny, "--adapter-dir", adir)
    r = run_cli("generate", "--model", tiny, "--adapter", "big", "--adapter-dir", adir, "--adapter-scale", "1e36",
                "-p", "the fox", "--max-tokens", "4", "--json")
    assert r.returncode == 4, (r.returncode, r.stdout, r.stderr)
    assert "non-finite logits" in r.stderr and "adapter 'big' version 1" in r.stderr
    assert '"logprob":null' not in r.stdout and not json_lines(r.stdout)


def test_import_refuses_adapter_values_beyond_the_bound(tiny, tmp_path):
    adir = tmp_path / "adapters"
    peft, _ = peft_export(tiny, adir, tmp_path, 3e38)
    r = run_cli("adapters", "import", "huge", peft, "--model", tiny, "--adapter-dir", adir)
    assert r.returncode == 5 and "magnitude" in r.stderr, r.stderr
    assert not (adir / "huge").exists()


# 8 is covered by test_learning.py's crash test (exact counters after replay).

# A trainer failure keeps its kind across the thread.

def test_a_trainer_stopped_by_a_damaged_manifest_exits_with_the_corrupt_file_code(tiny, tmp_path):
    adir = tmp_path / "adapters"
    proc = start_trainer(tiny, adir, "dmg", "--batch-events", 1)
    proc.stdin.write(json.dumps({"id": "e1", "text": "the quick brown fox"}) + "\n")
    proc.stdin.flush()
    wait_for(proc, "applied")
    # The version is announced before its files are written: damage the manifest once it names the version.
    manifest = adir / "dmg" / "manifest.json"
    deadline = time.monotonic() + 60
    while json.loads(manifest.read_text())["current"] < 2:
        assert time.monotonic() < deadline, manifest.read_text()
        time.sleep(0.01)
    manifest.write_text("{ damaged")
    proc.stdin.write(json.dumps({"id": "e2", "text": "online learning"}) + "\n")
    out, err = finish(proc)
    assert proc.returncode == 4, (proc.returncode, err)
    assert "manifest" in err and "stopped" in err


# The smaller ones, one row each: (what, command builder, expected exit code, text in the output).

def small_cases(tiny, adir, tmp_path):
    def grad(row):
        return {"id": "g", "type": "gradient", "base_version": 1,
                "gradients": [{"layer": 0, "module": "q_proj", "matrix": "A", "entries": [[row, 0, 0.5]]}]}

    def train_lines(lines):
        data = tmp_path / f"small-{time.monotonic_ns()}.jsonl"
        data.write_text("\n".join(lines) + "\n")
        return ["train", "--domain", "small", "--data", data, "--model", tiny, "--adapter-dir", adir, "--json"]

    return [
        ("rollback to version -1", ["adapters", "rollback", "small", "-1", "--adapter-dir", adir], 2, None),
        ("a row index of 2^63", train_lines([json.dumps(grad(2 ** 63))]), 2, "9223372036854775808"),
        ("--stop-token-id beyond the vocabulary",
         ["generate", "--model", tiny, "-p", "the", "--stop-token-id", "99999"], 2, "stop token id 99999"),
        ("duplicate keys in an event", train_lines(['{"id": "d", "text": "the fox", "text": "the dog"}']), 2,
         'key \\"text\\" twice'),
        ("a version file replaced by a folder", ["generate", "--model", tiny, "--adapter", "folder",
                                                 "--adapter-dir", adir, "-p", "the"], 4, "is a folder"),
    ]


def test_smaller_defects(tiny, tmp_path):
    adir = tmp_path / "adapters"
    cli_ok("adapters", "create", "small", "--model", tiny, "--adapter-dir", adir)
    cli_ok("adapters", "create", "folder", "--model", tiny, "--adapter-dir", adir)
    (adir / "folder" / "v00000001.hsl").unlink()
    (adir / "folder" / "v00000001.hsl").mkdir()
    for what, args, code, needle in small_cases(tiny, adir, tmp_path):
        r = run_cli(*args)
        assert r.returncode == code, (what, r.returncode, r.stdout, r.stderr)
        if needle:
            assert needle in r.stdout + r.stderr, (what, r.stdout, r.stderr)
        assert "-9223372036854775808" not in r.stdout + r.stderr and "18446744073709551615" not in r.stderr, what


def test_duplicates_get_their_own_line_in_train_json(tiny, tmp_path):
    adir = tmp_path / "adapters"
    rc, lines, err = train(tiny, adir, "dup", [{"id": "x", "text": "the fox"}, {"id": "x", "text": "the fox"}])
    assert rc == 0, err
    assert [(x["line"], x["id"]) for x in lines if x["event"] == "duplicate"] == [(2, "x")]


def test_chat_refuses_an_invalid_utf8_turn_and_answers_the_next(default_model_path):
    r = subprocess.run([str(CLI), "chat", "--model", str(default_model_path), "--temperature", "0", "--max-tokens", "3"],
                       input=b"\xff\xfe bad\nthe quick brown fox\n", capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert b"not valid UTF-8" in r.stderr
    assert r.stdout.strip(), "the valid turn after the refused one was answered"


def test_canaries_given_as_a_fifo_or_invalid_utf8_are_refused_without_hanging(tiny, tmp_path):
    adir = tmp_path / "adapters"
    fifo = tmp_path / "canaries.fifo"
    os.mkfifo(fifo)
    rc, _, err = train(tiny, adir, "c", [{"id": "a", "text": "the fox"}], "--canaries", fifo)
    assert rc == 2 and "not a regular file" in err, err
    bad = tmp_path / "canaries.txt"
    bad.write_bytes(b"a fine prompt\n\xff\xfe broken\n")
    rc, _, err = train(tiny, adir, "c", [{"id": "a", "text": "the fox"}], "--canaries", bad)
    assert rc == 2 and "not valid UTF-8" in err, err
