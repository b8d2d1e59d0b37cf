#include "model/dequantize.h"

#include <cstring>

#include "common/error.h"
#include "common/gguf_file.h"

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
  float d = half_to_float(load_u16(b));
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = (static_cast<int>(qs[j] & 0x0f) - 8) * d;
    y[j + 16] = (static_cast<int>(qs[j] >> 4) - 8) * d;
  }
}

// Q4_1: {half d; half m; uint8 qs[16]}; element = nibble * d + m.
void dequant_q4_1(const uint8_t* b, float* y) {
  float d = half_to_float(load_u16(b));
  float m = half_to_float(load_u16(b + 2));
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = (qs[j] & 0x0f) * d + m;
    y[j + 16] = (qs[j] >> 4) * d + m;
  }
}

// Q8_0: {half d; int8 qs[32]}.
void dequant_q8_0(const uint8_t* b, float* y) {
  float d = half_to_float(load_u16(b));
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = qs[j] * d;
}

// Q4_K scales: 8 six-bit (scale, min) pairs packed into 12 bytes.
void q4k_scale_min(int j, const uint8_t* q, uint8_t* sc, uint8_t* mn) {
  if (j < 4) {
    *sc = q[j] & 63;
    *mn = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
    *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Q4_K: {half d; half dmin; uint8 scales[12]; uint8 qs[128]} over 256 elements in 8 sub-blocks of 32.
void dequant_q4_k(const uint8_t* b, float* y) {
  float d = half_to_float(load_u16(b));
  float dmin = half_to_float(load_u16(b + 2));
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 16;
  int is = 0;
  for (int j = 0; j < 256; j += 64) {
    uint8_t sc, m;
    q4k_scale_min(is, scales, &sc, &m);
    float d1 = d * sc, m1 = dmin * m;
    q4k_scale_min(is + 1, scales, &sc, &m);
    float d2 = d * sc, m2 = dmin * m;
    for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0x0f) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
    q += 32;
    is += 2;
  }
}

// Q6_K: {uint8 ql[128]; uint8 qh[64]; int8 scales[16]; half d} over 256 elements.
void dequant_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  float d = half_to_float(load_u16(b + 208));
  for (int n = 0; n < 256; n += 128) {
    for (int l = 0; l < 32; ++l) {
      int is = l / 16;
      int q1 = static_cast<int>((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
      int q2 = static_cast<int>((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
      int q3 = static_cast<int>((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      int q4 = static_cast<int>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * sc[is] * q1;
      y[l + 32] = d * sc[is + 2] * q2;
      y[l + 64] = d * sc[is + 4] * q3;
      y[l + 96] = d * sc[is + 6] * q4;
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
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
  const float d = half_to_float(load_u16(b)), dmin = half_to_float(load_u16(b + 2));
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
        scale[g] = half_to_float(load_u16(b));
        zero[g] = 0;
        nibbles_split(b + 2, codes + g * 32);
      }
      return true;
    case GgmlType::Q4_1:
      for (int64_t g = 0; g < n / 32; ++g) {
        const uint8_t* b = src + g * 20;
        scale[g] = half_to_float(load_u16(b));
        zero[g] = half_to_float(load_u16(b + 2)) + 8 * scale[g];
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
      for (int64_t k = 0; k < n; ++k) dst[k] = half_to_float(load_u16(src + 2 * k));
      return;
    case GgmlType::BF16:
      for (int64_t k = 0; k < n; ++k) {
        uint32_t bits = static_cast<uint32_t>(load_u16(src + 2 * k)) << 16;
        std::memcpy(dst + k, &bits, 4);
      }
      return;
    case GgmlType::Q4_0: dequant_blocks(src, dst, n, 32, 18, dequant_q4_0); return;
    case GgmlType::Q4_1: dequant_blocks(src, dst, n, 32, 20, dequant_q4_1); return;
    case GgmlType::Q8_0: dequant_blocks(src, dst, n, 32, 34, dequant_q8_0); return;
    case GgmlType::Q4_K: dequant_blocks(src, dst, n, 256, 144, dequant_q4_k); return;
    case GgmlType::Q6_K: dequant_blocks(src, dst, n, 256, 210, dequant_q6_k); return;
    default: break;
  }
  throw Error(ErrorKind::Unsupported, "tensor type " + ggml_type_name(type) +
                                          " is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)");
}

}  // namespace hs
