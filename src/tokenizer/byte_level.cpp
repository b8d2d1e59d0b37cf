#include "tokenizer/byte_level.h"

#include <array>
#include <cstdint>

namespace hs {

namespace {

struct ByteTables {
  std::array<uint32_t, 256> byte_to_cp{};
  std::array<int16_t, 512> cp_to_byte{};  // every mapped code point is below 324
  std::array<std::string, 256> byte_to_utf8;
  ByteTables() {
    cp_to_byte.fill(-1);
    auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      uint32_t cp = printable(b) ? static_cast<uint32_t>(b) : next++;
      byte_to_cp[b] = cp;
      cp_to_byte[cp] = static_cast<int16_t>(b);
      std::string s;
      if (cp < 0x80) {
        s.push_back(static_cast<char>(cp));
      } else {
        s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      }
      byte_to_utf8[b] = s;
    }
  }
};

const ByteTables& tables() {
  static const ByteTables t;
  return t;
}

}  // namespace

std::string byte_level_encode(std::string_view bytes) {
  const auto& t = tables();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) out += t.byte_to_utf8[b];
  return out;
}

std::string byte_level_decode(std::string_view s) {
  const auto& t = tables();
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    if (b0 < 0x80) {
      int16_t b = t.cp_to_byte[b0];
      out.push_back(b >= 0 ? static_cast<char>(b) : static_cast<char>(b0));
      ++i;
      continue;
    }
    if ((b0 & 0xE0) == 0xC0 && i + 1 < s.size()) {
      uint32_t cp = ((b0 & 0x1F) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3F);
      if (cp < t.cp_to_byte.size() && t.cp_to_byte[cp] >= 0) {
        out.push_back(static_cast<char>(t.cp_to_byte[cp]));
        i += 2;
        continue;
      }
    }
    // Not a mapped symbol: copy the whole character through.
    size_t n = (b0 >= 0xF0) ? 4 : (b0 >= 0xE0) ? 3 : (b0 >= 0xC0) ? 2 : 1;
    out.append(s.substr(i, n));
    i += n;
  }
  return out;
}

}  // namespace hs
