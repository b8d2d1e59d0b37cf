#pragma once
// GGUF tensors of a block type with random codes and plausible scales, as a file would hold them: inputs for
// tests of the kernels that read blocks in place (int4, ggml).
#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "common/gguf_file.h"

namespace hs::test {

inline uint16_t half_bits(float v) {
  const at::Tensor h = at::tensor({v}).to(at::kHalf);
  uint16_t bits;
  std::memcpy(&bits, h.data_ptr(), 2);
  return bits;
}

// A [rows, cols] tensor of `type` (one of the block types dequantize() decodes).
inline std::vector<uint8_t> random_blocks(GgmlType type, int64_t rows, int64_t cols, std::mt19937& rng) {
  int64_t block_elems = 0, block_bytes = 0;
  ggml_block_layout(static_cast<uint32_t>(type), &block_elems, &block_bytes);
  std::vector<uint8_t> bytes(rows * cols / block_elems * block_bytes);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(0.002f, 0.05f);
  for (auto& b : bytes) b = static_cast<uint8_t>(byte(rng));
  for (size_t at = 0; at < bytes.size(); at += block_bytes) {
    auto put = [&](size_t offset, float v) {
      const uint16_t h = half_bits(v);
      std::memcpy(&bytes[at + offset], &h, 2);
    };
    if (type == GgmlType::Q6_K || type == GgmlType::Q3_K) {  // d after the codes
      put(type == GgmlType::Q6_K ? 208 : 108, scale(rng));
      continue;
    }
    if (type == GgmlType::Q2_K) {  // d and dmin after the codes
      put(80, scale(rng));
      put(82, scale(rng));
      continue;
    }
    put(0, scale(rng));  // d
    const bool has_m = type == GgmlType::Q4_1 || type == GgmlType::Q5_1;
    const bool has_dmin = type == GgmlType::Q4_K || type == GgmlType::Q5_K;
    if (has_m) put(2, scale(rng) * (byte(rng) - 128) / 16.0f);  // m, of either sign
    if (has_dmin) put(2, scale(rng));
  }
  return bytes;
}

}  // namespace hs::test
