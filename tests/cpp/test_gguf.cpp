#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <vector>

#include "common/error.h"
#include "common/gguf_file.h"
#include "model/dequantize.h"

namespace hs {

namespace {

// Builds a minimal GGUF v3 file byte by byte, following the specification's layout.
struct GgufWriter {
  std::string bytes;
  template <typename T>
  void put(T v) { bytes.append(reinterpret_cast<const char*>(&v), sizeof(T)); }
  void str(const std::string& s) {
    put<uint64_t>(s.size());
    bytes += s;
  }
};

std::string write_tmp(const std::string& bytes, const char* name) {
  std::string path = testing::TempDir() + name;
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

std::string one_tensor_file(uint32_t type, const std::string& payload, const std::vector<uint64_t>& shape = {32}) {
  GgufWriter w;
  w.bytes = "GGUF";
  w.put<uint32_t>(3);
  w.put<uint64_t>(1);  // tensors
  w.put<uint64_t>(1);  // metadata entries
  w.str("general.architecture");
  w.put<uint32_t>(8);
  w.str("llama");
  w.str("t");
  w.put<uint32_t>(static_cast<uint32_t>(shape.size()));
  for (uint64_t d : shape) w.put<uint64_t>(d);
  w.put<uint32_t>(type);
  w.put<uint64_t>(0);
  while (w.bytes.size() % 32) w.bytes.push_back('\0');
  return w.bytes + payload;
}

}  // namespace

TEST(Gguf, ReadsMetadataAndQ8_0Tensor) {
  std::string block(34, '\0');
  uint16_t half_two = 0x4000;  // 2.0 in IEEE half precision
  std::memcpy(&block[0], &half_two, 2);
  for (int i = 0; i < 32; ++i) block[2 + i] = static_cast<char>(i - 16);
  GgufFile g = read_gguf(write_tmp(one_tensor_file(8, block), "q8.gguf"));
  EXPECT_EQ(g.version, 3u);
  EXPECT_EQ(g.get_string("general.architecture"), "llama");
  ASSERT_EQ(g.tensors.size(), 1u);
  std::vector<float> out(32);
  dequantize(g.tensors[0].type, g.tensors[0].data, out.data(), 32);
  for (int i = 0; i < 32; ++i) EXPECT_FLOAT_EQ(out[i], 2.0f * (i - 16));
}

TEST(Gguf, RefusesATruncatedTensor) {
  std::string full = one_tensor_file(8, std::string(34, '\0'));
  std::string path = write_tmp(full.substr(0, full.size() - 10), "trunc.gguf");
  try {
    read_gguf(path);
    FAIL() << "truncated file accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::CorruptFile);
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos);
  }
}

TEST(Gguf, RefusesBadMagicAndTruncatedHeader) {
  EXPECT_THROW(read_gguf(write_tmp("NOPE0000000000000000000000", "magic.gguf")), Error);
  std::string full = one_tensor_file(8, std::string(34, '\0'));
  EXPECT_THROW(read_gguf(write_tmp(full.substr(0, 40), "header.gguf")), Error);
}

// Element counts or byte sizes past 2^63 would wrap to small numbers and pass the check against the file's size.
TEST(Gguf, RefusesAShapeWhoseSizeOverflows) {
  const std::vector<std::vector<uint64_t>> shapes = {{1ull << 32, 1ull << 32}, {1ull << 31, 1ull << 31}};
  for (const auto& shape : shapes) {
    try {
      read_gguf(write_tmp(one_tensor_file(0, std::string(128, '\0'), shape), "huge.gguf"));  // type 0: F32
      FAIL() << "a tensor of " << shape[0] << " x " << shape[1] << " floats accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::CorruptFile);
      EXPECT_NE(std::string(e.what()).find("bad shape"), std::string::npos) << e.what();
    }
  }
}

TEST(Gguf, UnsupportedTypeIsNamed) {
  std::vector<float> out(256);
  std::string block(256, '\0');
  try {
    dequantize(16, reinterpret_cast<const uint8_t*>(block.data()), out.data(), 256);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Unsupported);
    EXPECT_NE(std::string(e.what()).find("IQ2_XXS"), std::string::npos);
  }
}

TEST(Half, ConvertsNormalsSubnormalsAndSpecials) {
  EXPECT_FLOAT_EQ(half_to_float(0x3C00), 1.0f);
  EXPECT_FLOAT_EQ(half_to_float(0xC000), -2.0f);
  EXPECT_FLOAT_EQ(half_to_float(0x0001), 5.960464477539063e-08f);
  EXPECT_TRUE(std::isinf(half_to_float(0x7C00)));
  EXPECT_TRUE(std::isnan(half_to_float(0x7E00)));
}

}  // namespace hs
