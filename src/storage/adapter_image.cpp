#include "storage/adapter_image.h"

#include <nanovdb/NanoVDB.h>
#include <nanovdb/util/GridBuilder.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#ifdef HYPRSTREAM_HAVE_ZLIB
#include <zlib.h>
#endif
#ifdef HYPRSTREAM_HAVE_BLOSC
#include <blosc.h>
#endif

#include "common/error.h"
#include "common/mapped_file.h"
#include "storage/atomic_file.h"
#include "storage/crc32.h"

namespace hs {

namespace {

constexpr char kMagic[8] = {'H', 'S', 'L', 'O', 'R', 'A', 1, 0};
constexpr uint32_t kFormatVersion = 1;
constexpr size_t kGridAlignment = 32;  // NANOVDB_DATA_ALIGNMENT

struct FileHeader {
  char magic[8];
  uint32_t format_version;
  uint32_t codec;
  uint64_t rank;
  uint64_t num_tensors;
  uint64_t num_tiles;
  uint64_t grid_offset;
  uint64_t grid_bytes;    // uncompressed
  uint64_t stored_bytes;  // as stored after grid_offset
  uint32_t crc32;
  uint32_t reserved;
};
static_assert(sizeof(FileHeader) == 72, "the header layout is part of the file format");

constexpr size_t kTensorRecordBytes = 8 * sizeof(int64_t);
constexpr size_t kTileRecordBytes = 2 * sizeof(int32_t);
constexpr size_t kHeaderCrcOffset = offsetof(FileHeader, crc32);

size_t pattern_end(uint64_t tensors, uint64_t tiles) {
  return sizeof(FileHeader) + tensors * kTensorRecordBytes + tiles * kTileRecordBytes;
}

size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

using GridT = nanovdb::NanoGrid<float>;
using TreeT = nanovdb::NanoTree<float>;
using LeafT = nanovdb::NanoLeaf<float>;
constexpr size_t kMinGridBytes = sizeof(nanovdb::GridData) + sizeof(nanovdb::TreeData<3>);

// An upper bound on the grid of `tiles` tiles in our coordinates, so a header cannot ask for absurd
// allocations: every leaf, a lower node per leaf, and an upper node per 2^17 leaves (x spans 8 per 256 leaves).
size_t max_grid_bytes(uint64_t tiles) {
  const uint64_t leaves = (tiles + 7) / 8;
  return (size_t{1} << 20) + leaves * (sizeof(LeafT) + sizeof(nanovdb::NanoLower<float>)) +
         (leaves / 131072 + 1) * sizeof(nanovdb::NanoUpper<float>);
}

nanovdb::Coord voxel(int64_t g, int64_t i, int64_t j) {
  const int64_t L = g / 8, s = g % 8;
  return nanovdb::Coord(static_cast<int32_t>(8 * (L / 256) + s), static_cast<int32_t>(8 * ((L / 16) % 16) + i),
                        static_cast<int32_t>(8 * (L % 16) + j));
}

int64_t leaf_index(const nanovdb::Coord& origin) {
  return static_cast<int64_t>(origin[0] / 8) * 256 + (origin[1] / 8) * 16 + origin[2] / 8;
}

// CRC-32 of bytes [0, size) with the header's CRC field read as zero.
uint32_t file_crc(const uint8_t* data, size_t size) {
  const uint32_t zero = 0;
  uint32_t crc = crc32_update(0, data, kHeaderCrcOffset);
  crc = crc32_update(crc, &zero, sizeof(zero));
  return crc32_update(crc, data + kHeaderCrcOffset + sizeof(zero), size - kHeaderCrcOffset - sizeof(zero));
}

uint8_t* alloc_aligned(size_t n) {
  void* p = std::aligned_alloc(64, align_up(n, 64));
  if (!p) throw Error(ErrorKind::Internal, "out of memory for an adapter image of " + std::to_string(n) + " bytes");
  std::memset(p, 0, align_up(n, 64));
  return static_cast<uint8_t*>(p);
}

[[noreturn]] void corrupt(const std::string& path, const std::string& why) {
  throw Error(ErrorKind::CorruptFile, "adapter file '" + path + "' is corrupt: " + why);
}

void serialize_pattern(const TileLayout& layout, uint8_t* out) {
  for (const auto& t : layout.tensors) {
    const int64_t rec[8] = {t.layer, static_cast<int64_t>(t.module), t.is_b ? 1 : 0, t.rows, t.cols, t.first_tile,
                            t.num_tiles, 0};
    std::memcpy(out, rec, sizeof(rec));
    out += sizeof(rec);
  }
  for (const auto& p : layout.tiles) {
    const int32_t rec[2] = {p.row, p.col};
    std::memcpy(out, rec, sizeof(rec));
    out += sizeof(rec);
  }
}

TileLayout parse_pattern(const FileHeader& h, const uint8_t* in, const std::string& path) {
  TileLayout layout;
  layout.rank = static_cast<int64_t>(h.rank);
  for (uint64_t i = 0; i < h.num_tensors; ++i) {
    int64_t rec[8];
    std::memcpy(rec, in, sizeof(rec));
    in += sizeof(rec);
    if (rec[0] < 0 || rec[0] > (1 << 20) || rec[1] < 0 || rec[1] >= kNumLoraModules || (rec[2] != 0 && rec[2] != 1))
      corrupt(path, "tensor record " + std::to_string(i) + " is out of range");
    layout.tensors.push_back({static_cast<int32_t>(rec[0]), static_cast<LoraModule>(rec[1]), rec[2] == 1, rec[3],
                              rec[4], rec[5], rec[6]});
  }
  layout.tiles.resize(h.num_tiles);
  for (auto& p : layout.tiles) {
    int32_t rec[2];
    std::memcpy(rec, in, sizeof(rec));
    in += sizeof(rec);
    p = {rec[0], rec[1]};
  }
  validate_layout(layout);
  return layout;
}

}  // namespace

const char* adapter_codec_name(AdapterCodec codec) {
  switch (codec) {
    case AdapterCodec::None: return "none";
    case AdapterCodec::Zip: return "zip";
    case AdapterCodec::Blosc: return "blosc";
  }
  return "unknown";
}

AdapterCodec parse_adapter_codec(const std::string& name) {
  for (AdapterCodec c : {AdapterCodec::None, AdapterCodec::Zip, AdapterCodec::Blosc})
    if (name == adapter_codec_name(c)) {
      if (!adapter_codec_available(c))
        throw Error(ErrorKind::Unsupported, "codec '" + name + "' was not available when Hyprstream was built");
      return c;
    }
  throw Error(ErrorKind::InvalidArgument, "unknown codec '" + name + "'; expected none, zip or blosc");
}

bool adapter_codec_available(AdapterCodec codec) {
  switch (codec) {
    case AdapterCodec::None: return true;
#ifdef HYPRSTREAM_HAVE_ZLIB
    case AdapterCodec::Zip: return true;
#endif
#ifdef HYPRSTREAM_HAVE_BLOSC
    case AdapterCodec::Blosc: return true;
#endif
    default: return false;
  }
}

AdapterImage::~AdapterImage() { std::free(owned_); }

size_t AdapterImage::grid_bytes() const { return reinterpret_cast<const FileHeader*>(data_)->grid_bytes; }

uint32_t AdapterImage::crc32() const { return reinterpret_cast<const FileHeader*>(data_)->crc32; }

std::shared_ptr<AdapterImage> AdapterImage::build(const TileLayout& layout, const float* values) {
  validate_layout(layout);
  const int64_t num_tiles = static_cast<int64_t>(layout.tiles.size());
  if (num_tiles == 0) throw Error(ErrorKind::InvalidArgument, "an adapter needs at least one active tile");

  nanovdb::GridBuilder<float> builder(0.0f);
  builder.setStats(nanovdb::StatsMode::Disable);        // node statistics would go stale on in-place updates;
  builder.setChecksum(nanovdb::ChecksumMode::Disable);  // the file's own CRC covers every byte instead
  auto acc = builder.getAccessor();
  for (int64_t g = 0; g < num_tiles; ++g)
    for (int64_t i = 0; i < kTileSize; ++i)
      for (int64_t j = 0; j < kTileSize; ++j) acc.setValue(voxel(g, i, j), values[g * kTileValues + i * kTileSize + j]);
  auto handle = builder.getHandle<nanovdb::AbsDiff, nanovdb::HostBuffer>(1.0, nanovdb::Vec3d(0), "hyprstream_lora");

  std::shared_ptr<AdapterImage> img(new AdapterImage());
  img->layout_ = layout;
  const size_t grid_offset = align_up(pattern_end(layout.tensors.size(), num_tiles), kGridAlignment);
  img->size_ = grid_offset + handle.size();
  img->owned_ = alloc_aligned(img->size_);
  img->data_ = img->owned_;
  FileHeader h{};
  std::memcpy(h.magic, kMagic, sizeof(kMagic));
  h.format_version = kFormatVersion;
  h.codec = static_cast<uint32_t>(AdapterCodec::None);
  h.rank = static_cast<uint64_t>(layout.rank);
  h.num_tensors = layout.tensors.size();
  h.num_tiles = static_cast<uint64_t>(num_tiles);
  h.grid_offset = grid_offset;
  h.grid_bytes = handle.size();
  h.stored_bytes = handle.size();
  std::memcpy(img->owned_, &h, sizeof(h));
  serialize_pattern(layout, img->owned_ + sizeof(h));
  std::memcpy(img->owned_ + grid_offset, handle.data(), handle.size());
  img->index_leaves("a newly built adapter");
  reinterpret_cast<FileHeader*>(img->owned_)->crc32 = file_crc(img->owned_, img->size_);
  return img;
}

void AdapterImage::index_leaves(const std::string& where) {
  const auto& h = *reinterpret_cast<const FileHeader*>(data_);
  if (h.grid_bytes < kMinGridBytes) corrupt(where, "the grid is smaller than a NanoVDB grid header");
  const uint8_t* grid_begin = data_ + h.grid_offset;
  const auto* grid = reinterpret_cast<const GridT*>(grid_begin);
  if (!grid->isValid() || grid->gridType() != nanovdb::GridType::Float || grid->gridSize() != h.grid_bytes)
    corrupt(where, "the NanoVDB grid header is not a float grid of the recorded size");
  const int64_t num_tiles = static_cast<int64_t>(layout_.tiles.size());
  const uint64_t num_leaves = static_cast<uint64_t>(num_tiles + 7) / 8;
  const auto* tree_data = reinterpret_cast<const nanovdb::TreeData<3>*>(grid_begin + sizeof(nanovdb::GridData));
  // Offsets are checked as integers against the grid's size before any leaf is touched.
  const uint64_t tree_offset = sizeof(nanovdb::GridData), leaf_offset = tree_data->mNodeOffset[0];
  if (tree_data->mNodeCount[0] != num_leaves)
    corrupt(where, "the grid has " + std::to_string(tree_data->mNodeCount[0]) + " leaves for " +
                       std::to_string(num_tiles) + " tiles");
  if (leaf_offset == 0 || leaf_offset % kGridAlignment != 0 || leaf_offset > h.grid_bytes ||
      num_leaves > h.grid_bytes / sizeof(LeafT) || tree_offset + leaf_offset + num_leaves * sizeof(LeafT) > h.grid_bytes)
    corrupt(where, "the grid's leaf nodes lie outside it");
  leaf_values_.assign(num_leaves, nullptr);
  const auto* leaf = reinterpret_cast<const LeafT*>(grid_begin + tree_offset + leaf_offset);
  for (uint64_t n = 0; n < num_leaves; ++n, ++leaf) {
    const nanovdb::Coord o = leaf->origin();
    if (o[0] < 0 || o[1] < 0 || o[2] < 0 || (o[1] / 8) >= 16 || (o[2] / 8) >= 16) corrupt(where, "a leaf lies outside the tile coordinates");
    const int64_t L = leaf_index(o);
    if (L >= static_cast<int64_t>(num_leaves) || leaf_values_[L] != nullptr) corrupt(where, "a leaf lies outside the tile coordinates");
    leaf_values_[L] = const_cast<float*>(leaf->data()->mValues);
  }
}

std::shared_ptr<AdapterImage> AdapterImage::open(const std::string& path) {
  auto map = MappedFile::open(path, ErrorKind::CorruptFile);
  const uint8_t* d = map->data();
  const size_t size = map->size();
  if (size < sizeof(FileHeader)) corrupt(path, "it is shorter than the header (" + std::to_string(size) + " bytes)");
  FileHeader h;
  std::memcpy(&h, d, sizeof(h));
  if (std::memcmp(h.magic, kMagic, sizeof(kMagic)) != 0) corrupt(path, "it is not a Hyprstream adapter file (bad magic)");
  if (h.format_version != kFormatVersion)
    throw Error(ErrorKind::Unsupported, "adapter file '" + path + "' has format version " +
                                            std::to_string(h.format_version) + "; this build reads version " +
                                            std::to_string(kFormatVersion));
  if (h.num_tensors > (1u << 24) || h.num_tiles > (1ull << 32) ||
      h.grid_offset != align_up(pattern_end(h.num_tensors, h.num_tiles), kGridAlignment) || h.grid_bytes > (1ull << 40))
    corrupt(path, "header sizes are inconsistent");
  if (h.grid_offset > size || h.stored_bytes != size - h.grid_offset)
    corrupt(path, "it is " + std::to_string(size) + " bytes but its header describes a different size (truncated "
                  "or extended)");
  if (h.grid_bytes < kMinGridBytes || h.grid_bytes > max_grid_bytes(h.num_tiles))
    corrupt(path, "the recorded grid size " + std::to_string(h.grid_bytes) + " is impossible for " +
                      std::to_string(h.num_tiles) + " tiles");
  if (file_crc(d, size) != h.crc32) corrupt(path, "CRC-32 mismatch (the file was altered or damaged)");
  const auto codec = static_cast<AdapterCodec>(h.codec);
  if (h.codec > 2) corrupt(path, "unknown codec " + std::to_string(h.codec));
  if (!adapter_codec_available(codec))
    throw Error(ErrorKind::Unsupported, std::string("adapter file '") + path + "' is compressed with " +
                                            adapter_codec_name(codec) + ", which this build cannot read");

  std::shared_ptr<AdapterImage> img(new AdapterImage());
  img->layout_ = parse_pattern(h, d + sizeof(FileHeader), path);
  if (codec == AdapterCodec::None) {
    if (h.stored_bytes != h.grid_bytes) corrupt(path, "stored and grid sizes differ without compression");
    img->map_ = map;
    img->data_ = d;
    img->size_ = size;
  } else {
    img->size_ = h.grid_offset + h.grid_bytes;
    img->owned_ = alloc_aligned(img->size_);
    img->data_ = img->owned_;
    std::memcpy(img->owned_, d, h.grid_offset);
    size_t out = 0;
#ifdef HYPRSTREAM_HAVE_ZLIB
    if (codec == AdapterCodec::Zip) {
      uLongf n = static_cast<uLongf>(h.grid_bytes);
      if (uncompress(img->owned_ + h.grid_offset, &n, d + h.grid_offset, static_cast<uLong>(h.stored_bytes)) == Z_OK)
        out = n;
    }
#endif
#ifdef HYPRSTREAM_HAVE_BLOSC
    if (codec == AdapterCodec::Blosc) {
      // blosc trusts its own header for the input length: check it against the stored size first.
      size_t nbytes = 0, cbytes = 0, blocksize = 0;
      if (h.stored_bytes >= BLOSC_MIN_HEADER_LENGTH) blosc_cbuffer_sizes(d + h.grid_offset, &nbytes, &cbytes, &blocksize);
      if (cbytes == h.stored_bytes && nbytes == h.grid_bytes) {
        const int n = blosc_decompress_ctx(d + h.grid_offset, img->owned_ + h.grid_offset, h.grid_bytes, 1);
        if (n > 0) out = static_cast<size_t>(n);
      }
    }
#endif
    if (out != h.grid_bytes) corrupt(path, std::string(adapter_codec_name(codec)) + " data does not inflate");
    auto* mh = reinterpret_cast<FileHeader*>(img->owned_);
    mh->codec = static_cast<uint32_t>(AdapterCodec::None);
    mh->stored_bytes = h.grid_bytes;
    mh->crc32 = file_crc(img->owned_, img->size_);
  }
  img->index_leaves(path);
  return img;
}

std::shared_ptr<AdapterImage> AdapterImage::clone() const {
  std::shared_ptr<AdapterImage> img(new AdapterImage());
  img->layout_ = layout_;
  img->size_ = size_;
  img->owned_ = alloc_aligned(size_);
  img->data_ = img->owned_;
  std::memcpy(img->owned_, data_, size_);
  img->index_leaves("a copied adapter");
  return img;
}

std::vector<float> AdapterImage::values() const {
  std::vector<float> out(layout_.num_values());
  const int64_t num_tiles = static_cast<int64_t>(layout_.tiles.size());
  for (int64_t L = 0; L < static_cast<int64_t>(leaf_values_.size()); ++L) {
    const int64_t tiles = std::min<int64_t>(8, num_tiles - 8 * L);
    std::memcpy(out.data() + 8 * L * kTileValues, leaf_values_[L], tiles * kTileValues * sizeof(float));
  }
  return out;
}

void AdapterImage::set_values(const float* values) {
  if (!owned_) throw Error(ErrorKind::Internal, "set_values on a read-only mapped adapter; clone() it first");
  const int64_t num_tiles = static_cast<int64_t>(layout_.tiles.size());
  for (int64_t L = 0; L < static_cast<int64_t>(leaf_values_.size()); ++L) {
    const int64_t tiles = std::min<int64_t>(8, num_tiles - 8 * L);
    std::memcpy(leaf_values_[L], values + 8 * L * kTileValues, tiles * kTileValues * sizeof(float));
  }
  reinterpret_cast<FileHeader*>(owned_)->crc32 = file_crc(owned_, size_);
}

void AdapterImage::write(const std::string& path, AdapterCodec codec, Sync sync) const {
  if (codec == AdapterCodec::None) {
    write_file_atomically(path, {ByteSpan{data_, size_}}, sync);
    return;
  }
  if (!adapter_codec_available(codec))
    throw Error(ErrorKind::Unsupported, std::string("codec ") + adapter_codec_name(codec) + " is not available");
  FileHeader h;
  std::memcpy(&h, data_, sizeof(h));
  const uint8_t* grid = data_ + h.grid_offset;
  std::vector<uint8_t> packed;
#ifdef HYPRSTREAM_HAVE_ZLIB
  if (codec == AdapterCodec::Zip) {
    uLongf n = compressBound(static_cast<uLong>(h.grid_bytes));
    packed.resize(n);
    if (compress2(packed.data(), &n, grid, static_cast<uLong>(h.grid_bytes), Z_BEST_SPEED) != Z_OK)
      throw Error(ErrorKind::Internal, "zlib failed to compress an adapter");
    packed.resize(n);
  }
#endif
#ifdef HYPRSTREAM_HAVE_BLOSC
  if (codec == AdapterCodec::Blosc) {
    packed.resize(h.grid_bytes + BLOSC_MAX_OVERHEAD);
    // Shuffling float bytes groups exponents together, which is what makes weights compress at all.
    const int n = blosc_compress_ctx(5, BLOSC_SHUFFLE, sizeof(float), h.grid_bytes, grid, packed.data(), packed.size(),
                                     BLOSC_LZ4_COMPNAME, 0, 1);
    if (n <= 0) throw Error(ErrorKind::Internal, "blosc failed to compress an adapter");
    packed.resize(static_cast<size_t>(n));
  }
#endif
  std::vector<uint8_t> head(data_, data_ + h.grid_offset);
  auto* fh = reinterpret_cast<FileHeader*>(head.data());
  fh->codec = static_cast<uint32_t>(codec);
  fh->stored_bytes = packed.size();
  fh->crc32 = 0;
  fh->crc32 = crc32_update(crc32_update(0, head.data(), head.size()), packed.data(), packed.size());
  write_file_atomically(path, {ByteSpan{head.data(), head.size()}, ByteSpan{packed.data(), packed.size()}}, sync);
}

}  // namespace hs
