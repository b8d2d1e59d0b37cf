// Sparse adapters: pattern, NanoVDB storage (round trip, damage, size), registry (versions, base model,
// caches) and publishing under concurrent generation.
#include <gtest/gtest.h>
#include <nanovdb/NanoVDB.h>
#include <sys/stat.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <random>
#include <thread>
#include <tuple>

#include "adapters/lora_weights.h"
#include "adapters/registry.h"
#include "adapters/scope.h"
#include "adapters/scope_build.h"
#include "adapters/scope_index.h"
#include "adapters/tile_layout.h"
#include "common/error.h"
#include "storage/crc32.h"
#include "common/fs_util.h"
#include "model/config.h"
#include "model/load.h"
#include "model/model.h"
#include "serving/generate.h"
#include "storage/adapter_image.h"
#include "storage/atomic_file.h"
#include "test_support.h"

namespace hs {
namespace {

ModelConfig qwen3_1_7b() { return qwen3_1_7b_config(); }

std::vector<float> random_values(const TileLayout& layout, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.0f, 0.1f);
  std::vector<float> v(layout.num_values());
  for (auto& x : v) x = n(rng);
  return v;
}


// Files written with one CRC implementation (ISA-L, zlib or the table, whichever the build found) are read by
// builds with another: all must agree with CRC-32/IEEE, whole or in pieces.
TEST(Crc32, MatchesTheIeeeCheckValueWholeAndInPieces) {
  EXPECT_EQ(hs::crc32_update(0, "123456789", 9), 0xCBF43926u);
  EXPECT_EQ(hs::crc32_update(hs::crc32_update(0, "12345", 5), "6789", 4), 0xCBF43926u);
  std::vector<uint8_t> bytes(100'003);
  std::mt19937 rng(7);
  for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng());
  uint32_t bitwise = ~0u;  // the definition, a bit at a time
  for (uint8_t b : bytes) {
    bitwise ^= b;
    for (int k = 0; k < 8; ++k) bitwise = (bitwise >> 1) ^ ((bitwise & 1) ? 0xEDB88320u : 0);
  }
  bitwise = ~bitwise;
  EXPECT_EQ(hs::crc32_update(0, bytes.data(), bytes.size()), bitwise);
  EXPECT_EQ(hs::crc32_update(hs::crc32_update(0, bytes.data(), 777), bytes.data() + 777, bytes.size() - 777), bitwise);
}

TEST(TileLayout, RandomPatternIsDeterministicBalancedAndSparse) {
  AdapterConfig cfg;
  cfg.seed = 5;
  TileLayout a = random_tile_layout(qwen3_1_7b(), cfg), b = random_tile_layout(qwen3_1_7b(), cfg);
  EXPECT_TRUE(a == b);
  cfg.seed = 6;
  EXPECT_FALSE(a == random_tile_layout(qwen3_1_7b(), cfg));
  validate_layout(a);
  EXPECT_EQ(a.tensors.size(), 28u * 7 * 2);
  const double density = static_cast<double>(a.num_values()) / a.dense_values();
  EXPECT_GT(density, 0.009);
  EXPECT_LT(density, 0.012);
  // Both groups of 8 rank components have tiles in every A and every B.
  for (const auto& t : a.tensors) {
    int groups[2] = {0, 0};
    for (int64_t k = 0; k < t.num_tiles; ++k) {
      const TilePos& p = a.tiles[t.first_tile + k];
      groups[t.is_b ? p.col : p.row]++;
    }
    EXPECT_GT(groups[0], 0);
    EXPECT_GT(groups[1], 0);
    EXPECT_LE(std::abs(groups[0] - groups[1]), 1);
  }
  cfg.sparsity = 0;
  TileLayout dense = random_tile_layout(qwen3_1_7b(), cfg);
  EXPECT_EQ(dense.num_values(), dense.dense_values());
}

// find() searches lora_tensors' order by halves; a layout in another order (a file written by another tool)
// is still searched whole, and a module the adapter leaves out is absent either way.
TEST(TileLayout, FindLocatesEveryTensorInAnyOrder) {
  AdapterConfig c;
  c.targets = {LoraModule::Q, LoraModule::V, LoraModule::Down};
  TileLayout layout = random_tile_layout(tiny_config(), c);
  TileLayout shuffled = layout;
  std::shuffle(shuffled.tensors.begin(), shuffled.tensors.end(), std::mt19937(7));
  for (const TileLayout* l : {&layout, &shuffled}) {
    for (size_t i = 0; i < l->tensors.size(); ++i) {
      const LoraTensorInfo& t = l->tensors[i];
      EXPECT_EQ(l->find(t.layer, t.module, t.is_b), static_cast<int64_t>(i));
    }
    EXPECT_EQ(l->find(0, LoraModule::K, false), -1);
    EXPECT_EQ(l->find(tiny_config().num_layers, LoraModule::Q, false), -1);
  }
}

TEST(AdapterImage, WriteThenReadIsBitIdenticalAndMappedInPlace) {
  AdapterConfig cfg;
  cfg.sparsity = 0.9;
  TileLayout layout = random_tile_layout(tiny_config(), cfg);
  std::vector<float> values = random_values(layout, 1);
  values[3] = 0.0f;  // an active entry may hold zero
  values[7] = -0.0f;
  auto img = AdapterImage::build(layout, values.data());
  const TempDir tmp("roundtrip");
  const std::string& dir = tmp.path;
  for (AdapterCodec codec : {AdapterCodec::None, AdapterCodec::Zip, AdapterCodec::Blosc}) {
    // scripts/bootstrap installs zlib and blosc: a build without them must fail here, not skip.
    ASSERT_TRUE(adapter_codec_available(codec)) << adapter_codec_name(codec) << " was not found at configure time";
    const std::string path = dir + "/a_" + adapter_codec_name(codec) + ".hsl";
    img->write(path, codec);
    auto back = AdapterImage::open(path);
    EXPECT_TRUE(back->layout() == layout);
    std::vector<float> got = back->values();
    ASSERT_EQ(got.size(), values.size());
    EXPECT_EQ(std::memcmp(got.data(), values.data(), values.size() * sizeof(float)), 0);
    EXPECT_EQ(back->is_mapped(), codec == AdapterCodec::None);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(back->tile(0)) % 32, 0u);
    EXPECT_EQ(back->crc32(), img->crc32());
  }
  // In-place update keeps the tree and changes exactly the values.
  auto copy = AdapterImage::open(dir + "/a_none.hsl")->clone();
  std::vector<float> next = random_values(layout, 2);
  copy->set_values(next.data());
  copy->write(dir + "/b.hsl");
  std::vector<float> got = AdapterImage::open(dir + "/b.hsl")->values();
  EXPECT_EQ(std::memcmp(got.data(), next.data(), next.size() * sizeof(float)), 0);
  EXPECT_EQ(kind_of([&] { AdapterImage::open(dir + "/a_none.hsl")->set_values(next.data()); }), ErrorKind::Internal);
}

