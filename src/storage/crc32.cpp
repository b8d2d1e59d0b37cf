#include "storage/crc32.h"

#include <algorithm>
#include <array>
#ifdef HYPRSTREAM_HAVE_ZLIB
#include <zlib.h>
#endif

namespace hs {

// zlib's is several times faster than a byte-at-a-time table, which matters because every published version
// is checksummed; the table is the fallback when zlib is absent.
uint32_t crc32_update(uint32_t crc, const void* data, size_t size) {
#ifdef HYPRSTREAM_HAVE_ZLIB
  const auto* p = static_cast<const Bytef*>(data);
  while (size > 0) {
    const uInt n = static_cast<uInt>(std::min<size_t>(size, 1u << 30));
    crc = static_cast<uint32_t>(::crc32(crc, p, n));
    p += n;
    size -= n;
  }
  return crc;
#else
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ ((c & 1) ? 0xEDB88320u : 0);
      t[n] = c;
    }
    return t;
  }();
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
#endif
}

}  // namespace hs
