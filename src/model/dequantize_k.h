#pragma once
// The k-quant block formats of the GGUF specification (256 elements per block, ggml's block_q2_K ... block_q6_K),
// one block at a time; dequantize.h dispatches to them. Each decoder follows gguf-py's order of float operations
// (gguf.quants), so its values equal that reference exactly.
#include <cstdint>
#include <cstring>

#include "model/dequantize.h"

namespace hs {

inline float load_half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return half_to_float(h);
}

// Q4_K's and Q5_K's scales: 8 six-bit (scale, min) pairs packed into 12 bytes; pair j of them.
void q4k_scale_min(int j, const uint8_t* scales, uint8_t* sc, uint8_t* mn);

void dequant_q2_k(const uint8_t* block, float* y);
void dequant_q3_k(const uint8_t* block, float* y);
void dequant_q4_k(const uint8_t* block, float* y);
void dequant_q5_k(const uint8_t* block, float* y);
void dequant_q6_k(const uint8_t* block, float* y);

}  // namespace hs
