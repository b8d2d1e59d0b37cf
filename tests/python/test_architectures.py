"""Qwen2 biases, llama3 / linear / YaRN rope scaling and Mistral's sliding window against transformers, at
positions past the original context (32) and past the window (12): fp32 logits, greedy generations through the
scheduler's chunked prefill and batched decode, LoRAs against PEFT, and adapter gradients against PEFT's."""
import copy
import json

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.numpy import load_file

from conftest import probe_logits, run_cli, run_probe
from server import Server
from test_gradients import adapter_and_peft_export, peft_gradients
from tiny_models import (MODEL_CLASSES, ORIGINAL_CONTEXT, TINY_CONFIGS, VOCAB, add_tiny_tokenizer, build_tiny_model,
                         hf_greedy, hf_logits, prompt_of)

TOL = 1e-4
ARCHITECTURES = ["qwen2_bias", "llama_llama3", "llama_linear", "qwen3_yarn", "llama_yarn_explicit", "mistral_window"]
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module", params=ARCHITECTURES)
def arch(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, folder, build_tiny_model(request.param, folder)


def without_feature(name, model):
    """The same weights with plain RoPE and full causal attention: what the feature under test changes."""
    cls, _ = TINY_CONFIGS[name]
    config = copy.deepcopy(model.config)
    config.rope_parameters = {"rope_type": "default", "rope_theta": config.rope_parameters["rope_theta"]}
    if hasattr(config, "sliding_window"):
        config.sliding_window = None
    plain = MODEL_CLASSES[cls](config).eval()
    plain.load_state_dict(model.state_dict())
    return plain


def test_long_prompt_logits_match_transformers(arch, tmp_path):
    name, folder, model = arch
    prompt = prompt_of(96, 40)
    ours = probe_logits(folder, [prompt], tmp_path)[0]
    ref = hf_logits(model, prompt)
    assert ours.shape == ref.shape == (96, VOCAB)
    diff = np.abs(ours - ref).max()
    print(f"{name}: max |logit diff| over 96 positions = {diff:.2e}")
    assert diff <= TOL
    if name != "qwen2_bias":  # the scaling or the window matters at these positions
        assert np.abs(hf_logits(without_feature(name, model), prompt) - ref)[ORIGINAL_CONTEXT:].max() > 1e-2


def test_chunked_prefill_and_decode_past_the_context_match_transformers(arch, tmp_path):
    """Ragged prompts prefilled in chunks of 16 (chunks that start mid-sequence, longer than the window), then
    teacher-forced decode steps of all rows at once (forward's batch path); and the same prompts generated
    greedily through the scheduler (forward_slots: chunk rows and batched single-token rows)."""
    name, folder, model = arch
    prompts = [prompt_of(n, 50 + n) for n in (70, 13, 41, 96)]
    expected = [hf_greedy(model, p, 24) for p in prompts]
    rows = probe_logits(folder, prompts, tmp_path, continuations=expected, chunk=16)
    worst = max(float(np.abs(ours - hf_logits(model, p + c)).max()) for p, c, ours in zip(prompts, expected, rows))
    print(f"{name}: chunked and batched max |logit diff| = {worst:.2e}")
    assert worst <= TOL
    got = run_probe({"mode": "generate", "model": str(folder), "prompts": prompts, "max_tokens": 24, "chunk": 16},
                    tmp_path)["results"]
    assert [r["ids"] for r in got] == expected


def test_peft_lora_on_every_projection_matches_peft(arch, tmp_path):
    name, folder, model = arch
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=MODULES, lora_dropout=0.0, init_lora_weights=False)
    torch.manual_seed(3)
    peft_model = get_peft_model(copy.deepcopy(model), cfg).eval()
    peft_dir, adir = tmp_path / "peft", tmp_path / "adapters"
    peft_model.save_pretrained(peft_dir)
    r = run_cli("adapters", "import", "imported", peft_dir, "--model", folder, "--adapter-dir", adir)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["density"] == 1.0
    ids = prompt_of(64, 41)
    ours = probe_logits(folder, [ids], tmp_path, adapter_dir=str(adir), adapters=["imported"])[0]
    theirs = hf_logits(peft_model, ids)
    assert np.abs(theirs - hf_logits(model, ids)).max() > 0.05, "the adapter should change the logits"
    assert np.abs(ours - theirs).max() < TOL


