#pragma once
// A weight kept as rows of one of ggml's block types (a GGUF's own bytes, or float rows quantized to Q8_0) and
// multiplied through ggml's CPU dot products, the kernels llama.cpp decodes with: the activations are quantized
// to the type's partner (Q8_0 for Q8_0), and each output is one integer dot product of a weight row. Used for
// the vocabulary projection of int4 models, which most GGUF files store in 8 bits or Q6_K: at one row this
// reads the file's bytes at memory speed (49152 x 576 Q8_0: 0.7 ms on 2 cores, where torch's int8 kernel
// takes 1.7), and it needs no second quantization of an already quantized table.
// Builds without ggml (the core alone, on a machine with torch only) have ggml_available() false; the loader
// then keeps the table in torch's int8 form instead.
#include <ATen/ATen.h>

#include <cstdint>

namespace hs {

struct GgmlRows {
  at::Tensor bytes;   // [rows, row_bytes] uint8: each row's blocks
  int32_t type = -1;  // ggml_type
  int64_t cols = 0;

  bool defined() const { return bytes.defined(); }
};

bool ggml_available();

// The rows of a GGUF tensor of `rows` x `cols` elements in ggml type `type`: a view of `data`, which must
// outlive them (a model keeps its files mapped: Model::files); undefined where this build has no ggml or ggml
// has no CPU dot product for the type.
GgmlRows ggml_rows_from_gguf(uint32_t type, const uint8_t* data, int64_t rows, int64_t cols);

// A float weight [rows, cols] quantized to Q8_0 (cols a multiple of 32).
GgmlRows ggml_rows_q8_0(const at::Tensor& weight);

// x [M, cols] (float32) times the rows: [M, rows] float32.
at::Tensor ggml_matmul(const at::Tensor& x, const GgmlRows& w);

// The rows at `index` ([n] int64) as float32 [n, cols]; all rows when `index` is undefined.
at::Tensor ggml_dequantize_rows(const GgmlRows& w, const at::Tensor& index = {});

}  // namespace hs
