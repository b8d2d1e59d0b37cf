#pragma once
// An adapter's values as a NanoVDB float grid, with its sparsity pattern, in one checksummed file.
// Torch-free: the NanoVDB headers stay inside adapter_image.cpp.
//
// File layout (little-endian):
//   [0, 72)            header: magic "HSLORA\x01\0", format version, codec, rank, tensor and tile counts,
//                      grid offset and sizes, and a CRC-32 of the whole file taken with the CRC field zeroed
//   [72, grid_offset)  pattern: per tensor 8 int64 (layer, module, is_b, rows, cols, first_tile, num_tiles, 0),
//                      then per tile 2 int32 (tile row, tile col), then zero padding to a multiple of 32
//   [grid_offset, end) the NanoVDB grid (32-byte aligned, so a memory map uses it in place), or the grid
//                      compressed with zlib (codec zip) or blosc (codec blosc)
//
// Coordinates: global tile g (TileLayout order) goes to leaf L = g / 8 at slot s = g % 8. Leaf L has origin
// (8 * (L / 256), 8 * ((L / 16) % 16), 8 * (L % 16)), so the first 4096 leaves share one NanoVDB lower node.
// Entry (i, j) of the tile (row i, column j inside the 8x8 tile) is the voxel origin + (s, i, j). A leaf
// stores voxel (x, y, z) at offset 64 x + 8 y + z, so a tile's 64 values are contiguous and row-major, and a
// leaf holds 8 tiles back to back: every leaf but the last is full. So for entry (row r, col c) of the A or
// B matrix of (layer, module): find the tensor, then the index k of tile (r / 8, c / 8) among its sorted
// tiles; g = first_tile + k, and (i, j) = (r % 8, c % 8).
//
// Values are float32: training applies updates far below float16's resolution to them (an Adam step of
// 1e-5 on a value near 0.05 vanishes in float16), and NanoVDB's Fp16 is a per-leaf quantisation whose
// scale would have to be recomputed for the whole leaf on every in-place update.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "adapters/tile_layout.h"
#include "storage/atomic_file.h"

namespace hs {

class MappedFile;

enum class AdapterCodec : uint32_t { None = 0, Zip = 1, Blosc = 2 };

const char* adapter_codec_name(AdapterCodec codec);
AdapterCodec parse_adapter_codec(const std::string& name);  // "none", "zip", "blosc"
bool adapter_codec_available(AdapterCodec codec);           // zip and blosc need their libraries at build time

class AdapterImage {
 public:
  // Builds the grid with nanovdb::GridBuilder; `values` holds layout.num_values() floats.
  static std::shared_ptr<AdapterImage> build(const TileLayout& layout, const float* values);

  // Reads and verifies a file (size, CRC, pattern, grid structure). An uncompressed grid is used in place
  // from a read-only memory map; a compressed one is inflated into memory. Throws CorruptFile with the path
  // and the reason, NotFound when the file is missing.
  static std::shared_ptr<AdapterImage> open(const std::string& path);

  // An owned, writable copy with the same pattern.
  std::shared_ptr<AdapterImage> clone() const;

  ~AdapterImage();
  AdapterImage(const AdapterImage&) = delete;
  AdapterImage& operator=(const AdapterImage&) = delete;

  const TileLayout& layout() const { return layout_; }
  const float* tile(int64_t g) const { return leaf_values_[g / 8] + (g % 8) * kTileValues; }
  std::vector<float> values() const;

  // Overwrites every active value in the grid's leaves (the tree is untouched) and refreshes the CRC.
  // Only for owned images (build or clone); a mapped file is read-only.
  void set_values(const float* values);

  // Writes the image atomically (temporary file, fsync, rename, fsync of the directory).
  void write(const std::string& path, AdapterCodec codec = AdapterCodec::None, Sync sync = Sync::Durable) const;

  size_t image_bytes() const { return size_; }  // uncompressed file size: header, pattern and grid
  size_t grid_bytes() const;
  uint32_t crc32() const;
  bool is_mapped() const { return map_ != nullptr; }

 private:
  AdapterImage() = default;
  void index_leaves(const std::string& where);

  TileLayout layout_;
  std::shared_ptr<MappedFile> map_;  // set when the grid is used in place from a file
  uint8_t* owned_ = nullptr;         // otherwise a 64-byte aligned buffer
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::vector<float*> leaf_values_;  // by leaf index L
};

}  // namespace hs
