"""Bad input gets a clear message and a non-zero exit, never a crash: files, formats, prompts."""
import json
import shutil

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter

from conftest import run_cli
from tiny_models import build_tiny_model


def assert_refused(result, code, *needles):
    assert result.returncode == code, (result.returncode, result.stderr)
    assert result.stderr.startswith("error: ")
    assert "internal error" not in result.stderr
    for n in needles:
        assert n in result.stderr, result.stderr


def tiny_llama_gguf(path, arch="llama", bad_type=False):
    """A complete two-layer GGUF, optionally with one tensor in a type we do not support (IQ2_XXS)."""
    rng = np.random.default_rng(0)
    h, ff, vocab = 256, 512, 64
    w = GGUFWriter(str(path), arch=arch)
    w.add_context_length(128)
    w.add_embedding_length(h)
    w.add_block_count(1)
    w.add_feed_forward_length(ff)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-6)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    w.add_tensor("token_embd.weight", f32(vocab, h))
    w.add_tensor("output_norm.weight", f32(h))
    for name, shape in [("attn_norm", (h,)), ("attn_q", (h, h)), ("attn_k", (h, h)), ("attn_v", (h, h)),
                        ("attn_output", (h, h)), ("ffn_norm", (h,)), ("ffn_gate", (ff, h)), ("ffn_up", (ff, h))]:
        w.add_tensor(f"blk.0.{name}.weight", f32(*shape))
    if bad_type:
        raw = rng.integers(0, 256, size=(h, ff // 256 * 66), dtype=np.uint8)
        w.add_tensor("blk.0.ffn_down.weight", raw, raw_dtype=GGMLQuantizationType.IQ2_XXS)
    else:
        w.add_tensor("blk.0.ffn_down.weight", f32(h, ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_tiny_gguf_loads(tmp_path):
    r = run_cli("info", "--model", tiny_llama_gguf(tmp_path / "ok.gguf"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["layers"] == 1


def test_missing_model_file(tmp_path):
    assert_refused(run_cli("info", "--model", tmp_path / "nope.gguf"), 3, "does not exist")


def test_truncated_gguf(default_model_path, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(default_model_path.read_bytes()[: 40 * 1024 * 1024])
    assert_refused(run_cli("info", "--model", cut), 4, "truncated")
    head_only = tmp_path / "head.gguf"
    head_only.write_bytes(default_model_path.read_bytes()[:100_000])
    assert_refused(run_cli("info", "--model", head_only), 4, "truncated")


def test_corrupt_gguf_header(default_model_path, tmp_path):
    data = bytearray(default_model_path.read_bytes()[:1_000_000])
    bad_magic = tmp_path / "magic.gguf"
    bad_magic.write_bytes(b"GGUX" + data[4:])
    assert_refused(run_cli("info", "--model", bad_magic), 4, "bad magic")
    bad_count = tmp_path / "count.gguf"
    data[16:24] = (2**62).to_bytes(8, "little")  # metadata entry count
    bad_count.write_bytes(bytes(data))
    assert_refused(run_cli("info", "--model", bad_count), 4)
    bad_version = tmp_path / "version.gguf"
    bad_version.write_bytes(b"GGUF" + (9).to_bytes(4, "little") + bytes(data[8:]))
    assert_refused(run_cli("info", "--model", bad_version), 5, "version 9")


def test_unsupported_tensor_type(tmp_path):
    assert_refused(run_cli("info", "--model", tiny_llama_gguf(tmp_path / "iq2.gguf", bad_type=True)), 5, "IQ2_XXS")


def test_unsupported_gguf_architecture(tmp_path):
    assert_refused(run_cli("info", "--model", tiny_llama_gguf(tmp_path / "mamba.gguf", arch="mamba")), 5,
                   "architecture 'mamba'")


def test_unsupported_hf_architecture_and_missing_files(tmp_path):
    folder = tmp_path / "model"
    build_tiny_model("llama_gqa", folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "gpt_neox"
    (folder / "config.json").write_text(json.dumps(config))
    assert_refused(run_cli("info", "--model", folder), 5, "model_type 'gpt_neox'")
    (folder / "config.json").unlink()
    assert_refused(run_cli("info", "--model", folder), 3, "config.json")


def test_truncated_safetensors(tmp_path):
    folder = tmp_path / "model"
    build_tiny_model("qwen3_tied_gqa", folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    assert_refused(run_cli("info", "--model", folder), 4, "truncated")
    weights.write_bytes(b"\x10\x00")
    assert_refused(run_cli("info", "--model", folder), 4)


def test_prompt_longer_than_context():
    r = run_cli("generate", "--model", "default", "--prompt", "word " * 9000, "--max-tokens", "4")
    assert_refused(r, 6, "context")


def test_chat_refuses_model_without_tokenizer(tmp_path):
    folder = tmp_path / "model"
    build_tiny_model("llama_gqa", folder)
    assert_refused(run_cli("chat", "--model", folder, input_text="hi\n"), 3, "ships no tokenizer")


def test_chat_refuses_a_template_it_cannot_honour(tmp_path, qwen_tok_dir):
    folder = tmp_path / "model"
    build_tiny_model("llama_gqa", folder)
    shutil.copy(qwen_tok_dir / "tokenizer.json", folder)
    config = json.loads((qwen_tok_dir / "tokenizer_config.json").read_text())
    # wordwrap is a jinja2 filter our interpreter does not have: the template is refused when it loads, naming it.
    config["chat_template"] = "{% for m in messages %}[INST] {{ m['content'] | wordwrap }} [/INST]{% endfor %}"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert_refused(run_cli("chat", "--model", folder, input_text="hi\n"), 5, "unknown filter 'wordwrap'")
