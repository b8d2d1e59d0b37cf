// 4-bit weights through torch's CPU int4 kernel (model/int4_weights.h) against the GGUF blocks' own values, as
// dequantize() decodes them following the specification.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <cmath>
#include <random>
#include <vector>

#include "common/gguf_file.h"
#include "model/dequantize.h"
#include "model/int4_weights.h"
#include "model/model.h"
#include "random_blocks.h"

namespace hs {

namespace {

constexpr int64_t kRows = 128, kCols = 256;

std::vector<uint8_t> random_blocks(GgmlType type, std::mt19937& rng) { return test::random_blocks(type, kRows, kCols, rng); }

at::Tensor dequantized(GgmlType type, const std::vector<uint8_t>& bytes) {
  at::Tensor w = at::empty({kRows, kCols}, at::kFloat);
  dequantize(static_cast<uint32_t>(type), bytes.data(), w.data_ptr<float>(), kRows * kCols);
  return w;
}

// Per output of x W^T, the most the kernel may differ from the exact product: it rounds x, the scales and the
// zeros to bfloat16 (relative error 2^-9 each), so a term w x moves by at most
// 2^-9 (|q - 8| |scale| + |zero| + |w|) |x|; 2^-8 leaves room for float32 accumulation over 256 terms.
at::Tensor rounding_bound(const Int4Codes& c, const at::Tensor& w, const at::Tensor& x) {
  const at::Tensor q = c.codes.to(at::kFloat).view({kRows, -1, kInt4Group}) - 8;
  const at::Tensor per_weight = (q.abs() * c.scale.abs().unsqueeze(-1) + c.zero.abs().unsqueeze(-1)).view({kRows, kCols}) +
                                w.abs();
  return std::ldexp(1.0, -8) * at::mm(x.abs().to(at::kDouble), per_weight.t().to(at::kDouble)) + 1e-6;
}

TEST(Int4, GgufFourBitBlocksMultiplyAsTheirDequantizedValues) {
  std::mt19937 rng(5);
  for (GgmlType type : {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4_K}) {
    SCOPED_TRACE(ggml_type_name(static_cast<uint32_t>(type)));
    const std::vector<uint8_t> bytes = random_blocks(type, rng);
    const at::Tensor w = dequantized(type, bytes);
    const Int4Codes c = int4_from_gguf(static_cast<uint32_t>(type), bytes.data(), kRows, kCols);
    ASSERT_TRUE(c.codes.defined());
    // The codes and scales are the blocks' own: they give back dequantize()'s values.
    const at::Tensor from_codes =
        ((c.codes.to(at::kFloat).view({kRows, -1, kInt4Group}) - 8) * c.scale.unsqueeze(-1) + c.zero.unsqueeze(-1))
            .view({kRows, kCols});
    EXPECT_LE((from_codes - w).abs().max().item<float>(), 1e-6f * w.abs().max().item<float>());

    Linear lin;
    set_int4(lin, c);
    at::Generator gen = at::detail::createCPUGenerator(static_cast<uint64_t>(type));
    const at::Tensor x = at::randn({3, kCols}, gen, at::TensorOptions().dtype(at::kFloat));
    const at::Tensor exact = at::mm(x.to(at::kDouble), w.t().to(at::kDouble));
    const at::Tensor error = (int4_linear(x, lin).to(at::kDouble) - exact).abs();
    EXPECT_TRUE((error <= rounding_bound(c, w, x)).all().item<bool>())
        << "worst error " << error.max().item<double>() << " of outputs up to " << exact.abs().max().item<double>();
  }
}

TEST(Int4, OtherTypesAreQuantizedWithinHalfAStep) {
  std::mt19937 rng(6);
  for (GgmlType type : {GgmlType::Q8_0, GgmlType::Q6_K}) {
    SCOPED_TRACE(ggml_type_name(static_cast<uint32_t>(type)));
    const std::vector<uint8_t> bytes = random_blocks(type, rng);
    EXPECT_FALSE(int4_from_gguf(static_cast<uint32_t>(type), bytes.data(), kRows, kCols).codes.defined());
    const at::Tensor w = dequantized(type, bytes);
    const Int4Codes c = quantize_int4(w);
    Linear lin;
    set_int4(lin, c);
    // Rounding to the nearest of 16 levels errs by at most half a step; bfloat16 scales and zeros add their own.
    const at::Tensor step = c.scale.repeat_interleave(kInt4Group, 1);
    const at::Tensor q = c.codes.to(at::kFloat) - 8;
    const at::Tensor bound = step * (0.5 + std::ldexp(1.0, -8) * q.abs()) +
                             std::ldexp(1.0, -8) * c.zero.abs().repeat_interleave(kInt4Group, 1) + 1e-7;
    EXPECT_TRUE(((int4_dequantized(lin) - w).abs() <= bound).all().item<bool>());
  }
}

TEST(Int4, TheKernelsPackingUnpacksToTheCodes) {
  // int4_dequantized reads torch's packed layout, which differs per CPU capability (CMake runs these tests under
  // each); a layout it does not recognize, or a torch release that changed one, fails here.
  Int4Codes c;
  at::Generator gen = at::detail::createCPUGenerator(9);
  c.codes = at::randint(0, 16, {kRows, kCols}, gen, at::TensorOptions().dtype(at::kByte));
  c.scale = at::rand({kRows, kCols / kInt4Group}, gen) + 0.5;
  c.zero = at::randn({kRows, kCols / kInt4Group}, gen);
  Linear lin;
  set_int4(lin, c);
  const at::Tensor s = c.scale.to(at::kBFloat16).to(at::kFloat).repeat_interleave(kInt4Group, 1);
  const at::Tensor z = c.zero.to(at::kBFloat16).to(at::kFloat).repeat_interleave(kInt4Group, 1);
  EXPECT_TRUE(at::allclose(int4_dequantized(lin), (c.codes.to(at::kFloat) - 8) * s + z, 0, 1e-6));
}

TEST(Int4, AGradientPassMultipliesByTheDequantizedWeight) {
  std::mt19937 rng(7);
  const std::vector<uint8_t> bytes = random_blocks(GgmlType::Q4_1, rng);
  const Int4Codes c = int4_from_gguf(static_cast<uint32_t>(GgmlType::Q4_1), bytes.data(), kRows, kCols);
  Linear lin;
  set_int4(lin, c);
  at::Generator gen = at::detail::createCPUGenerator(3);
  const at::Tensor x = at::randn({2, kCols}, gen, at::TensorOptions().dtype(at::kFloat)).requires_grad_(true);
  const at::Tensor y = int4_linear(x, lin);
  y.sum().backward();
  const at::Tensor w = int4_dequantized(lin);
  EXPECT_TRUE(at::allclose(x.grad(), w.sum(0).expand({2, kCols}), 1e-5, 1e-5));
  // Both products are within the kernel's rounding of the exact one, so within twice that of each other.
  at::AutoGradMode no_grad(false);
  const at::Tensor apart = (y - int4_linear(x.detach(), lin)).abs().to(at::kDouble);
  EXPECT_TRUE((apart <= 2 * rounding_bound(c, dequantized(GgmlType::Q4_1, bytes), x.detach())).all().item<bool>());
}

}  // namespace

}  // namespace hs