def long_examples():
    """Prompt/completion pairs reaching past the original context and the window."""
    return [{"tokens": prompt_of(p + c, 600 + i), "targets": [0] * p + [1] * c}
            for i, (p, c) in enumerate([(30, 14), (9, 31), (45, 4)])]


def test_adapter_gradients_match_peft(arch, tmp_path):
    name, folder, model = arch
    adir, peft_dir = adapter_and_peft_export(folder, tmp_path, "g", seed=21, b_std=0.3, sparsity=0.0)
    batch = long_examples()
    out = tmp_path / "grads.safetensors"
    ours = run_probe({"mode": "lora_grad", "model": str(folder), "adapter_dir": str(adir), "name": "g",
                      "examples": batch, "out": str(out)}, tmp_path)
    loss, theirs = peft_gradients(model, peft_dir, batch)
    assert ours["loss"] == pytest.approx(loss, rel=1e-5)
    mine = load_file(out)
    assert set(mine) == set(theirs)
    for key, g in theirs.items():
        scale = np.abs(g).max()
        assert scale > 0
        assert np.abs(mine[key] - g).max() <= 1e-5 * scale, key


def test_server_prefix_cache_reuses_keys_past_the_window(tmp_path):
    """The served path: a prompt's KV copied from the prefix cache into a slot, then attended through the window
    by chunked prefill and decode, gives transformers' greedy tokens."""
    folder = tmp_path / "mistral_window"
    model = build_tiny_model("mistral_window", folder)
    add_tiny_tokenizer(folder)
    shared = prompt_of(80, 60)
    prompts = [shared + prompt_of(16, 61), shared + prompt_of(16, 61), shared + prompt_of(21, 62)]
    with Server("--model", folder, adapter_dir=tmp_path / "adapters") as srv:
        for i, p in enumerate(prompts):
            status, out, _ = srv.request("POST", "/v1/generate", {"prompt": p, "max_tokens": 16, "temperature": 0,
                                                                  "ignore_eos": True})
            assert status == 200, out
            assert [t["id"] for t in out["tokens"]] == hf_greedy(model, p, 16), i
            assert (out["usage"]["cached_tokens"] >= 64) == (i > 0), out["usage"]
        assert srv.stop() == 0, "".join(srv.log)


