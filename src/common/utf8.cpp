#include "common/utf8.h"

namespace hs {

namespace {

const char kReplacement[] = "\xEF\xBF\xBD";

// Length of the valid sequence at s[i], 0 if invalid, or -1 if valid so far but cut off by the end.
int valid_sequence_at(std::string_view s, size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return 1;
  int n;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte (rejects overlongs and surrogates)
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  for (int k = 1; k < n; ++k) {
    if (i + k >= s.size()) return -1;
    const auto b = static_cast<unsigned char>(s[i + k]);
    if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return 0;
  }
  return n;
}

}  // namespace

size_t utf8_sequence_length(unsigned char lead) {
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  if (lead >= 0xE0) return lead <= 0xEF ? 3 : 1;
  if (lead >= 0xC2) return 2;
  return 1;
}

bool utf8_is_valid(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    int n = valid_sequence_at(s, i);
    if (n <= 0) return false;
    i += n;
  }
  return true;
}

std::string utf8_take_complete(std::string& pending) {
  std::string out;
  size_t i = 0;
  while (i < pending.size()) {
    int n = valid_sequence_at(pending, i);
    if (n < 0) break;  // a character still arriving
    if (n == 0) {
      out += kReplacement;
      ++i;
      continue;
    }
    out.append(pending, i, n);
    i += n;
  }
  pending.erase(0, i);
  return out;
}

namespace {

// s with each byte outside a valid sequence rewritten by `invalid`.
template <typename Rewrite>
std::string rewrite_invalid(std::string_view s, Rewrite invalid) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    int n = valid_sequence_at(s, i);
    if (n <= 0) {
      invalid(out, static_cast<unsigned char>(s[i]));
      ++i;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  return out;
}

}  // namespace

std::string utf8_replace_invalid(std::string_view s) {
  return rewrite_invalid(s, [](std::string& out, unsigned char) { out += kReplacement; });
}

std::string utf8_escape_invalid(std::string_view s) {
  return rewrite_invalid(s, [](std::string& out, unsigned char b) {
    const char* hex = "0123456789abcdef";
    out += "\\x";
    out += hex[b >> 4];
    out += hex[b & 15];
  });
}

}  // namespace hs
