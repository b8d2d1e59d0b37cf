#include "model/dequantize_k.h"

namespace hs {

void q4k_scale_min(int j, const uint8_t* q, uint8_t* sc, uint8_t* mn) {
  if (j < 4) {
    *sc = q[j] & 63;
    *mn = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
    *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Q2_K: {uint8 scales[16]; uint8 qs[64]; half d; half dmin} in 16 sub-blocks of 16. A scale byte is a 4-bit
// scale (low) and a 4-bit min (high); code byte l of each 32-byte half holds elements l, l + 32, l + 64, l + 96
// of that half, two bits each, lowest first.
void dequant_q2_k(const uint8_t* b, float* y) {
  const uint8_t* scales = b;
  const uint8_t* qs = b + 16;
  const float d = load_half(b + 80), dmin = load_half(b + 82);
  for (int e = 0; e < 256; ++e) {
    const float dl = d * (scales[e / 16] & 0x0f), ml = dmin * (scales[e / 16] >> 4);
    const int code = (qs[e / 128 * 32 + e % 32] >> (e / 32 % 4 * 2)) & 3;
    y[e] = dl * code - ml;
  }
}

// Q3_K: {uint8 hmask[32]; uint8 qs[64]; uint8 scales[12]; half d} in 16 sub-blocks of 16. The low two bits of a
// code are packed as in Q2_K; bit k of hmask[l] is the third bit of element 32k + l, and a clear bit subtracts 4.
// Sub-block s's six-bit scale (offset by 32) is a nibble of scales[s % 8] and two bits of scales[8 + s % 4].
void dequant_q3_k(const uint8_t* b, float* y) {
  const uint8_t* hmask = b;
  const uint8_t* qs = b + 32;
  const uint8_t* sc = b + 96;
  const float d = load_half(b + 108);
  for (int e = 0; e < 256; ++e) {
    const int s = e / 16;
    const int low = s < 8 ? sc[s] & 0x0f : sc[s - 8] >> 4;
    const int high = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
    const float dl = d * static_cast<float>((low | high << 4) - 32);
    const int code = (qs[e / 128 * 32 + e % 32] >> (e / 32 % 4 * 2)) & 3;
    const int hbit = (hmask[e % 32] >> (e / 32)) & 1;
    y[e] = dl * static_cast<float>(hbit ? code : code - 4);
  }
}

// Q4_K: {half d; half dmin; uint8 scales[12]; uint8 qs[128]} in 8 sub-blocks of 32.
void dequant_q4_k(const uint8_t* b, float* y) {
  float d = load_half(b);
  float dmin = load_half(b + 2);
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

// Q5_K: {half d; half dmin; uint8 scales[12]; uint8 qh[32]; uint8 qs[128]}: Q4_K's nibbles and scales, with bit
// s of qh[l] as the fifth bit of element 32s + l.
void dequant_q5_k(const uint8_t* b, float* y) {
  const float d = load_half(b), dmin = load_half(b + 2);
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  for (int s = 0; s < 8; ++s) {
    uint8_t sc, m;
    q4k_scale_min(s, b + 4, &sc, &m);
    const float ds = d * sc, ms = dmin * m;
    for (int l = 0; l < 32; ++l) {
      const int low = (qs[s / 2 * 32 + l] >> (s % 2 * 4)) & 0x0f;
      const int high = (qh[l] >> s) & 1;
      y[s * 32 + l] = ds * (low | high << 4) - ms;
    }
  }
}

// Q6_K: {uint8 ql[128]; uint8 qh[64]; int8 scales[16]; half d} over 256 elements.
void dequant_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  float d = load_half(b + 208);
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

}  // namespace hs
