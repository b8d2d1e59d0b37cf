// Weights kept as ggml block rows (model/ggml_rows.h) against the blocks' values as dequantize() decodes them
// following the GGUF specification.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <random>
#include <vector>

#include "common/error.h"
#include "common/gguf_file.h"
#include "model/dequantize.h"
#include "model/ggml_rows.h"
#include "random_blocks.h"

namespace hs {

namespace {

constexpr int64_t kRows = 96, kCols = 512;
const GgmlType kTypes[] = {GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1,
                           GgmlType::IQ4_NL, GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K,
                           GgmlType::Q6_K};

at::Tensor dequantized(GgmlType type, const std::vector<uint8_t>& bytes) {
  at::Tensor w = at::empty({kRows, kCols}, at::kFloat);
  dequantize(static_cast<uint32_t>(type), bytes.data(), w.data_ptr<float>(), kRows * kCols);
  return w;
}

}  // namespace

TEST(GgmlRows, RowsDecodeAsTheSpecificationSays) {
  std::mt19937 rng(5);
  for (GgmlType type : kTypes) {
    SCOPED_TRACE(ggml_type_name(static_cast<uint32_t>(type)));
    const std::vector<uint8_t> bytes = test::random_blocks(type, kRows, kCols, rng);
    const GgmlRows rows = ggml_rows_from_gguf(static_cast<uint32_t>(type), bytes.data(), kRows, kCols);
    ASSERT_TRUE(rows.defined());
    const at::Tensor w = dequantized(type, bytes);
    EXPECT_TRUE(at::equal(ggml_dequantize_rows(rows), w));
    const at::Tensor pick = at::tensor({7, 0, 95, 7}, at::kLong);
    EXPECT_TRUE(at::equal(ggml_dequantize_rows(rows, pick), w.index_select(0, pick)));
  }
}

// ggml quantizes the activations to 8 bits per block (scale d = block max / 127, kept in half precision for
// Q8_0 and Q8_1): each x_k is off by at most d / 2 plus 127 d 2^-11 for the scale's rounding, so by at most
// max|x| (1 / 254 + 1 / 2048), and each output by that times sum_k |w_nk| (plus float rounding).
TEST(GgmlRows, ProductIsTheDequantizedProductWithinActivationRounding) {
  std::mt19937 rng(6);
  at::Generator gen = at::detail::createCPUGenerator(6);
  for (GgmlType type : kTypes) {
    SCOPED_TRACE(ggml_type_name(static_cast<uint32_t>(type)));
    const std::vector<uint8_t> bytes = test::random_blocks(type, kRows, kCols, rng);
    const GgmlRows rows = ggml_rows_from_gguf(static_cast<uint32_t>(type), bytes.data(), kRows, kCols);
    const at::Tensor w = dequantized(type, bytes).to(at::kDouble);
    for (int64_t m : {1, 3, 8}) {
      const at::Tensor x = at::randn({m, kCols}, gen, at::TensorOptions().dtype(at::kFloat));
      const at::Tensor want = at::matmul(x.to(at::kDouble), w.t());
      const at::Tensor got = ggml_matmul(x, rows).to(at::kDouble);
      const at::Tensor bound =
          x.abs().amax(1, true).to(at::kDouble) * (1.0 / 254 + 1.0 / 2048) * w.abs().sum(1).unsqueeze(0) + 1e-4;
      EXPECT_TRUE(((got - want).abs() <= bound).all().item<bool>()) << "m = " << m;
      // The bound is tight enough to catch a wrong row: products with a neighbouring row are far outside it.
      EXPECT_FALSE(((got.roll(1, 1) - want).abs() <= bound).all().item<bool>()) << "m = " << m;
    }
  }
}

TEST(GgmlRows, Q8_0RowsOfAFloatWeightAreWithinHalfAStep) {
  at::Generator gen = at::detail::createCPUGenerator(7);
  const at::Tensor w = at::randn({kRows, kCols}, gen, at::TensorOptions().dtype(at::kFloat));
  const at::Tensor back = ggml_dequantize_rows(ggml_rows_q8_0(w));
  // Per block of 32, q = round(w / d) with d = max|w| / 127, off by at most d / 2; d is stored in half
  // precision (relative error 2^-11), which moves q d by at most 127 d 2^-11 more.
  const at::Tensor d = w.abs().view({kRows, -1, 32}).amax(-1, true) / 127;
  EXPECT_TRUE(((back - w).abs().view({kRows, -1, 32}) <= d * (0.5 + 127.0 / 2048) + 1e-7).all().item<bool>());
  EXPECT_FALSE(((back - w).abs().view({kRows, -1, 32}) <= d * 0.25).all().item<bool>());  // it does round
}

TEST(GgmlRows, OtherTypesAreLeftToTheCaller) {
  std::vector<uint8_t> f32(kRows * kCols * 4);
  EXPECT_FALSE(ggml_rows_from_gguf(static_cast<uint32_t>(GgmlType::F32), f32.data(), kRows, kCols).defined());
}

TEST(GgmlRows, ARowOutsideTheTableIsAnError) {
  std::mt19937 rng(8);
  const std::vector<uint8_t> bytes = test::random_blocks(GgmlType::Q8_0, kRows, kCols, rng);
  const GgmlRows rows = ggml_rows_from_gguf(static_cast<uint32_t>(GgmlType::Q8_0), bytes.data(), kRows, kCols);
  EXPECT_THROW(ggml_dequantize_rows(rows, at::tensor({kRows}, at::kLong)), Error);
}

}  // namespace hs
