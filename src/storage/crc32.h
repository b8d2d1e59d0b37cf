#pragma once
// CRC-32 (IEEE: the polynomial of zlib, gzip and NanoVDB), used to checksum adapter files, checkpoints and
// write-ahead log records. Torch-free.
#include <cstddef>
#include <cstdint>

namespace hs {

// The CRC of the bytes so far (`crc`, 0 to start) continued over [data, data + size).
uint32_t crc32_update(uint32_t crc, const void* data, size_t size);

}  // namespace hs
