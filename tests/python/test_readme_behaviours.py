"""README behaviours that had no test, through the real CLI: the learning pipeline's --batch-ms window,
--fsync policy and full --queue; exit codes 7 (i/o), 8 (busy) and 1 (internal) provoked the way a user
would meet them; chat's --system, --no-think and history against transformers' chat template and
generate(); adapter codecs, export --version and show --json; GGUF version 2."""
import json
import os
import queue
import resource
import shutil
import signal
import subprocess
import threading
import time
import zlib

import numpy as np
import pytest
import torch
from gguf import GGUFWriter
from safetensors.numpy import load_file
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

from conftest import BUILD, CLI, cli_ok, run_cli, run_probe
from tiny_models import add_tiny_tokenizer, build_tiny_model

SYNC_COUNTER = BUILD / "tests" / "libhyprstream-sync-counter.so"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama_readme")
    build_tiny_model("llama_gqa", folder)
    add_tiny_tokenizer(folder)
    return folder


def text_events(n, prefix="e"):
    words = ["the quick brown fox", "online learning of sparse adapters", "every event is applied exactly once"]
    return [{"id": f"{prefix}{i}", "text": words[i % len(words)]} for i in range(n)]


def train_file(model, adir, domain, events, *flags, env=None):
    """`train --json` on a file of events; returns (returncode, JSON lines, stderr)."""
    data = adir.parent / f"{domain}-{time.monotonic_ns()}.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in events))
    r = subprocess.run([str(CLI), "train", "--domain", domain, "--data", str(data), "--model", str(model),
                        "--adapter-dir", str(adir), "--json", *map(str, flags)], capture_output=True, text=True,
                       timeout=300, env=env)
    return r.returncode, [json.loads(line) for line in r.stdout.splitlines()], r.stderr


