#pragma once
// 4-bit weights in groups of 32 along the input dimension, w = (q - 8) * scale + zero with q in [0, 15]: the
// form torch's CPU int4 kernel (_weight_int4pack_mm_for_cpu) multiplies from. GGUF's Q4_0, Q4_1 and Q4_K blocks
// are this form already (their codes and scales are taken as they are); other weights are quantized to it.
#include <ATen/ATen.h>

#include <cstdint>

namespace hs {

struct Linear;

constexpr int64_t kInt4Group = 32;

struct Int4Codes {
  at::Tensor codes;  // [out, in] uint8 in [0, 15]
  at::Tensor scale;  // [out, in / 32] float32
  at::Tensor zero;   // [out, in / 32] float32
};

// The codes of a GGUF tensor of `rows` x `cols` elements stored as Q4_0, Q4_1 or Q4_K; undefined codes for any
// other type.
Int4Codes int4_from_gguf(uint32_t ggml_type, const uint8_t* data, int64_t rows, int64_t cols);

// Group-wise asymmetric quantization of a float weight [out, in] (each group's minimum and maximum map to
// codes 0 and 15, as Q4_1 does).
Int4Codes quantize_int4(const at::Tensor& weight);

Int4Codes cat_int4(const std::vector<Int4Codes>& parts);  // along the output rows

// Whether the CPU kernel takes a weight of this shape (its packing works in blocks of up to 64 output rows).
bool int4_kernel_fits(int64_t out, int64_t in);

// Sets lin.q4 and lin.q4_scale_zero from codes, and drops lin.weight.
void set_int4(Linear& lin, const Int4Codes& codes);

// Whether int4_dequantized works on this CPU: torch's packed layout differs per CPU capability, and the known
// ones are recognized by packing a probe.
bool int4_gradients_supported();

// The weight [out, in] as float32 values (for products the kernel does not serve, such as gradients). Throws
// Unsupported where torch packs in a layout this code does not recognize.
at::Tensor int4_dequantized(const Linear& lin);

// x [rows, in] times the weight, [rows, out] in x's dtype: through the kernel, or through the dequantized weight
// when x needs a gradient (the kernel has no derivative). quantized_linear (forward.cpp) takes any leading shape.
at::Tensor int4_linear(const at::Tensor& x, const Linear& lin);

}  // namespace hs
