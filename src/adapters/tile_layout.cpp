#include "adapters/tile_layout.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <tuple>

#include "common/error.h"

namespace hs {

int64_t TileLayout::dense_values() const {
  int64_t n = 0;
  for (const auto& t : tensors) n += t.rows * t.cols;
  return n;
}

int64_t TileLayout::find(int64_t layer, LoraModule m, bool is_b, int64_t near) const {
  const size_t first = static_cast<size_t>(std::max<int64_t>(near, 0));
  for (size_t i = first; i < std::min(first + 4, tensors.size()); ++i)
    if (tensors[i].layer == layer && tensors[i].module == m && tensors[i].is_b == is_b) return static_cast<int64_t>(i);
  // Layouts keep lora_tensors' order, (layer, module, A before B): halving finds a tensor in it (written out,
  // since std::lower_bound needs a range known to be ordered), and a scan in any other order.
  auto key = [](int64_t l, LoraModule mod, bool b) { return std::make_tuple(l, static_cast<int>(mod), b); };
  const auto want = key(layer, m, is_b);
  size_t lo = 0, hi = tensors.size();
  while (lo < hi) {
    const size_t mid = lo + (hi - lo) / 2;
    const auto k = key(tensors[mid].layer, tensors[mid].module, tensors[mid].is_b);
    if (k == want) return static_cast<int64_t>(mid);
    (k < want ? lo = mid + 1 : hi = mid);
  }
  for (size_t i = 0; i < tensors.size(); ++i)
    if (tensors[i].layer == layer && tensors[i].module == m && tensors[i].is_b == is_b) return static_cast<int64_t>(i);
  return -1;
}

bool operator==(const TileLayout& a, const TileLayout& b) {
  auto key = [](const LoraTensorInfo& t) {
    return std::make_tuple(t.layer, t.module, t.is_b, t.rows, t.cols, t.first_tile, t.num_tiles);
  };
  if (a.rank != b.rank || a.tensors.size() != b.tensors.size() || a.tiles.size() != b.tiles.size()) return false;
  for (size_t i = 0; i < a.tensors.size(); ++i)
    if (key(a.tensors[i]) != key(b.tensors[i])) return false;
  for (size_t i = 0; i < a.tiles.size(); ++i)
    if (a.tiles[i].row != b.tiles[i].row || a.tiles[i].col != b.tiles[i].col) return false;
  return true;
}

std::vector<LoraTensorInfo> lora_tensors(const ModelConfig& model, const AdapterConfig& config) {
  validate_adapter_config(config);
  std::vector<LoraTensorInfo> out;
  for (int64_t l = 0; l < model.num_layers; ++l)
    for (LoraModule m : kAllLoraModules) {
      if (!config.targets_module(m)) continue;
      const ModuleShape s = lora_module_shape(model, m);
      if (s.in % kTileSize || s.out % kTileSize)
        throw Error(ErrorKind::Unsupported, std::string("the model's ") + lora_module_name(m) + " is " +
                                                std::to_string(s.out) + "x" + std::to_string(s.in) +
                                                "; sparse adapters need dimensions that are multiples of 8");
      out.push_back({static_cast<int32_t>(l), m, false, config.rank, s.in, 0, 0});
      out.push_back({static_cast<int32_t>(l), m, true, s.out, config.rank, 0, 0});
    }
  return out;
}

namespace {

// Tile rows/cols of a tensor, split into groups along the rank axis (A's rows, B's columns).
struct RankSplit {
  int64_t groups, per_group;  // rank groups, tiles per group along the other axis
};

RankSplit rank_split(const LoraTensorInfo& t) {
  const int64_t tr = t.rows / kTileSize, tc = t.cols / kTileSize;
  return t.is_b ? RankSplit{tc, tr} : RankSplit{tr, tc};
}

TilePos tile_at(const LoraTensorInfo& t, int64_t group, int64_t index) {
  return t.is_b ? TilePos{static_cast<int32_t>(index), static_cast<int32_t>(group)}
                : TilePos{static_cast<int32_t>(group), static_cast<int32_t>(index)};
}

// Fills layout.tiles: for each tensor, `pick(tensor, group, count)` returns `count` tile indices of a group.
template <typename Pick>
TileLayout build_layout(const ModelConfig& model, const AdapterConfig& config, Pick pick) {
  TileLayout layout;
  layout.rank = config.rank;
  layout.tensors = lora_tensors(model, config);
  for (size_t ti = 0; ti < layout.tensors.size(); ++ti) {
    LoraTensorInfo& t = layout.tensors[ti];
    const RankSplit split = rank_split(t);
    const int64_t total = active_tile_count(t, config.rank, config.sparsity);
    t.first_tile = static_cast<int64_t>(layout.tiles.size());
    for (int64_t g = 0; g < split.groups; ++g) {
      const int64_t count = total / split.groups + (g < total % split.groups ? 1 : 0);
      for (int64_t index : pick(ti, t, g, count)) layout.tiles.push_back(tile_at(t, g, index));
    }
    t.num_tiles = static_cast<int64_t>(layout.tiles.size()) - t.first_tile;
    std::sort(layout.tiles.begin() + t.first_tile, layout.tiles.end(),
              [](const TilePos& a, const TilePos& b) { return a.row != b.row ? a.row < b.row : a.col < b.col; });
  }
  return layout;
}

}  // namespace

int64_t active_tile_count(const LoraTensorInfo& t, int64_t rank, double sparsity) {
  const RankSplit split = rank_split(t);
  const int64_t all = split.groups * split.per_group;
  const auto wanted = static_cast<int64_t>(std::llround((1.0 - sparsity) * static_cast<double>(all)));
  return std::clamp<int64_t>(wanted, split.groups, all);
}

TileLayout random_tile_layout(const ModelConfig& model, const AdapterConfig& config) {
  std::mt19937_64 rng(config.seed);
  return build_layout(model, config, [&](size_t, const LoraTensorInfo& t, int64_t, int64_t count) {
    // A partial Fisher-Yates shuffle: written out so the pattern for a seed does not depend on the
    // standard library's distributions.
    std::vector<int64_t> idx(rank_split(t).per_group);
    std::iota(idx.begin(), idx.end(), 0);
    for (int64_t i = 0; i < count; ++i) std::swap(idx[i], idx[i + rng() % (idx.size() - i)]);
    idx.resize(count);
    return idx;
  });
}

TileLayout top_tile_layout(const ModelConfig& model, const AdapterConfig& config, const TileScore& score) {
  return build_layout(model, config, [&](size_t ti, const LoraTensorInfo& t, int64_t g, int64_t count) {
    std::vector<std::pair<double, int64_t>> scored;
    for (int64_t i = 0; i < rank_split(t).per_group; ++i) {
      const TilePos p = tile_at(t, g, i);
      scored.push_back({-score(ti, p.row, p.col), i});  // ties go to the lower index
    }
    std::partial_sort(scored.begin(), scored.begin() + count, scored.end());
    std::vector<int64_t> idx;
    for (int64_t i = 0; i < count; ++i) idx.push_back(scored[i].second);
    return idx;
  });
}

std::vector<float> initial_lora_values(const TileLayout& layout, uint64_t seed) {
  std::vector<float> values(layout.num_values(), 0.0f);
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ULL);
  for (const auto& t : layout.tensors) {
    if (t.is_b) continue;
    const double bound = 1.0 / std::sqrt(static_cast<double>(t.cols));
    float* v = values.data() + t.first_tile * kTileValues;
    for (int64_t i = 0; i < t.num_tiles * kTileValues; ++i)
      v[i] = static_cast<float>(bound * (2.0 * std::ldexp(static_cast<double>(rng() >> 11), -53) - 1.0));
  }
  return values;
}

