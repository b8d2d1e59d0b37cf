#pragma once
// The sparsity pattern of an adapter: which 8x8 tiles of each A and B matrix hold values. Torch-free.
//
// A tile is the unit of sparsity because a NanoVDB leaf holds 8x8x8 values and costs its full size once any
// of them is active: eight whole tiles fill one leaf exactly (see storage/adapter_image.h for the
// coordinates). Active tiles are spread evenly over the rank axis (8 rank components per tile), so that each
// group of rank components has entries in both A and B and the product B·A can be non-zero.
#include <cstdint>
#include <functional>
#include <vector>

#include "adapters/lora_config.h"

namespace hs {

constexpr int64_t kTileSize = 8;
constexpr int64_t kTileValues = kTileSize * kTileSize;

struct LoraTensorInfo {
  int32_t layer = 0;
  LoraModule module = LoraModule::Q;
  bool is_b = false;          // A is rank x in, B is out x rank (PEFT's lora_A / lora_B weights)
  int64_t rows = 0, cols = 0;
  int64_t first_tile = 0;     // index of this tensor's first tile in TileLayout::tiles
  int64_t num_tiles = 0;
};

struct TilePos {
  int32_t row = 0, col = 0;  // entries [8 row, 8 row + 8) x [8 col, 8 col + 8)
};

// Values of an adapter are stored tile after tile (64 floats each, row-major inside the tile), in the order
// of `tiles`: every tensor's tiles sorted by (row, col), tensors by layer, then module, then A before B.
struct TileLayout {
  int64_t rank = 0;
  std::vector<LoraTensorInfo> tensors;
  std::vector<TilePos> tiles;

  int64_t num_values() const { return static_cast<int64_t>(tiles.size()) * kTileValues; }
  int64_t dense_values() const;  // entries of the dense A and B matrices
  // Index into `tensors`, or -1 when the adapter does not target that module.
  // `near`: where to look first, a few tensors from it on (callers going through tensors in the layout's order
  // pass the one after their last: a gradient submission's hundreds of parts usually come in that order).
  int64_t find(int64_t layer, LoraModule m, bool is_b, int64_t near = 0) const;
};

bool operator==(const TileLayout& a, const TileLayout& b);

// The adapter's tensors on `model` in storage order, with no tiles chosen yet.
std::vector<LoraTensorInfo> lora_tensors(const ModelConfig& model, const AdapterConfig& config);

// Tiles a tensor keeps at `sparsity`: the nearest count to (1 - sparsity) of its tiles, at least one per
// group of 8 rank components; every tile at sparsity 0.
int64_t active_tile_count(const LoraTensorInfo& tensor, int64_t rank, double sparsity);

// A pattern drawn at random from config.seed.
TileLayout random_tile_layout(const ModelConfig& model, const AdapterConfig& config);

// A pattern keeping the highest-scoring tiles of every tensor, e.g. scored by the norm of existing values.
using TileScore = std::function<double(size_t tensor, int64_t tile_row, int64_t tile_col)>;
TileLayout top_tile_layout(const ModelConfig& model, const AdapterConfig& config, const TileScore& score);

// LoRA's initialisation on the active entries: A uniform in +-1/sqrt(in) (PEFT's Kaiming bound), B zero.
std::vector<float> initial_lora_values(const TileLayout& layout, uint64_t seed);

// Copies tensor t's tiles into its dense row-major rows x cols matrix (entries outside the pattern untouched);
// tile_values(g) gives the 64 values of global tile g.
void scatter_tiles(const TileLayout& layout, const LoraTensorInfo& t,
                   const std::function<const float*(int64_t g)>& tile_values, float* dense);

// The reverse: tensor t's tiles read from its dense matrix into values (laid out as TileLayout describes).
void gather_tiles(const TileLayout& layout, const LoraTensorInfo& t, const float* dense, float* values);

// Throws CorruptFile unless tiles lie inside their tensors, are sorted and unique, and counts add up.
void validate_layout(const TileLayout& layout);

}  // namespace hs
