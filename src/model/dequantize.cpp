#include "model/dequantize.h"

#include <cstring>

#include "common/error.h"
#include "common/gguf_file.h"
#include "model/dequantize_k.h"

namespace hs {

float half_to_float(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal half: renormalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ffu;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

namespace {

uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// Q4_0: {half d; uint8 qs[16]}; element j = (nibble - 8) * d, low nibbles first.
void dequant_q4_0(const uint8_t* b, float* y) {
  float d = load_half(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = (static_cast<int>(qs[j] & 0x0f) - 8) * d;
    y[j + 16] = (static_cast<int>(qs[j] >> 4) - 8) * d;
  }
}

// Q4_1: {half d; half m; uint8 qs[16]}; element = nibble * d + m.
void dequant_q4_1(const uint8_t* b, float* y) {
  float d = load_half(b);
  float m = load_half(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = (qs[j] & 0x0f) * d + m;
    y[j + 16] = (qs[j] >> 4) * d + m;
  }
}

// The 5-bit code of element j of a Q5_0 or Q5_1 block: Q4_0's nibble, with bit j of qh (little-endian) on top.
int five_bit_code(const uint8_t* qh_bytes, const uint8_t* qs, int j) {
  uint32_t qh;
  std::memcpy(&qh, qh_bytes, 4);
  const int nibble = j < 16 ? qs[j] & 0x0f : qs[j - 16] >> 4;
  return nibble | static_cast<int>((qh >> j) & 1) << 4;
}

// Q5_0: {half d; uint8 qh[4]; uint8 qs[16]}; element = (code - 16) * d.
void dequant_q5_0(const uint8_t* b, float* y) {
  const float d = load_half(b);
  for (int j = 0; j < 32; ++j) y[j] = d * static_cast<float>(five_bit_code(b + 2, b + 6, j) - 16);
}

// Q5_1: {half d; half m; uint8 qh[4]; uint8 qs[16]}; element = code * d + m.
void dequant_q5_1(const uint8_t* b, float* y) {
  const float d = load_half(b), m = load_half(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = d * static_cast<float>(five_bit_code(b + 4, b + 8, j)) + m;
}

// Q8_0: {half d; int8 qs[32]}.
void dequant_q8_0(const uint8_t* b, float* y) {
  float d = load_half(b);
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = qs[j] * d;
}

// IQ4_NL: {half d; uint8 qs[16]}; a nibble (low nibbles first, as Q4_0) indexes ggml's kvalues_iq4nl, a
// non-linear grid denser near zero; element = d * kvalues[nibble].
void dequant_iq4_nl(const uint8_t* b, float* y) {
  static constexpr int8_t kvalues[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
  const float d = load_half(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(kvalues[qs[j] & 0x0f]);
    y[j + 16] = d * static_cast<float>(kvalues[qs[j] >> 4]);
  }
}

// Codes of one group of 32 from 16 bytes of nibbles: low nibbles are elements 0-15, high nibbles 16-31.
void nibbles_split(const uint8_t* qs, uint8_t* codes) {
  for (int j = 0; j < 16; ++j) {
    codes[j] = qs[j] & 0x0f;
    codes[j + 16] = qs[j] >> 4;
  }
}

// Q4_K's 64 elements per 32 bytes: low nibbles are the first group of 32, high nibbles the second.
void q4k_codes(const uint8_t* b, uint8_t* codes, float* scale, float* zero) {
  const float d = load_half(b), dmin = load_half(b + 2);
  const uint8_t* q = b + 16;
  for (int g = 0; g < 8; g += 2, q += 32) {
    for (int half = 0; half < 2; ++half) {
      uint8_t sc, m;
      q4k_scale_min(g + half, b + 4, &sc, &m);
      scale[g + half] = d * sc;
      zero[g + half] = 8 * (d * sc) - dmin * m;
      for (int l = 0; l < 32; ++l) codes[(g + half) * 32 + l] = half ? q[l] >> 4 : q[l] & 0x0f;
    }
  }
}

template <typename BlockFn>
void dequant_blocks(const uint8_t* src, float* dst, int64_t n, int64_t block_elems, int64_t block_bytes, BlockFn fn) {
  for (int64_t k = 0; k < n / block_elems; ++k) fn(src + k * block_bytes, dst + k * block_elems);
}

}  // namespace

bool int4_codes(uint32_t type, const uint8_t* src, int64_t n, uint8_t* codes, float* scale, float* zero) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::Q4_0:
      for (int64_t g = 0; g < n / 32; ++g) {
        const uint8_t* b = src + g * 18;
        scale[g] = load_half(b);
        zero[g] = 0;
        nibbles_split(b + 2, codes + g * 32);
      }
      return true;
    case GgmlType::Q4_1:
      for (int64_t g = 0; g < n / 32; ++g) {
        const uint8_t* b = src + g * 20;
        scale[g] = load_half(b);
        zero[g] = load_half(b + 2) + 8 * scale[g];
        nibbles_split(b + 4, codes + g * 32);
      }
      return true;
    case GgmlType::Q4_K:
      for (int64_t k = 0; k < n / 256; ++k) q4k_codes(src + k * 144, codes + k * 256, scale + k * 8, zero + k * 8);
      return true;
    default: return false;
  }
}

void dequantize(uint32_t type, const uint8_t* src, float* dst, int64_t n) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::F32: std::memcpy(dst, src, n * 4); return;
    case GgmlType::F16:
      for (int64_t k = 0; k < n; ++k) dst[k] = load_half(src + 2 * k);
      return;
    case GgmlType::BF16:
      for (int64_t k = 0; k < n; ++k) {
        uint32_t bits = static_cast<uint32_t>(load_u16(src + 2 * k)) << 16;
        std::memcpy(dst + k, &bits, 4);
      }
      return;
    case GgmlType::Q4_0: dequant_blocks(src, dst, n, 32, 18, dequant_q4_0); return;
    case GgmlType::Q4_1: dequant_blocks(src, dst, n, 32, 20, dequant_q4_1); return;
    case GgmlType::Q5_0: dequant_blocks(src, dst, n, 32, 22, dequant_q5_0); return;
    case GgmlType::Q5_1: dequant_blocks(src, dst, n, 32, 24, dequant_q5_1); return;
    case GgmlType::Q8_0: dequant_blocks(src, dst, n, 32, 34, dequant_q8_0); return;
    case GgmlType::IQ4_NL: dequant_blocks(src, dst, n, 32, 18, dequant_iq4_nl); return;
    case GgmlType::Q2_K: dequant_blocks(src, dst, n, 256, 84, dequant_q2_k); return;
    case GgmlType::Q3_K: dequant_blocks(src, dst, n, 256, 110, dequant_q3_k); return;
    case GgmlType::Q4_K: dequant_blocks(src, dst, n, 256, 144, dequant_q4_k); return;
    case GgmlType::Q5_K: dequant_blocks(src, dst, n, 256, 176, dequant_q5_k); return;
    case GgmlType::Q6_K: dequant_blocks(src, dst, n, 256, 210, dequant_q6_k); return;
    default: break;
  }
  throw Error(ErrorKind::Unsupported,
              "tensor type " + ggml_type_name(type) + " is not supported (supported: " + supported_ggml_types() + ")");
}

std::string supported_ggml_types() {
  return "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";
}

}  // namespace hs
