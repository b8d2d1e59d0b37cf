"""GGUF block formats: our dequantisation against gguf-py's reference implementation of the spec."""
import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize
from safetensors.numpy import load_file

from conftest import run_probe

TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q6_K]


def random_blocks(qtype, n_rows, row_len, rng):
    """Random block bytes whose half-precision scale fields are finite, laid out as the spec's structs."""
    block, size = GGML_QUANT_SIZES[qtype]
    n_blocks = n_rows * row_len // block
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    half = lambda k: rng.uniform(-0.05, 0.05, size=(n_blocks, k)).astype(np.float16).view(np.uint8)
    if qtype in (Q.Q8_0, Q.Q4_0):
        raw[:, 0:2] = half(1)
    elif qtype == Q.Q4_1:
        raw[:, 0:4] = half(2)
    elif qtype == Q.Q4_K:
        raw[:, 0:4] = half(2)
    elif qtype == Q.Q6_K:
        raw[:, 208:210] = half(1)
    elif qtype == Q.F16:
        raw = rng.standard_normal(n_rows * row_len).astype(np.float16).view(np.uint8).reshape(n_blocks, size)
    elif qtype == Q.BF16:
        f = rng.standard_normal(n_rows * row_len).astype(np.float32)
        raw = (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(n_blocks, size)
    elif qtype == Q.F32:
        raw = rng.standard_normal(n_rows * row_len).astype(np.float32).view(np.uint8).reshape(n_blocks, size)
    return raw.reshape(n_rows, -1)


def test_every_supported_type_matches_gguf_py(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "types.gguf"
    w = GGUFWriter(str(path), arch="llama")
    expected = {}
    for qtype in TYPES:
        raw = random_blocks(qtype, 3, 512, rng)
        name = f"t.{qtype.name}"
        w.add_tensor(name, raw, raw_dtype=qtype)
        expected[name] = dequantize(raw, qtype).reshape(3, 512).astype(np.float32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tmp_path / "deq.safetensors"
    run_probe({"mode": "dequantize", "gguf": str(path), "out": str(out)}, tmp_path)
    got = load_file(str(out))
    for name, ref in expected.items():
        assert got[name].shape == ref.shape, name
        np.testing.assert_allclose(got[name], ref, rtol=1e-6, atol=1e-7, err_msg=name)