TEST(AdapterImage, DamagedFilesAreRefused) {
  AdapterConfig cfg;
  TileLayout layout = random_tile_layout(tiny_config(), cfg);
  std::vector<float> values = random_values(layout, 3);
  const TempDir tmp("damage");
  const std::string& dir = tmp.path;
  const std::string path = dir + "/a.hsl";
  AdapterImage::build(layout, values.data())->write(path);
  std::ifstream in(path, std::ios::binary);
  const std::string pristine((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto write_bytes = [&](const std::string& bytes) { std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes; };
  for (size_t at : {size_t{0}, size_t{20}, size_t{80}, pristine.size() / 2, pristine.size() - 1}) {
    std::string bad = pristine;
    bad[at] ^= 0x01;
    write_bytes(bad);
    EXPECT_EQ(kind_of([&] { AdapterImage::open(path); }), ErrorKind::CorruptFile) << "flipped byte " << at;
  }
  for (size_t keep : {size_t{10}, size_t{72}, pristine.size() - 4}) {
    write_bytes(pristine.substr(0, keep));
    EXPECT_EQ(kind_of([&] { AdapterImage::open(path); }), ErrorKind::CorruptFile) << "truncated to " << keep;
  }
  write_bytes(pristine);
  EXPECT_NO_THROW(AdapterImage::open(path));
  EXPECT_EQ(kind_of([&] { AdapterImage::open(dir + "/missing.hsl"); }), ErrorKind::NotFound);
}

// CRC-32 (IEEE) as the file format defines it, with the header's CRC field (bytes 64..67) read as zero.
uint32_t reference_crc(std::string bytes) {
  std::memset(&bytes[64], 0, 4);
  uint32_t c = ~0u;
  for (unsigned char b : bytes) {
    c ^= b;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ ((c & 1) ? 0xEDB88320u : 0);
  }
  return ~c;
}

TEST(AdapterImage, CraftedHeadersWithValidCrcAreRefused) {
  AdapterConfig cfg;
  TileLayout layout = random_tile_layout(tiny_config(), cfg);
  std::vector<float> values = random_values(layout, 5);
  const TempDir tmp("crafted");
  const std::string path = tmp.path + "/a.hsl";
  AdapterImage::build(layout, values.data())->write(path);
  std::ifstream in(path, std::ios::binary);
  const std::string pristine((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  uint32_t crc;
  std::memcpy(&crc, &pristine[64], 4);
  ASSERT_EQ(crc, reference_crc(pristine));  // the documented checksum, computed independently
  // Header fields at byte offsets: 16 rank, 24 tensors, 32 tiles, 40 grid offset, 48 grid bytes, 56 stored bytes.
  auto with_fields = [&](const std::vector<std::pair<size_t, uint64_t>>& fields) {
    std::string bad = pristine;
    for (const auto& [offset, value] : fields) std::memcpy(&bad[offset], &value, 8);
    const uint32_t c = reference_crc(bad);
    std::memcpy(&bad[64], &c, 4);
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bad;
    return kind_of([&] { AdapterImage::open(path); });
  };
  uint64_t tensors;
  std::memcpy(&tensors, &pristine[24], 8);
  // A pattern claimed far past the end of the file, with a stored size that wraps the sum back to the file size.
  const uint64_t tiles = uint64_t{1} << 20, offset = (72 + tensors * 64 + tiles * 8 + 31) / 32 * 32;
  EXPECT_EQ(with_fields({{32, tiles}, {40, offset}, {56, pristine.size() - offset}}), ErrorKind::CorruptFile);
  EXPECT_EQ(with_fields({{48, 16}}), ErrorKind::CorruptFile);                      // grid smaller than its header
  EXPECT_EQ(with_fields({{48, uint64_t{1} << 39}}), ErrorKind::CorruptFile);       // absurd grid size
  EXPECT_EQ(with_fields({{16, 12}}), ErrorKind::CorruptFile);                      // rank not a multiple of 8
  std::ofstream(path, std::ios::binary | std::ios::trunc) << pristine;
  EXPECT_NO_THROW(AdapterImage::open(path));
}

TEST(AdapterImage, Qwen3_1_7bAdapterIsAtLeast50xSmallerThanDense) {
  AdapterConfig cfg;  // rank 16, all seven targets, sparsity 0.99
  TileLayout layout = random_tile_layout(qwen3_1_7b(), cfg);
  std::vector<float> values = random_values(layout, 4);
  const TempDir tmp("size");
  const std::string path = tmp.path + "/qwen.hsl";
  auto img = AdapterImage::build(layout, values.data());
  img->write(path);
  const double dense_bytes = static_cast<double>(layout.dense_values()) * sizeof(float);
  const double file_bytes = static_cast<double>(std::filesystem::file_size(path));
  std::printf("qwen3-1.7b adapter: dense fp32 A+B %.0f bytes, file %.0f bytes, ratio %.1fx, active values %lld, "
              "resident image %zu bytes\n",
              dense_bytes, file_bytes, dense_bytes / file_bytes, static_cast<long long>(layout.num_values()),
              AdapterImage::open(path)->image_bytes());
  EXPECT_GE(dense_bytes / file_bytes, 50.0);
}

// A written file's grid, read with NanoVDB's own tree and accessor (not our reader), puts entry (i, j) of global
// tile g at the coordinates the README documents: leaf L = g / 8, slot s = g % 8, origin
// (8 (L / 256), 8 ((L / 16) mod 16), 8 (L mod 16)), voxel origin + (s, i, j); a tile's 64 values contiguous
// in its leaf, every leaf but the last full.
TEST(AdapterImage, GridFollowsTheDocumentedCoordinateLayout) {
  AdapterConfig cfg;  // the Qwen3-1.7B shape at sparsity 0.99 has over 256 leaves, so x = 8 (L / 256) varies
  const TileLayout layout = random_tile_layout(qwen3_1_7b(), cfg);
  const int64_t tiles = static_cast<int64_t>(layout.tiles.size());
  ASSERT_GT(tiles, 8 * 256 + 8);
  ASSERT_LT(layout.num_values(), int64_t{1} << 24);  // every index below is exact in float32
  // Global tile order: tensors by layer, module, A before B; each tensor's tiles by row, then column.
  for (size_t n = 1; n < layout.tensors.size(); ++n) {
    const auto& a = layout.tensors[n - 1];
    const auto& b = layout.tensors[n];
    EXPECT_LT(std::make_tuple(a.layer, a.module, a.is_b), std::make_tuple(b.layer, b.module, b.is_b));
    EXPECT_EQ(b.first_tile, a.first_tile + a.num_tiles);
    for (int64_t k = b.first_tile + 1; k < b.first_tile + b.num_tiles; ++k)
      EXPECT_LT(std::make_pair(layout.tiles[k - 1].row, layout.tiles[k - 1].col),
                std::make_pair(layout.tiles[k].row, layout.tiles[k].col));
  }
  // Entry (i, j) of tile g holds g * 64 + 8 i + j, so a value names the place it was written for.
  std::vector<float> values(layout.num_values());
  for (size_t v = 0; v < values.size(); ++v) values[v] = static_cast<float>(v);
  const TempDir tmp("coords");
  const std::string path = tmp.path + "/a.hsl";
  AdapterImage::build(layout, values.data())->write(path);
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  uint64_t grid_offset = 0, grid_bytes = 0;
  std::memcpy(&grid_offset, &bytes[40], 8);
  std::memcpy(&grid_bytes, &bytes[48], 8);
  ASSERT_EQ(grid_offset % 32, 0u);
  ASSERT_EQ(grid_offset + grid_bytes, bytes.size());
  std::unique_ptr<void, decltype(&std::free)> buffer(std::aligned_alloc(32, (grid_bytes + 31) / 32 * 32), &std::free);
  std::memcpy(buffer.get(), bytes.data() + grid_offset, grid_bytes);
  const auto* grid = static_cast<const nanovdb::NanoGrid<float>*>(buffer.get());
  ASSERT_TRUE(grid->isValid());
  using Leaf = nanovdb::NanoLeaf<float>;
  EXPECT_EQ(grid->activeVoxelCount(), static_cast<uint64_t>(tiles * kTileValues));
  EXPECT_EQ(grid->tree().nodeCount<Leaf>(), static_cast<uint32_t>((tiles + 7) / 8));
  auto acc = grid->getAccessor();
  const int64_t last = (tiles - 1) / 8;
  for (int64_t g = 0; g < tiles; ++g) {
    const int32_t L = static_cast<int32_t>(g / 8), s = static_cast<int32_t>(g % 8);
    const nanovdb::Coord origin(8 * (L / 256), 8 * ((L / 16) % 16), 8 * (L % 16));
    const Leaf* leaf = acc.probeLeaf(origin);
    ASSERT_NE(leaf, nullptr) << "tile " << g;
    ASSERT_EQ(leaf->origin(), origin) << "tile " << g;
    const int64_t tiles_in_leaf = L < last ? 8 : tiles - 8 * last;
    EXPECT_EQ(leaf->valueMask().countOn(), static_cast<uint32_t>(tiles_in_leaf * kTileValues)) << "leaf " << L;
    for (int32_t i = 0; i < 8; ++i)
      for (int32_t j = 0; j < 8; ++j) {
        const nanovdb::Coord ijk = origin + nanovdb::Coord(s, i, j);
        const float want = static_cast<float>(g * kTileValues + 8 * i + j);
        ASSERT_TRUE(acc.isActive(ijk)) << "tile " << g << " entry " << i << "," << j;
        ASSERT_EQ(acc.getValue(ijk), want) << "tile " << g << " entry " << i << "," << j;
        ASSERT_EQ(leaf->getValue(static_cast<uint32_t>(64 * s + 8 * i + j)), want);  // contiguous, row-major
      }
  }
  // Nothing beyond the last tile: the next slot (or the next leaf) holds no value.
  const int64_t L = tiles / 8, s = tiles % 8;
  const nanovdb::Coord next(static_cast<int32_t>(8 * (L / 256) + s), static_cast<int32_t>(8 * ((L / 16) % 16)),
                            static_cast<int32_t>(8 * (L % 16)));
  EXPECT_FALSE(acc.isActive(next));
}

class RegistryTest : public testing::Test {
 protected:
  void SetUp() override {
    model_ = make_random_model(tiny_config(), LoadOptions{"float32", "cpu", "none"}, 1);
    tmp_ = std::make_unique<TempDir>(testing::UnitTest::GetInstance()->current_test_info()->name());
    dir_ = tmp_->path;
  }
  std::unique_ptr<TempDir> tmp_;
  std::shared_ptr<Model> model_;
  std::string dir_;
};

TEST_F(RegistryTest, VersionsKeepRollbackAndRemove) {
  RegistryOptions opts{dir_};
  opts.keep_versions = 3;
  AdapterRegistry reg(opts, model_);
  AdapterConfig cfg;
  auto m = reg.create("law", cfg);
  EXPECT_EQ(m.current, 1u);
  auto v1 = reg.acquire("law");
  std::vector<float> values = v1->image->values();
  for (int i = 0; i < 4; ++i) {
    values[0] = static_cast<float>(i);
    auto v = reg.publish("law", values, 10 * (i + 1));
    EXPECT_EQ(v.version, static_cast<uint64_t>(i + 2));
    EXPECT_EQ(v.parent, static_cast<uint64_t>(i + 1));
    EXPECT_EQ(v.events, static_cast<uint64_t>(10 * (i + 1)));
  }
  m = reg.manifest("law");
  ASSERT_EQ(m.versions.size(), 3u);
  EXPECT_EQ(m.versions.front().version, 3u);
  EXPECT_EQ(reg.acquire("law")->image->values()[0], 3.0f);
  EXPECT_EQ(kind_of([&] { reg.rollback("law", 1); }), ErrorKind::NotFound);
  reg.rollback("law", 3);
  EXPECT_EQ(reg.acquire("law")->image->values()[0], 1.0f);
  // A publish after a rollback descends from the rolled-back version; the current one is never pruned.
  auto v6 = reg.publish("law", values);
  EXPECT_EQ(v6.version, 6u);
  EXPECT_EQ(v6.parent, 3u);
  // Another registry on the same folder (a restart) sees the same state.
  AdapterRegistry again(opts, model_);
  EXPECT_EQ(again.manifest("law").current, 6u);
  EXPECT_EQ(again.list().size(), 1u);
  again.remove("law");
  EXPECT_TRUE(again.list().empty());
  EXPECT_EQ(kind_of([&] { again.acquire("law"); }), ErrorKind::NotFound);
  for (const char* bad : {"", "../x", "a/b", ".hidden", "x y"})
    EXPECT_EQ(kind_of([&] { again.create(bad, cfg); }), ErrorKind::InvalidArgument) << bad;
}

TEST_F(RegistryTest, SeesVersionsPublishedByAnotherWriterAndRefusesBadManifests) {
  AdapterRegistry reader(RegistryOptions{dir_}, model_), writer(RegistryOptions{dir_}, model_);
  writer.create("shared", AdapterConfig{});
  EXPECT_EQ(reader.acquire("shared")->version.version, 1u);
  auto values = writer.acquire("shared")->image->values();
  writer.publish("shared", values);
  EXPECT_EQ(reader.acquire("shared")->version.version, 2u);
  writer.rollback("shared", 1);
  EXPECT_EQ(reader.acquire("shared")->version.version, 1u);
  const std::string path = dir_ + "/shared/manifest.json";
  std::ifstream in(path);
  const std::string good((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const auto& [from, to] : std::vector<std::pair<std::string, std::string>>{
           {"\"keep\": 5", "\"keep\": 0"}, {"v00000001.hsl", "../../etc/passwd"}, {"\"rank\": 16", "\"rank\": 12"}}) {
    std::string bad = good;
    ASSERT_NE(bad.find(from), std::string::npos) << from;
    bad.replace(bad.find(from), from.size(), to);
    std::ofstream(path + ".tmp") << bad;
    std::filesystem::rename(path + ".tmp", path);
    AdapterRegistry fresh(RegistryOptions{dir_}, model_);
    EXPECT_EQ(kind_of([&] { fresh.acquire("shared"); }), ErrorKind::CorruptFile) << to;
  }
}

TEST_F(RegistryTest, RefusesOtherBaseModelAndDamagedVersions) {
  AdapterRegistry reg(RegistryOptions{dir_}, model_);
  reg.create("x", AdapterConfig{});
  auto values = reg.acquire("x")->image->values();
  reg.publish("x", values);
  auto other = make_random_model(tiny_config(), LoadOptions{"float32", "cpu", "none"}, 2);
  AdapterRegistry foreign(RegistryOptions{dir_}, other);
  EXPECT_EQ(kind_of([&] { foreign.acquire("x"); }), ErrorKind::InvalidArgument);
  // Damage version 2 on disk: a fresh registry refuses it and still loads version 1.
  {
    std::fstream f(dir_ + "/x/v00000002.hsl", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);
    f.put('\x7f');
  }
  AdapterRegistry fresh(RegistryOptions{dir_}, model_);
  EXPECT_EQ(kind_of([&] { fresh.acquire("x"); }), ErrorKind::CorruptFile);
  EXPECT_EQ(fresh.acquire("x", 1)->version.version, 1u);
  EXPECT_EQ(kind_of([&] { fresh.rollback("x", 2); }), ErrorKind::CorruptFile);
  fresh.rollback("x", 1);
  EXPECT_EQ(fresh.acquire("x")->version.version, 1u);
}

TEST_F(RegistryTest, ResidentAndHotCachesStayWithinBudget) {
  RegistryOptions opts{dir_};
  AdapterRegistry setup(opts, model_);
  for (int i = 0; i < 5; ++i) setup.create("a" + std::to_string(i), AdapterConfig{});
  const size_t one = setup.acquire("a0")->image->image_bytes();
  opts.resident_bytes = 2 * one + one / 2;
  opts.hot_adapters = 2;
  AdapterRegistry reg(opts, model_);
  std::vector<std::shared_ptr<const AdapterSnapshot>> held;
  for (int i = 0; i < 5; ++i) {
    held.push_back(reg.acquire("a" + std::to_string(i)));
    reg.weights(*held.back());
  }
  RegistryStats s = reg.stats();
  EXPECT_EQ(s.resident_adapters, 2u);
  EXPECT_LE(s.resident_bytes, opts.resident_bytes);
  EXPECT_EQ(s.hot_adapters, 2u);
  EXPECT_EQ(s.disk_loads, 5u);
  reg.acquire("a4");  // most recent: still resident
  EXPECT_EQ(reg.stats().disk_loads, 5u);
  reg.acquire("a0");  // evicted: loaded again, while the snapshot held above stays valid
  EXPECT_EQ(reg.stats().disk_loads, 6u);
  EXPECT_EQ(held[0]->image->values(), reg.acquire("a0")->image->values());
}

// Publishing while other threads generate: every generation runs with exactly one published version.
TEST_F(RegistryTest, PublishingNeverTearsARunningGeneration) {
  RegistryOptions opts{dir_};
  opts.keep_versions = 1000;
  AdapterRegistry reg(opts, model_);
  AdapterConfig cfg;
  cfg.sparsity = 0.5;
  reg.create("live", cfg);
  const TileLayout layout = reg.acquire("live")->image->layout();
  Engine engine;
  engine.model = model_;
  GenerationRequest base;
  base.prompt = {1, 2, 3, 4, 5};
  base.sampling.temperature = 0;
  base.sampling.max_tokens = 6;
  base.sampling.ignore_eos = true;

  std::mutex mu;
  std::map<uint64_t, std::vector<float>> published;
  published[1] = reg.acquire("live")->image->values();
  std::atomic<bool> stop{false};
  std::thread publisher([&] {
    for (int i = 0; i < 25; ++i) {
      std::vector<float> v = random_values(layout, 100 + i);
      for (auto& x : v) x *= 20.0f;  // large enough that versions generate different tokens
      uint64_t version = reg.publish("live", v).version;
      std::lock_guard<std::mutex> lock(mu);
      published[version] = v;
    }
    stop = true;
  });
  struct Seen {
    uint64_t version;
    std::vector<int32_t> ids;
    bool weights_match;
  };
  std::vector<Seen> seen;
  std::vector<std::thread> workers;
  for (int w = 0; w < 3; ++w)
    workers.emplace_back([&] {
      while (!stop) {
        auto snap = reg.acquire("live");
        auto weights = reg.weights(*snap);
        GenerationRequest r = base;
        r.adapter = weights;
        auto ids = generate(engine, r).ids;
        // The dense tensors used must hold exactly the snapshot's values, tile by tile.
        const auto values = snap->image->values();
        std::vector<float> used(values.size());
        for (const auto& t : layout.tensors) {
          at::Tensor dense = (t.is_b ? weights->b : weights->a)[t.layer][static_cast<int>(t.module)].contiguous();
          gather_tiles(layout, t, dense.data_ptr<float>(), used.data());
        }
        const bool match = std::memcmp(used.data(), values.data(), values.size() * sizeof(float)) == 0;
        std::lock_guard<std::mutex> lock(mu);
        seen.push_back({snap->version.version, ids, match});
      }
    });
  publisher.join();
  for (auto& t : workers) t.join();
  ASSERT_GT(seen.size(), 3u);
  // Reference: each version's generation run alone, single-threaded, from the values that were published.
  std::map<uint64_t, std::vector<int32_t>> reference;
  std::set<std::vector<int32_t>> distinct;
  for (const auto& s : seen) {
    EXPECT_TRUE(s.weights_match) << "version " << s.version;
    ASSERT_TRUE(published.count(s.version));
    if (!reference.count(s.version)) {
      auto img = AdapterImage::build(layout, published[s.version].data());
      GenerationRequest r = base;
      r.adapter = make_lora_weights(*img, *model_, cfg.scale(), "live", s.version);
      reference[s.version] = generate(engine, r).ids;
    }
    EXPECT_EQ(s.ids, reference[s.version]) << "version " << s.version;
    distinct.insert(s.ids);
  }
  std::printf("concurrent publish: %zu generations over %zu versions, %zu distinct outputs\n", seen.size(),
              reference.size(), distinct.size());
  EXPECT_GT(reference.size(), 1u);
  // Every version seen generates its own tokens; otherwise a generation that used the wrong version could not be
  // told from one that used its own.
  EXPECT_EQ(distinct.size(), reference.size());
}


// The scope rule written out with loops: each taught prompt's similarity to a request is the lowest, over its
// compared tokens, of the token's best cosine with the request's keys.
std::vector<double> similarities_by_loops(const AdapterScope& s, const at::Tensor& request) {
  const at::Tensor q = request.contiguous();
  const auto qa = q.accessor<float, 2>();
  std::vector<double> out;
  for (const ScopeExample& e : s.examples) {
    double worst = 2;
    for (size_t t = e.first; t < e.rows.size(); ++t) {
      double match = -2;
      for (int64_t r = 0; r < q.size(0); ++r) {
        double dot = 0;
        for (int64_t i = 0; i < s.dim; ++i) dot += static_cast<double>(s.keys[e.rows[t] * s.dim + i]) * qa[r][i];
        match = std::max(match, dot);
      }
      worst = std::min(worst, match);
    }
    out.push_back(worst);
  }
  return out;
}

double max_abs_diff(const at::Tensor& a, const float* b) {
  return (a - at::from_blob(const_cast<float*>(b), a.sizes(), at::kFloat)).abs().max().item<double>();
}

TEST_F(RegistryTest, ScopeIsKeyedByPromptWithRadiiThatKeepGeneralPromptsOut) {
  const std::vector<std::vector<int32_t>> general_prompts = {{1, 2, 3, 40, 41, 42}, {1, 2, 3, 50, 51}, {1, 2, 7, 4}};
  AdapterScope general{2, model_->config.hidden_size, {}, {}};
  add_scope_prompts(general, *model_, general_prompts);
  AdapterScope taught{2, model_->config.hidden_size, {}, {}};
  add_scope_prompts(taught, *model_, {{1, 2, 3, 4, 5, 6}, {1, 2, 3, 4, 9, 8, 7}, {1, 2, 3, 4, 5, 6}}, &general);
  // The second prompt shares four tokens with the first, whose rows it reuses; the third was taught before.
  ASSERT_EQ(taught.examples.size(), 2u);
  EXPECT_EQ(taught.rows(), 6 + 3);
  // The opening every general prompt shares ({1, 2}) is keyed but not compared.
  EXPECT_EQ(taught.examples[0].first, 2u);
  EXPECT_EQ(taught.examples[1].first, 2u);
  // Keys are the hidden states of a prompt in its own context: a shared row is the second prompt's own state.
  const at::Tensor own = scope_keys(*model_, {1, 2, 3, 4, 9, 8, 7}, 2);
  const ScopeExample& second = taught.examples[1];
  EXPECT_LT(max_abs_diff(own[3], &taught.keys[second.rows[3] * taught.dim]), 1e-5);
  EXPECT_LT(max_abs_diff(own[6], &taught.keys[second.rows[6] * taught.dim]), 1e-5);
  EXPECT_NEAR(own.norm(2, {1}).sub(1).abs().max().item<double>(), 0, 1e-5);
  // Each radius is the highest similarity a general prompt has to that taught prompt.
  for (size_t e = 0; e < taught.examples.size(); ++e) {
    double highest = -1;
    for (const auto& g : general_prompts) highest = std::max(highest, similarities_by_loops(taught, scope_keys(*model_, g, 2))[e]);
    EXPECT_NEAR(taught.examples[e].radius, highest, 1e-5) << e;
  }

  const ScopeIndex index = make_scope_index(taught, *model_);
  const ScopeMatch self = scope_match(index, own);
  EXPECT_NEAR(self.similarity, 1, 1e-5);  // a taught prompt is as near as can be
  EXPECT_TRUE(self.inside());
  for (const auto& g : general_prompts) EXPECT_FALSE(scope_match(index, scope_keys(*model_, g, 2)).inside());
  for (const std::vector<int32_t>& p : {std::vector<int32_t>{1, 2, 3, 40, 41, 42}, {7, 60, 61, 2}, {5, 4, 3}}) {
    const at::Tensor sim = scope_similarities(index, scope_keys(*model_, p, 2));
    const std::vector<double> expected = similarities_by_loops(taught, scope_keys(*model_, p, 2));
    for (size_t e = 0; e < expected.size(); ++e) EXPECT_NEAR(sim[static_cast<int64_t>(e)].item<double>(), expected[e], 1e-5);
  }

  const std::string bytes = scope_to_bytes(taught);
  const AdapterScope back = scope_from_bytes(bytes, "memory");
  EXPECT_EQ(back.keys, taught.keys);
  EXPECT_EQ(back.examples[1].rows, second.rows);
  EXPECT_EQ(back.examples[1].radius, second.radius);
  for (size_t cut : {size_t{0}, size_t{12}, bytes.size() - 1}) {
    const std::string damaged = bytes.substr(0, cut);
    EXPECT_EQ(kind_of([&] { scope_from_bytes(damaged, "memory"); }), ErrorKind::CorruptFile) << cut;
  }
  std::string flipped = bytes;
  flipped[bytes.size() / 2] ^= 0x10;
  EXPECT_EQ(kind_of([&] { scope_from_bytes(flipped, "memory"); }), ErrorKind::CorruptFile);
}

// Issue 12: a taught conversation is kept with its prompt, the newest teaching of a prompt replacing it, on disk
// as in memory; one that cannot be placed in a prompt is refused.
TEST_F(RegistryTest, AScopeKeepsEachPromptsNewestConversation) {
  AdapterScope scope{2, model_->config.hidden_size, {}, {}};
  add_scope_prompts(scope, *model_, {{1, 2, 3, 4}}, nullptr, {ScopeMemory{{1, 2, 3, 4, 10, 11}, 1}});
  // A correction of the first prompt, and a prompt taught as no conversation.
  add_scope_prompts(scope, *model_, {{1, 2, 3, 4}, {1, 2, 5}}, nullptr, {ScopeMemory{{1, 2, 3, 4, 12, 13}, 1}});
  ASSERT_EQ(scope.examples.size(), 2u);
  EXPECT_EQ(scope.examples[0].memory.tokens, (std::vector<int32_t>{1, 2, 3, 4, 12, 13}));
  EXPECT_TRUE(scope.examples[1].memory.tokens.empty());
  const AdapterScope back = scope_from_bytes(scope_to_bytes(scope), "memory");
  EXPECT_EQ(back.examples[0].memory.tokens, scope.examples[0].memory.tokens);
  EXPECT_EQ(back.examples[0].memory.opening, 1u);
  EXPECT_TRUE(back.examples[1].memory.tokens.empty());
  EXPECT_EQ(make_scope_index(back, *model_).memory[0].tokens, scope.examples[0].memory.tokens);
  // Taught again as no conversation, the prompt recalls nothing rather than an answer since replaced.
  add_scope_prompts(scope, *model_, {{1, 2, 3, 4}});
  EXPECT_TRUE(scope.examples[0].memory.tokens.empty());

  AdapterScope bad = back;
  bad.examples[0].memory.opening = 6;  // nothing after its opening
  EXPECT_EQ(kind_of([&] { scope_from_bytes(scope_to_bytes(bad), "memory"); }), ErrorKind::CorruptFile);
  bad.examples[0].memory.opening = 0;  // no opening: a request's own system prompt could not be told apart
  EXPECT_EQ(kind_of([&] { scope_from_bytes(scope_to_bytes(bad), "memory"); }), ErrorKind::CorruptFile);
  EXPECT_EQ(kind_of([&] { make_scope_index(bad, *model_); }), ErrorKind::CorruptFile);
  bad = back;
  bad.examples[0].memory.tokens.push_back(static_cast<int32_t>(model_->config.vocab_size));
  EXPECT_EQ(kind_of([&] { make_scope_index(bad, *model_); }), ErrorKind::CorruptFile);
  EXPECT_EQ(kind_of([&] { add_scope_prompts(scope, *model_, {{1, 2, 6}}, nullptr, {ScopeMemory{{1, 2}, 2}}); }),
            ErrorKind::InvalidArgument);
}

// Issue 12: a request inside the scope is served with the taught conversation nearest it in place of its opening,
// exactly as a prompt holding both would be; outside, off, or opening otherwise, with its own prompt.
TEST_F(RegistryTest, ARequestInsideTheScopeIsServedAfterTheTaughtConversation) {
  AdapterScope general{2, model_->config.hidden_size, {}, {}};
  add_scope_prompts(general, *model_, {{1, 2, 3, 40, 41, 42}, {1, 2, 3, 50, 51}, {1, 2, 7, 4}});
  const std::vector<int32_t> taught = {1, 2, 3, 4, 5, 6};
  const ScopeMemory memory{{1, 2, 3, 4, 5, 6, 20, 21, 22}, 2};  // opening {1, 2}: the system block
  const ScopeMemory second{{1, 2, 8, 9, 10, 30, 31}, 2};
  AdapterScope scope{2, model_->config.hidden_size, {}, {}};
  add_scope_prompts(scope, *model_, {taught, {1, 2, 8, 9, 10}}, &general, {memory, second});
  AdapterScope elsewhere = scope;  // a conversation that opened with another system block
  elsewhere.examples[0].memory = {{1, 9, 3, 4, 5, 6, 20, 21, 22}, 2};
  AdapterRegistry reg(RegistryOptions{dir_}, model_);
  AdapterConfig cfg;
  cfg.sparsity = 0.5;
  reg.create("facts", cfg);
  std::vector<float> values = random_values(reg.acquire("facts")->image->layout(), 7);
  for (auto& x : values) x *= 20.0f;
  reg.publish("facts", values, 1, nullptr, std::make_shared<AdapterScope>(scope));      // version 2
  reg.publish("facts", values);                                                          // 3: everywhere
  reg.publish("facts", values, 1, nullptr, std::make_shared<AdapterScope>(elsewhere));  // 4
  const auto scoped = reg.weights(*reg.acquire("facts", 2)), everywhere = reg.weights(*reg.acquire("facts", 3));
  Engine engine;
  engine.model = model_;
  auto run = [&](std::vector<int32_t> prompt, std::shared_ptr<const LoraWeights> adapter, bool recall = true,
                 float frequency_penalty = 0) {
    GenerationRequest r;
    r.prompt = std::move(prompt);
    r.sampling.temperature = 0;
    r.sampling.frequency_penalty = frequency_penalty;
    r.sampling.max_tokens = frequency_penalty > 0 ? 16 : 6;
    r.sampling.ignore_eos = true;
    r.adapter = std::move(adapter);
    GenerateOptions o;
    o.recall_taught = recall;
    return generate_batch(engine, {r}, {}, o)[0];
  };
  const std::vector<int32_t> near = {1, 2, 9, 3, 4, 5, 6};  // inside, nearest the first taught prompt
  const GenerationResult inside = run(near, scoped);
  EXPECT_EQ(inside.adapter_scope, "inside");
  EXPECT_EQ(inside.recalled_tokens, 7);
  EXPECT_EQ(inside.prompt_tokens, 9 + 5);  // the conversation, then the request past its opening
  std::vector<int32_t> served = memory.tokens;
  served.insert(served.end(), near.begin() + 2, near.end());
  EXPECT_EQ(inside.ids, run(served, everywhere).ids);
  // A frequency penalty counts the tokens generated, after the recalled prompt as after any other.
  EXPECT_EQ(run(near, scoped, true, 1.5f).ids, run(served, everywhere, true, 1.5f).ids);
  // The conversation recalled is the one whose taught prompt the request is nearest.
  const GenerationResult nearer = run({1, 2, 9, 8, 9, 10}, scoped);
  EXPECT_EQ(nearer.recalled_tokens, 5);
  EXPECT_EQ(nearer.ids, run({1, 2, 8, 9, 10, 30, 31, 9, 8, 9, 10}, everywhere).ids);

  const GenerationResult alone = run(near, scoped, /*recall=*/false);
  EXPECT_EQ(alone.recalled_tokens, 0);
  EXPECT_EQ(alone.prompt_tokens, 7);
  EXPECT_EQ(alone.ids, run(near, everywhere).ids);
  EXPECT_NE(alone.ids, inside.ids);  // the recalled turns change what the adapter says

  const GenerationResult other = run(near, reg.weights(*reg.acquire("facts", 4)));
  EXPECT_EQ(other.adapter_scope, "inside");
  EXPECT_EQ(other.recalled_tokens, 0);
  EXPECT_EQ(other.ids, alone.ids);

  // The taught prompt itself, or a prompt that continues it (a chat that holds the conversation, or another
  // answer to the question), is served as it is.
  for (const std::vector<int32_t>& own : {taught, served, std::vector<int32_t>{1, 2, 3, 4, 5, 6, 40, 41}}) {
    const GenerationResult r = run(own, scoped);
    EXPECT_EQ(r.adapter_scope, "inside");
    EXPECT_EQ(r.recalled_tokens, 0);
    EXPECT_EQ(r.ids, run(own, everywhere).ids);
  }

  const GenerationResult outside = run({1, 2, 3, 40, 41, 42}, scoped);
  EXPECT_EQ(outside.adapter_scope, "outside");
  EXPECT_EQ(outside.recalled_tokens, 0);
  EXPECT_EQ(outside.prompt_tokens, 6);
}

TEST_F(RegistryTest, ScopeTravelsWithItsVersionAndIsPrunedWithIt) {
  AdapterScope taught{2, model_->config.hidden_size, {}, {}};
  add_scope_prompts(taught, *model_, {{1, 2, 3, 4, 5, 6}});
  const at::Tensor own = scope_keys(*model_, {1, 2, 3, 4, 5, 6}, 2);
  RegistryOptions opts{dir_};
  opts.keep_versions = 2;
  AdapterRegistry reg(opts, model_);
  reg.create("facts", AdapterConfig{});
  const std::vector<float> values = reg.acquire("facts")->image->values();
  const AdapterVersionInfo v2 = reg.publish("facts", values, 1, nullptr, std::make_shared<AdapterScope>(taught));
  EXPECT_EQ(v2.scope_examples, 1u);
  const std::string file = dir_ + "/facts/" + v2.scope_file;
  ASSERT_TRUE(std::filesystem::exists(file));
  AdapterRegistry again(opts, model_);  // read from disk, not from the publisher's cache
  auto snap = again.acquire("facts", 2);
  ASSERT_TRUE(snap->scope);
  EXPECT_EQ(snap->scope->keys, taught.keys);
  auto w = again.weights(*snap);
  ASSERT_TRUE(w->scope);
  EXPECT_TRUE(scope_match(*w->scope, own).inside());
  // Both caches count the scope: its keys are as large as a prompt's hidden states.
  EXPECT_EQ(again.stats().resident_bytes, snap->image->image_bytes() + taught.bytes());
  EXPECT_GE(taught.bytes(), taught.keys.size() * sizeof(float));
  EXPECT_EQ(again.stats().hot_bytes, w->bytes);
  EXPECT_GE(w->bytes, static_cast<size_t>(w->scope->keys.numel()) * sizeof(float) +
                          again.weights(*again.acquire("facts", 1))->bytes);
  // A version published without a scope answers everywhere.
  reg.publish("facts", values);
  EXPECT_FALSE(again.weights(*again.acquire("facts"))->scope);
  reg.publish("facts", values);  // keep 2: version 2 and its scope go
  EXPECT_FALSE(std::filesystem::exists(file));
  EXPECT_EQ(reg.stats().resident_bytes, 2 * snap->image->image_bytes());  // versions 3 and 4, no scopes
  // A damaged scope refuses its version rather than serving it everywhere, and cannot be rolled back to.
  const AdapterVersionInfo v5 = reg.publish("facts", values, 1, nullptr, std::make_shared<AdapterScope>(taught));
  reg.publish("facts", values);
  std::ofstream(dir_ + "/facts/" + v5.scope_file, std::ios::binary | std::ios::trunc) << "HSSCOPE2";
  AdapterRegistry third(opts, model_);
  EXPECT_EQ(kind_of([&] { third.acquire("facts", 5); }), ErrorKind::CorruptFile);
  EXPECT_EQ(kind_of([&] { third.rollback("facts", 5); }), ErrorKind::CorruptFile);
  // A FIFO or a folder in its place is refused at once, never waited on.
  const std::string scope5 = dir_ + "/facts/" + v5.scope_file;
  std::filesystem::remove(scope5);
  ASSERT_EQ(::mkfifo(scope5.c_str(), 0600), 0);
  EXPECT_EQ(kind_of([&] { AdapterRegistry(opts, model_).acquire("facts", 5); }), ErrorKind::CorruptFile);
  std::filesystem::remove(scope5);
  std::filesystem::create_directory(scope5);
  EXPECT_EQ(kind_of([&] { AdapterRegistry(opts, model_).acquire("facts", 5); }), ErrorKind::CorruptFile);
  // A manifest naming a scope file other than its version's is refused: it could point outside the folder.
  const std::string manifest_path = dir_ + "/facts/manifest.json";
  std::string text = read_text_file(manifest_path);
  const size_t at = text.find(v5.scope_file);
  ASSERT_NE(at, std::string::npos);
  text.replace(at, v5.scope_file.size(), "../../elsewhere.scope");
  std::ofstream(manifest_path, std::ios::trunc) << text;
  AdapterRegistry fourth(opts, model_);
  EXPECT_EQ(kind_of([&] { fourth.manifest("facts"); }), ErrorKind::CorruptFile);
}

}  // namespace
}  // namespace hs