def write_config(folder, name, **changes):
    build_tiny_model(name, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("rope_type", ["dynamic", "longrope"])
def test_unsupported_rope_scaling_is_refused_by_name(tmp_path, rope_type):
    folder = tmp_path / "model"
    write_config(folder, "llama_gqa", rope_parameters={"rope_type": rope_type, "rope_theta": 10000.0, "factor": 2.0})
    r = run_cli("info", "--model", folder)
    assert r.returncode == 5 and f"rope scaling type '{rope_type}'" in r.stderr, r.stderr
    write_config(folder, "llama_gqa", rope_scaling={"type": rope_type, "factor": 2.0})  # the pre-5 spelling
    r = run_cli("info", "--model", folder)
    assert r.returncode == 5 and f"rope scaling type '{rope_type}'" in r.stderr, r.stderr


def test_qwen_sliding_window_is_refused(tmp_path):
    folder = tmp_path / "model"
    write_config(folder, "qwen2_bias", use_sliding_window=True, sliding_window=16, max_window_layers=1)
    r = run_cli("info", "--model", folder)
    assert r.returncode == 5 and "use_sliding_window" in r.stderr, r.stderr


def llama_cpp_permute(w, heads):
    """llama.cpp's converter reorders Llama q/k rows for its interleaved RoPE (convert_hf_to_gguf.py: permute)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_LAYER_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
                    "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "ffn_norm",
                    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def write_gguf(model, path, arch, rope, extra=None):
    """An F32 GGUF of a transformers model with llama.cpp's tensor names and rope metadata, plus `extra`
    metadata under the architecture's prefix."""
    from gguf import GGUFWriter
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    w = GGUFWriter(str(path), arch=arch)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    params = c.rope_parameters
    if rope in ("linear", "yarn"):
        w.add_string(f"{arch}.rope.scaling.type", rope)
        w.add_float32(f"{arch}.rope.scaling.factor", params["factor"])
        if rope == "yarn":
            w.add_uint32(f"{arch}.rope.scaling.original_context_length", params["original_max_position_embeddings"])
    for key, value in (extra or {}).items():
        (w.add_float32 if isinstance(value, float) else w.add_uint32)(f"{arch}.{key}", value)
    if rope == "rope_freqs":  # llama3 as llama.cpp stores it: divisors of the default inverse frequencies
        default = without_feature("llama_llama3", model).model.rotary_emb.inv_freq
        w.add_tensor("rope_freqs.weight", (default / model.model.rotary_emb.inv_freq).numpy().astype(np.float32))
    state = {k: v.float().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", state["model.norm.weight"])
    if not c.tie_word_embeddings:
        w.add_tensor("output.weight", state["lm_head.weight"])
    for i in range(c.num_hidden_layers):
        for hf, ours in GGUF_LAYER_NAMES.items():
            for kind in ("weight", "bias"):
                t = state.get(f"model.layers.{i}.{hf}.{kind}")
                if t is None:
                    continue
                if arch == "llama" and hf in ("self_attn.q_proj", "self_attn.k_proj"):
                    t = llama_cpp_permute(t, c.num_attention_heads if "q_proj" in hf else c.num_key_value_heads)
                w.add_tensor(f"blk.{i}.{ours}.{kind}", np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("name,arch,rope", [("qwen2_bias", "qwen2", None), ("llama_llama3", "llama", "rope_freqs"),
                                            ("llama_linear", "llama", "linear"), ("qwen3_yarn", "qwen3", "yarn")])
def test_gguf_of_each_variant_matches_transformers(tmp_path, name, arch, rope):
    model = build_tiny_model(name, tmp_path / "hf")
    gguf = write_gguf(model, tmp_path / f"{name}.gguf", arch, rope)
    prompt = prompt_of(96, 42)
    ours = probe_logits(gguf, [prompt], tmp_path)[0]
    diff = np.abs(ours - hf_logits(model, prompt)).max()
    print(f"{name} from GGUF: max |logit diff| over 96 positions = {diff:.2e}")
    assert diff <= TOL


def test_gguf_llama_with_attention_biases_matches_transformers(tmp_path, monkeypatch):
    """llama.cpp permutes the q/k biases of a Llama as it permutes their rows."""
    cls, kwargs = TINY_CONFIGS["llama_gqa"]
    monkeypatch.setitem(TINY_CONFIGS, "llama_bias", (cls, {**kwargs, "attention_bias": True}))
    model = build_tiny_model("llama_bias", tmp_path / "hf")
    gguf = write_gguf(model, tmp_path / "llama_bias.gguf", "llama", None)
    prompt = prompt_of(48, 44)
    assert np.abs(probe_logits(gguf, [prompt], tmp_path)[0] - hf_logits(model, prompt)).max() <= TOL


@pytest.mark.parametrize("key,value", [("rope.scaling.yarn_attn_factor", 0.5), ("rope.scaling.yarn_log_multiplier", 0.1),
                                       ("attention.sliding_window", 12), ("rope.dimension_count", 8)])
def test_gguf_attention_metadata_we_do_not_model_is_refused_by_name(tmp_path, key, value):
    model = build_tiny_model("qwen3_yarn", tmp_path / "hf")
    plain = write_gguf(model, tmp_path / "plain.gguf", "qwen3", "yarn")
    assert run_cli("info", "--model", plain).returncode == 0
    r = run_cli("info", "--model", write_gguf(model, tmp_path / "extra.gguf", "qwen3", "yarn", {key: value}))
    assert r.returncode == 5 and f"qwen3.{key}" in r.stderr, r.stderr


def test_yarn_attention_factor_from_mscale_ratio_matches_transformers(tmp_path, monkeypatch):
    """DeepSeek-style YaRN parameters: no attention_factor, but mscale and mscale_all_dim, whose ratio sets it."""
    _, kwargs = TINY_CONFIGS["llama_yarn_explicit"]
    rope = dict(rope_type="yarn", rope_theta=10000.0, factor=8.0, original_max_position_embeddings=ORIGINAL_CONTEXT,
                mscale=1.0, mscale_all_dim=0.5)
    monkeypatch.setitem(TINY_CONFIGS, "llama_yarn_mscale", (TINY_CONFIGS["llama_gqa"][0],
                                                            {**kwargs, "rope_parameters": rope}))
    model = build_tiny_model("llama_yarn_mscale", tmp_path / "model")
    assert model.model.rotary_emb.attention_scaling not in (1.0, 0.1 * np.log(8.0) + 1.0)
    prompt = prompt_of(96, 43)
    assert np.abs(probe_logits(tmp_path / "model", [prompt], tmp_path)[0] - hf_logits(model, prompt)).max() <= TOL