class LiveTrainer:
    """`train --data - --json`, fed events as a client would and read as its lines arrive."""

    def __init__(self, model, adir, domain, *flags):
        self.proc = subprocess.Popen([str(CLI), "train", "--domain", domain, "--data", "-", "--model", str(model),
                                      "--adapter-dir", str(adir), "--json", *map(str, flags)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:  # a failed test: do not leave a trainer waiting for input
            self.proc.kill()
            self.proc.wait(timeout=60)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def send(self, events):
        self.proc.stdin.write("".join(json.dumps(e) + "\n" for e in events))
        self.proc.stdin.flush()

    def next(self, kind, timeout=60):
        """The next line of this kind; raises queue.Empty when none comes within timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert msg is not None, f"the trainer ended before a '{kind}' line: {self.proc.stderr.read()}"
            if msg["event"] == kind:
                return msg

    def finish(self):
        """Closes the input; returns the remaining lines once the trainer exits."""
        self.proc.stdin.close()
        assert self.proc.wait(timeout=120) == 0, self.proc.stderr.read()
        rest = []
        while (msg := self.lines.get(timeout=10)) is not None:
            rest.append(msg)
        return rest


# --- the learning pipeline -------------------------------------------------------------------------------------------


def test_batch_ms_closes_a_batch_that_long_after_its_first_event(tiny, tmp_path):
    """Events that arrive together share a batch, which closes --batch-ms after the first while the input stays
    open; with a window longer than the gap, events 0.8 s apart still share one batch."""
    first, second = text_events(2, "a"), text_events(2, "b")
    with LiveTrainer(tiny, tmp_path / "short", "win", "--batch-ms", 300) as short:
        short.send(first)
        assert short.next("applied")["ids"] == ["a0", "a1"]  # closed by the window: the input is still open
        short.send(second)
        rest = short.finish()
    assert [m["ids"] for m in rest if m["event"] == "applied"] == [["b0", "b1"]]

    with LiveTrainer(tiny, tmp_path / "long", "win", "--batch-ms", 60000) as long:
        long.send(first)
        with pytest.raises(queue.Empty):
            long.next("durable", timeout=0.8)  # the window is still open: nothing is logged yet
        long.send(second)
        rest = long.finish()  # the end of the input closes the batch
    assert [m["ids"] for m in rest if m["event"] == "applied"] == [["a0", "a1", "b0", "b1"]]


def sync_counts(model, adir, policy, tmp_path):
    counts = tmp_path / f"syncs-{policy}.json"
    env = dict(os.environ, LD_PRELOAD=str(SYNC_COUNTER), HS_SYNC_COUNTS=str(counts))
    rc, lines, err = train_file(model, adir, "sync", text_events(6), "--batch-events", 2, "--deterministic",
                                "--fsync", policy, env=env)
    assert rc == 0, err
    return json.loads(counts.read_text()), lines


def test_fsync_always_syncs_the_log_once_per_batch_and_never_leaves_it_to_the_os(tiny, tmp_path):
    assert SYNC_COUNTER.exists(), f"{SYNC_COUNTER} is built with the tests"
    always, lines_always = sync_counts(tiny, tmp_path / "always", "always", tmp_path)
    never, lines_never = sync_counts(tiny, tmp_path / "never", "never", tmp_path)
    for lines in (lines_always, lines_never):
        assert [m["ids"] for m in lines if m["event"] == "durable"] == [["e0", "e1"], ["e2", "e3"], ["e4", "e5"]]
        assert lines[-1]["events_applied"] == 6
    print(f"--fsync always: {always}; --fsync never: {never}")
    assert always["fdatasync"] == 3  # one group commit per batch; adapter files use fsync
    assert never["fdatasync"] == 0
    assert never["fsync"] > 0  # adapter versions and checkpoints are still written atomically
    # The policy changes durability, not what is learned.
    a, b = (tmp_path / p / "sync" / "v00000004.hsl" for p in ("always", "never"))
    assert a.read_bytes() == b.read_bytes()


def test_a_full_queue_makes_train_wait_and_retry_never_drop(tiny, tmp_path):
    events = text_events(8)
    rc, lines, err = train_file(tiny, tmp_path / "adapters", "q", events, "--queue", 1, "--batch-events", 1)
    assert rc == 0, err
    done = lines[-1]
    assert done["busy"] > 0, "a queue of one should have been full at times"
    assert done["accepted"] == done["events_applied"] == 8
    applied = [i for m in lines if m["event"] == "applied" for i in m["ids"]]
    assert sorted(applied) == sorted(e["id"] for e in events)


# --- exit codes ------------------------------------------------------------------------------------------------------


def file_size_limit(limit):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing
    return apply


def test_exit_code_7_when_the_os_refuses_a_write(tiny, tmp_path):
    adir = tmp_path / "adapters"
    cli_ok("adapters", "create", "x", "--model", tiny, "--adapter-dir", adir)
    out = tmp_path / "export"
    cmd = [str(CLI), "adapters", "export", "x", str(out), "--adapter-dir", str(adir)]
    r = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=file_size_limit(4096))
    assert r.returncode == 7, r.stderr
    assert r.stderr.startswith("error: ") and "File too large" in r.stderr
    assert not (out / "adapter_model.safetensors").exists(), "a failed export must not leave a truncated file"
    # A create that cannot write its first version leaves nothing that would block the name.
    cmd = [str(CLI), "adapters", "create", "y", "--model", str(tiny), "--adapter-dir", str(adir), "--sparsity", "0"]
    r = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=file_size_limit(4096))
    assert r.returncode == 7, r.stderr
    assert not (adir / "y").exists()


def test_exit_code_8_when_another_trainer_holds_the_domain(tiny, tmp_path):
    adir = tmp_path / "adapters"
    with LiveTrainer(tiny, adir, "held") as live:
        live.send(text_events(1))
        live.next("applied")
        rc, lines, err = train_file(tiny, adir, "held", text_events(1, "other"))
        assert rc == 8, err
        assert "busy, retry" in err and not lines
        assert live.finish()[-1]["events_applied"] == 1  # the holder was not disturbed


def test_exit_code_1_when_the_model_cannot_be_mapped(tmp_path):
    """An internal failure a user can meet: a 256 GiB model under a 16 GiB address-space limit cannot be
    memory-mapped (the file is sparse: it costs no disk)."""
    big = tmp_path / "big.gguf"
    with open(big, "wb") as f:
        f.write(b"GGUF")
        f.truncate(256 << 30)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))

    r = subprocess.run([str(CLI), "info", "--model", str(big)], capture_output=True, text=True, preexec_fn=limit,
                       timeout=60)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("error: ") and "mmap" in r.stderr and "Cannot allocate memory" in r.stderr


# --- chat ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen_chat(tmp_path_factory, qwen_tok_dir):
    """A tiny random Qwen3 with the real Qwen3 vocabulary, tokenizer and chat template."""
    folder = tmp_path_factory.mktemp("qwen3_chat")
    config = Qwen3Config(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, tie_word_embeddings=True,
                         max_position_embeddings=1024, rms_norm_eps=1e-6, initializer_range=0.2,
                         bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(qwen_tok_dir / name, folder)
    return folder, model, AutoTokenizer.from_pretrained(folder)


@torch.no_grad()
def hf_reply(model, tok, messages, enable_thinking, max_tokens):
    """transformers' answer: its rendering of the template, its tokens, greedy generate(), its decoding."""
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=enable_thinking,
                                  tokenize=True, return_dict=False)
    eos = [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         do_sample=False, max_new_tokens=max_tokens, eos_token_id=eos, pad_token_id=eos[0])
    new = [t for t in out[0, len(ids):].tolist() if t not in eos]
    return tok.decode(new, skip_special_tokens=False)


@pytest.mark.parametrize("no_think", [False, True])
def test_chat_system_prompt_history_and_thinking_follow_transformers(qwen_chat, no_think):
    folder, model, tok = qwen_chat
    system, turns, n = "You answer in riddles.", ["What is a tide?", "And the moon?"], 10
    flags = ["--system", system, "--temperature", "0", "--max-tokens", n] + (["--no-think"] if no_think else [])
    r = run_cli("chat", "--model", folder, *flags, input_text="".join(t + "\n" for t in turns))
    assert r.returncode == 0, r.stderr
    messages, expected = [{"role": "system", "content": system}], ""
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        reply = hf_reply(model, tok, messages, not no_think, n)
        messages.append({"role": "assistant", "content": reply})
        expected += reply + "\n"
    print(f"chat{' --no-think' if no_think else ''}: {expected!r}")
    assert r.stdout == expected
    # Each part of the prompt shows in the answer: without the system prompt, without the history, or with
    # the other thinking mode, transformers answers differently.
    first, second = messages[2]["content"], messages[4]["content"]
    assert hf_reply(model, tok, messages[1:2], not no_think, n) != first
    assert hf_reply(model, tok, [messages[0], messages[3]], not no_think, n) != second
    if no_think:
        assert hf_reply(model, tok, messages[:2], True, n) != first


# --- adapters --------------------------------------------------------------------------------------------------------


def header_codec(path):
    return int.from_bytes(path.read_bytes()[12:16], "little")  # 0 none, 1 zip, 2 blosc


def documented_crc(path):
    data = bytearray(path.read_bytes())
    data[64:68] = b"\0\0\0\0"  # the CRC field is read as zero
    return zlib.crc32(bytes(data))


def test_codecs_export_version_and_show_json(tiny, tmp_path):
    """--codec none, zip and blosc store the same adapter (their exports are identical), and a trained zip
    adapter keeps its codec; export --version gives a kept version as it was; show --json is the manifest,
    whose sizes are the files' and whose CRCs are those of the uncompressed images."""
    adir = tmp_path / "adapters"
    exports = {}
    for code, codec in enumerate(("none", "zip", "blosc")):
        cli_ok("adapters", "create", codec, "--model", tiny, "--adapter-dir", adir, "--codec", codec, "--seed", 4,
               "--sparsity", "0.9")
        assert header_codec(adir / codec / "v00000001.hsl") == code
        cli_ok("adapters", "export", codec, tmp_path / codec, "--adapter-dir", adir)
        exports[codec] = (tmp_path / codec / "adapter_model.safetensors").read_bytes()
    assert exports["zip"] == exports["none"] == exports["blosc"]
    sizes = {c: (adir / c / "v00000001.hsl").stat().st_size for c in exports}
    assert sizes["zip"] < sizes["none"] and sizes["blosc"] < sizes["none"], sizes

    rc, _, err = train_file(tiny, adir, "zip", text_events(2), "--batch-events", 1, "--deterministic")
    assert rc == 0, err
    assert header_codec(adir / "zip" / "v00000003.hsl") == 1  # versions the trainer publishes stay zip
    cli_ok("adapters", "export", "zip", tmp_path / "v1", "--adapter-dir", adir, "--version", 1)
    cli_ok("adapters", "export", "zip", tmp_path / "v3", "--adapter-dir", adir)
    v1, v3 = ((tmp_path / v / "adapter_model.safetensors") for v in ("v1", "v3"))
    assert v1.read_bytes() == exports["zip"]  # version 1, as it was exported when it was current
    assert not any(w.any() for k, w in load_file(str(v1)).items() if ".lora_B." in k)  # LoRA starts at B = 0
    assert any(w.any() for k, w in load_file(str(v3)).items() if ".lora_B." in k)

    shown = json.loads(cli_ok("adapters", "show", "zip", "--json", "--adapter-dir", adir).stdout)
    assert shown == json.loads((adir / "zip" / "manifest.json").read_text())
    assert shown["current"] == 3
    versions = {v["version"]: v for v in shown["versions"]}
    assert sorted(versions) == [1, 2, 3]
    assert [versions[v]["parent"] for v in (2, 3)] == [1, 2]
    assert [versions[v]["events"] for v in (1, 2, 3)] == [0, 1, 2]
    for number, v in versions.items():
        path = adir / "zip" / f"v{number:08d}.hsl"
        assert v["bytes"] == path.stat().st_size
        assert int.from_bytes(path.read_bytes()[64:68], "little") == documented_crc(path)
    # The manifest's CRC is the uncompressed image's: the codec-none file of the same adapter.
    assert versions[1]["crc32"] == documented_crc(adir / "none" / "v00000001.hsl")


# --- GGUF version 2 --------------------------------------------------------------------------------------------------


def tiny_gguf(path):
    rng = np.random.default_rng(1)
    h, ff, vocab = 64, 128, 96
    w = GGUFWriter(str(path), arch="llama")
    for add, value in ((w.add_context_length, 128), (w.add_embedding_length, h), (w.add_block_count, 1),
                       (w.add_feed_forward_length, ff), (w.add_head_count, 4), (w.add_head_count_kv, 2),
                       (w.add_layer_norm_rms_eps, 1e-6)):
        add(value)
    f32 = lambda *shape: (0.2 * rng.standard_normal(shape)).astype(np.float32)
    w.add_tensor("token_embd.weight", f32(vocab, h))
    w.add_tensor("output_norm.weight", 1 + f32(h))
    for name, shape in [("attn_norm", (h,)), ("attn_q", (h, h)), ("attn_k", (h // 2, h)), ("attn_v", (h // 2, h)),
                        ("attn_output", (h, h)), ("ffn_norm", (h,)), ("ffn_gate", (ff, h)), ("ffn_up", (ff, h)),
                        ("ffn_down", (h, ff))]:
        w.add_tensor(f"blk.0.{name}.weight", f32(*shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def with_version(src, dst, version):
    data = bytearray(src.read_bytes())
    assert data[:4] == b"GGUF" and int.from_bytes(data[4:8], "little") == 3
    data[4:8] = version.to_bytes(4, "little")  # v2 and v3 share the little-endian layout
    dst.write_bytes(bytes(data))


def test_gguf_version_2_loads_like_version_3(tmp_path):
    v3, v2, v1 = tmp_path / "v3.gguf", tmp_path / "v2.gguf", tmp_path / "v1.gguf"
    tiny_gguf(v3)
    with_version(v3, v2, 2)
    with_version(v3, v1, 1)
    logits = {}
    for path in (v3, v2):
        out = tmp_path / f"{path.stem}.safetensors"
        run_probe({"mode": "logits", "model": str(path), "prompts": [[1, 5, 9, 40, 77, 3]], "out": str(out)},
                  tmp_path)
        logits[path.stem] = load_file(str(out))["logits.0"]
    assert np.array_equal(logits["v2"], logits["v3"])
    assert logits["v2"].std() > 0.01
    r = run_cli("info", "--model", v1)
    assert r.returncode == 5 and "version 1" in r.stderr, r.stderr