void scatter_tiles(const TileLayout& layout, const LoraTensorInfo& t,
                   const std::function<const float*(int64_t g)>& tile_values, float* dense) {
  for (int64_t k = 0; k < t.num_tiles; ++k) {
    const TilePos& p = layout.tiles[t.first_tile + k];
    const float* src = tile_values(t.first_tile + k);
    for (int64_t i = 0; i < kTileSize; ++i)
      std::copy(src + i * kTileSize, src + (i + 1) * kTileSize, dense + (p.row * kTileSize + i) * t.cols + p.col * kTileSize);
  }
}

void gather_tiles(const TileLayout& layout, const LoraTensorInfo& t, const float* dense, float* values) {
  for (int64_t k = 0; k < t.num_tiles; ++k) {
    const TilePos& p = layout.tiles[t.first_tile + k];
    float* dst = values + (t.first_tile + k) * kTileValues;
    for (int64_t i = 0; i < kTileSize; ++i) {
      const float* row = dense + (p.row * kTileSize + i) * t.cols + p.col * kTileSize;
      std::copy(row, row + kTileSize, dst + i * kTileSize);
    }
  }
}

void validate_layout(const TileLayout& layout) {
  auto bad = [](const std::string& why) { throw Error(ErrorKind::CorruptFile, "adapter pattern is invalid: " + why); };
  if (layout.rank <= 0 || layout.rank % kTileSize) bad("rank " + std::to_string(layout.rank));
  int64_t next = 0;
  for (const auto& t : layout.tensors) {
    if (t.rows <= 0 || t.cols <= 0 || t.rows > (1 << 24) || t.cols > (1 << 24) || t.rows % kTileSize ||
        t.cols % kTileSize)
      bad("tensor shape");
    if ((t.is_b ? t.cols : t.rows) != layout.rank) bad("tensor rank differs from the adapter rank");
    if (t.first_tile != next || t.num_tiles < 0 || t.num_tiles > static_cast<int64_t>(layout.tiles.size()) - next)
      bad("tile ranges");
    next += t.num_tiles;
    for (int64_t i = t.first_tile; i < next; ++i) {
      const TilePos& p = layout.tiles[i];
      if (p.row < 0 || p.col < 0 || p.row >= t.rows / kTileSize || p.col >= t.cols / kTileSize) bad("tile outside tensor");
      if (i > t.first_tile) {
        const TilePos& q = layout.tiles[i - 1];
        if (q.row > p.row || (q.row == p.row && q.col >= p.col)) bad("tiles not sorted");
      }
    }
  }
  if (next != static_cast<int64_t>(layout.tiles.size())) bad("tile count");
}

}  // namespace hs
