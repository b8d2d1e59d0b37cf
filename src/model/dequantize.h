#pragma once
// Block formats of the GGUF specification turned back into floats. Layouts follow ggml's block_q4_0 / q4_1 /
// q5_0 / q5_1 / q8_0 / iq4_nl structs (dequantize.cpp) and block_q2_K ... q6_K (dequantize_k.cpp).
#include <cstdint>
#include <string>

namespace hs {

float half_to_float(uint16_t h);

// Decodes n elements (a multiple of the type's block size) from src into dst.
// Throws Unsupported for a type it does not know.
void dequantize(uint32_t ggml_type, const uint8_t* src, float* dst, int64_t n);

// The types dequantize() decodes, named for messages ("F32, F16, ...").
std::string supported_ggml_types();

// The 4-bit codes of n elements of a Q4_0, Q4_1 or Q4_K tensor, with a scale and zero per group of 32 such
// that element = (code - 8) * scale + zero: the blocks' own codes and scales, giving dequantize's values up to
// float32 rounding. False, writing nothing, for other types.
bool int4_codes(uint32_t ggml_type, const uint8_t* src, int64_t n, uint8_t* codes, float* scale, float* zero);

}  // namespace hs
