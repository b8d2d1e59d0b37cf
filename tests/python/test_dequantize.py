"""GGUF block formats: our dequantisation against gguf-py's reference implementation of the spec."""
import json

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize
from safetensors.numpy import load_file

from conftest import run_cli, run_probe

FLOAT_TYPES = [Q.F32, Q.F16, Q.BF16]
BLOCK_TYPES = [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.IQ4_NL, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]

# Byte offsets of each block type's half-precision fields (d, and m or dmin), as in ggml's block structs; every
# other byte is codes or packed sub-block scales, any value of which is valid.
HALF_FIELDS = {Q.Q8_0: [0], Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.IQ4_NL: [0],
               Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208]}


def float_rows(qtype, n_rows, row_len, rng):
    f = rng.standard_normal((n_rows, row_len)).astype(np.float32)
    if qtype == Q.F16:
        return f.astype(np.float16).view(np.uint8)
    if qtype == Q.BF16:
        return (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    return f.view(np.uint8)


def random_blocks(qtype, n_rows, row_len, rng, scale=0.05):
    """[n_rows, row bytes] of random block bytes whose half-precision fields are finite, in [-scale, scale]."""
    if qtype in FLOAT_TYPES:
        return float_rows(qtype, n_rows, row_len, rng)
    block, size = GGML_QUANT_SIZES[qtype]
    n_blocks = n_rows * row_len // block
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for at in HALF_FIELDS[qtype]:
        raw[:, at:at + 2] = rng.uniform(-scale, scale, size=(n_blocks, 1)).astype(np.float16).view(np.uint8)
    return raw.reshape(n_rows, -1)


def edge_blocks(qtype):
    """One row of blocks at the ends of the ranges: zero, negative zero, largest, subnormal and negative scales,
    each with all codes and packed sub-block scales 0x00, 0xff, 0x55 or 0xaa."""
    block, size = GGML_QUANT_SIZES[qtype]
    scales = np.array([0.0, -0.0, 65504.0, -65504.0, 2.0**-24, -(2.0**-14), 1.0], dtype=np.float16)
    fills = [0x00, 0xFF, 0x55, 0xAA]
    raw = np.empty((len(scales) * len(fills), size), dtype=np.uint8)
    for k, (s, fill) in enumerate((s, f) for s in scales for f in fills):
        raw[k] = fill
        for at in HALF_FIELDS[qtype]:
            raw[k, at:at + 2] = np.array([s], dtype=np.float16).view(np.uint8)
    return raw.reshape(1, -1)


def write_gguf(path, tensors, arch="llama", metadata=None):
    """A GGUF of raw tensors {name: (bytes or floats, ggml type)} and optional metadata calls."""
    w = GGUFWriter(str(path), arch=arch)
    for add, value in (metadata or {}).items():
        getattr(w, add)(value)
    for name, (data, qtype) in tensors.items():
        w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def probe_dequantize(tensors, tmp_path):
    path = write_gguf(tmp_path / "types.gguf", tensors)
    out = tmp_path / "deq.safetensors"
    run_probe({"mode": "dequantize", "gguf": str(path), "out": str(out)}, tmp_path)
    return load_file(str(out))


def assert_equal_to_gguf_py(tensors, got):
    for name, (raw, qtype) in tensors.items():
        want = dequantize(raw, qtype).astype(np.float32)
        assert got[name].shape == want.shape, name
        assert np.isfinite(want).all(), name
        np.testing.assert_array_equal(got[name], want, err_msg=name)


def test_every_supported_type_matches_gguf_py_exactly(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {f"t.{t.name}": (random_blocks(t, 3, 512, rng), t) for t in FLOAT_TYPES + BLOCK_TYPES}
    assert_equal_to_gguf_py(tensors, probe_dequantize(tensors, tmp_path))


def test_extreme_scales_and_codes_match_gguf_py_exactly(tmp_path):
    tensors = {f"edge.{t.name}": (edge_blocks(t), t) for t in BLOCK_TYPES}
    assert_equal_to_gguf_py(tensors, probe_dequantize(tensors, tmp_path))


H, FF, VOCAB = 256, 512, 64
LLAMA_METADATA = {"add_context_length": 128, "add_embedding_length": H, "add_block_count": 1,
                  "add_feed_forward_length": FF, "add_head_count": 4, "add_head_count_kv": 4,
                  "add_layer_norm_rms_eps": 1e-6}
# Every matrix of a one-layer Llama in one of the types this file adds, with gguf-py's shapes [rows, cols].
LLAMA_MATRICES = {"token_embd.weight": ((VOCAB, H), Q.IQ4_NL), "output.weight": ((VOCAB, H), Q.Q2_K),
                  "blk.0.attn_q.weight": ((H, H), Q.Q5_0), "blk.0.attn_k.weight": ((H, H), Q.Q5_1),
                  "blk.0.attn_v.weight": ((H, H), Q.Q3_K), "blk.0.attn_output.weight": ((H, H), Q.Q5_K),
                  "blk.0.ffn_gate.weight": ((FF, H), Q.Q2_K), "blk.0.ffn_up.weight": ((FF, H), Q.IQ4_NL),
                  "blk.0.ffn_down.weight": ((H, FF), Q.Q3_K)}


def tiny_llama(rng):
    """Tensors of a one-layer Llama: LLAMA_MATRICES as random blocks, with scales small enough for weights below
    about 0.1 (finite, varied logits), and float32 norms."""
    tensors = {f"{n}.weight": (1 + 0.1 * rng.standard_normal(H).astype(np.float32), Q.F32)
               for n in ("output_norm", "blk.0.attn_norm", "blk.0.ffn_norm")}
    for name, ((rows, cols), qtype) in LLAMA_MATRICES.items():
        tensors[name] = (random_blocks(qtype, rows, cols, rng, scale=1e-4 if GGML_QUANT_SIZES[qtype][0] == 256
                                       else 3e-3), qtype)
    return tensors


def model_logits(path, tmp_path):
    prompts = [[1, 5, 9, 2, 33, 63, 0, 17], [4, 4, 4]]
    out = tmp_path / f"{path.stem}.logits.safetensors"
    run_probe({"mode": "logits", "model": str(path), "prompts": prompts, "out": str(out)}, tmp_path)
    return load_file(str(out))


def test_model_with_new_types_loads_the_weights_gguf_py_dequantizes(tmp_path):
    """The same model twice: matrices in the new block types, and as float32 from gguf-py's dequantisation.
    Equal weights give equal logits."""
    quantized = tiny_llama(np.random.default_rng(1))
    reference = {n: (t[0] if t[1] == Q.F32 else dequantize(t[0], t[1]).astype(np.float32), Q.F32)
                 for n, t in quantized.items()}
    got = model_logits(write_gguf(tmp_path / "quantized.gguf", quantized, metadata=LLAMA_METADATA), tmp_path)
    want = model_logits(write_gguf(tmp_path / "reference.gguf", reference, metadata=LLAMA_METADATA), tmp_path)
    assert got.keys() == want.keys()
    for k in want:
        assert np.isfinite(want[k]).all() and want[k].std() > 0, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.parametrize("qtype", [Q.IQ2_XXS, Q.IQ4_XS, Q.TQ2_0])
def test_unsupported_block_type_is_refused_by_name(tmp_path, qtype):
    tensors = tiny_llama(np.random.default_rng(2))
    block, size = GGML_QUANT_SIZES[qtype]
    tensors["blk.0.ffn_down.weight"] = (np.full((H, FF // block * size), 0x11, dtype=np.uint8), qtype)
    r = run_cli("info", "--model", write_gguf(tmp_path / f"{qtype.name}.gguf", tensors, metadata=LLAMA_METADATA))
    assert r.returncode == 5, r.stderr
    assert f"has type {qtype.name}, which is not supported" in r.stderr, r.stderr
    assert "Q5_K" in r.stderr and "IQ4_NL" in r.stderr, r.stderr  # the message lists what is supported


def test_quantize_auto_takes_the_4bit_blocks_where_most_projections_have_them(tmp_path):
    """--quantize auto (the default): a GGUF whose layer projections are mostly (by elements) Q4_0, Q4_1 or Q4_K
    computes from those codes on the CPU in float32, as llama.cpp computes from the file; one mostly in other
    types, asked for bfloat16 or --quantize none stays dense."""
    def weights(types, *flags):
        rng = np.random.default_rng(3)
        tensors = tiny_llama(rng)
        for name, qtype in types.items():
            (rows, cols), _ = LLAMA_MATRICES[name]
            tensors[name] = (random_blocks(qtype, rows, cols, rng, scale=1e-4 if qtype == Q.Q4_K else 3e-3), qtype)
        path = write_gguf(tmp_path / f"auto{len(list(tmp_path.iterdir()))}.gguf", tensors, metadata=LLAMA_METADATA)
        r = run_cli("info", "--model", path, "--json", *flags)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["weights"]

    ffn = {"blk.0.ffn_gate.weight": Q.Q4_K, "blk.0.ffn_up.weight": Q.Q4_0, "blk.0.ffn_down.weight": Q.Q4_1}
    attention = {f"blk.0.attn_{n}.weight": Q.Q4_0 for n in ("q", "k", "v", "output")}
    assert weights(ffn) == "int4"  # 60% of the projections' elements
    assert weights(attention) == "float32"  # 40%
    assert weights({}) == "float32"
    assert weights(ffn, "--quantize", "none") == "float32"
    assert weights(ffn, "--dtype", "bfloat16") == "bfloat16"
    assert weights(attention, "--quantize", "int4") == "int4"
