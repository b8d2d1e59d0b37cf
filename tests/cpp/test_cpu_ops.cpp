// The single-loop CPU forms of RMSNorm and RoPE (model/cpu_ops.h) against the ATen formulas they replace in
// decode steps, on the layouts the decoder hands them (a strided view of the fused q/k/v output).
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>

#include "model/cpu_ops.h"

namespace hs {

namespace {

at::Tensor randn(at::IntArrayRef shape, at::Generator& gen) {
  return at::randn(shape, gen, at::TensorOptions().dtype(at::kFloat));
}

}  // namespace

TEST(CpuOps, RmsNormIsTransformersFormulaPerHeadOnAStridedView) {
  at::Generator gen = at::detail::createCPUGenerator(1);
  const int64_t B = 2, T = 3, H = 5, KVH = 2, D = 16;
  const at::Tensor qkv = randn({B, T, (H + 2 * KVH) * D}, gen);
  const at::Tensor qk = qkv.narrow(-1, 0, (H + KVH) * D).view({B, T, H + KVH, D});  // not contiguous
  const at::Tensor weight = randn({H + KVH, D}, gen);
  c10::InferenceMode serving;
  ASSERT_TRUE(takes_cpu_loops(qk));
  const at::Tensor want = weight * (qk * at::rsqrt(qk.pow(2).mean(-1, true) + 1e-6));
  EXPECT_TRUE(at::allclose(cpu_rms_norm(qk, weight, 1e-6), want, 1e-5, 1e-6));
  const at::Tensor x = randn({B, T, D}, gen), w = randn({D}, gen);
  EXPECT_TRUE(at::allclose(cpu_rms_norm(x, w, 1e-5), w * (x * at::rsqrt(x.pow(2).mean(-1, true) + 1e-5)), 1e-5, 1e-6));
}

TEST(CpuOps, RopeIsRotateHalfWithTheSignedSine) {
  at::Generator gen = at::detail::createCPUGenerator(2);
  const int64_t B = 2, T = 4, H = 3, D = 8;
  const at::Tensor x = randn({B, T, H, D}, gen), cos = randn({B, T, 1, D}, gen), sin = randn({B, T, 1, D}, gen);
  // rotate_half(x) = [-x2, x1]; the signed table holds [-sin1, sin2], so rotate_half(x) * [sin1, sin2] is
  // roll(x) * signed.
  const at::Tensor x1 = x.narrow(-1, 0, D / 2), x2 = x.narrow(-1, D / 2, D / 2);
  const at::Tensor rotated = at::cat({-x2, x1}, -1);
  const at::Tensor plain_sin = at::cat({-sin.narrow(-1, 0, D / 2), sin.narrow(-1, D / 2, D / 2)}, -1);
  EXPECT_TRUE(at::allclose(cpu_rope(x, cos, sin), x * cos + rotated * plain_sin, 1e-6, 1e-6));
}

TEST(CpuOps, OnlyInferencePassesTakeTheLoops) {
  at::Generator gen = at::detail::createCPUGenerator(3);
  const at::Tensor x = randn({2, 8}, gen);
  EXPECT_FALSE(takes_cpu_loops(x));
  {
    c10::NoGradGuard checkpointed_forward;  // learning's passes without autograd keep ATen's rounding
    EXPECT_FALSE(takes_cpu_loops(x));
  }
  c10::InferenceMode serving;
  EXPECT_TRUE(takes_cpu_loops(x));
  EXPECT_FALSE(takes_cpu_loops(x.to(at::kBFloat16)));
}

}  // namespace hs
