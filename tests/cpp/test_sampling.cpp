#include <gtest/gtest.h>

#include <cmath>

#include "common/error.h"
#include "serving/sampling.h"

namespace hs {

namespace {
std::vector<float> logits_fixture() { return {1.0f, 3.0f, 2.5f, -1.0f, 0.0f}; }
}  // namespace

TEST(Sampling, GreedyPicksTheArgmax) {
  SamplingParams p;
  p.temperature = 0;
  std::mt19937_64 rng(1);
  auto l = logits_fixture();
  EXPECT_EQ(sample_next(l, p, {}, rng), 1);
}

TEST(Sampling, RepetitionPenaltyFollowsTransformers) {
  SamplingParams p;
  p.temperature = 0;
  p.repetition_penalty = 2.0f;
  std::mt19937_64 rng(1);
  auto l = logits_fixture();
  // 3.0 / 2 = 1.5 < 2.5, so the seen token loses the argmax; negative logits are multiplied.
  EXPECT_EQ(sample_next(l, p, {1, 3}, rng), 2);
  EXPECT_FLOAT_EQ(l[1], 1.5f);
  EXPECT_FLOAT_EQ(l[3], -2.0f);
}

TEST(Sampling, TopKOneIsGreedy) {
  SamplingParams p;
  p.temperature = 5.0f;
  p.top_k = 1;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  for (uint64_t seed = 0; seed < 50; ++seed) {
    std::mt19937_64 rng(seed);
    auto l = logits_fixture();
    EXPECT_EQ(sample_next(l, p, {}, rng), 1);
  }
}

TEST(Sampling, TopPAndMinPRestrictTheCandidates) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 0;
  p.top_p = 0.5f;  // the top token alone holds ~55% of the mass
  p.min_p = 0.0f;
  for (uint64_t seed = 0; seed < 50; ++seed) {
    std::mt19937_64 rng(seed);
    auto l = logits_fixture();
    EXPECT_EQ(sample_next(l, p, {}, rng), 1);
  }
  p.top_p = 1.0f;
  p.min_p = 0.5f;  // keeps tokens with p >= 0.5 * p_max: ids 1 and 2 (e^-0.5 = 0.61)
  for (uint64_t seed = 0; seed < 100; ++seed) {
    std::mt19937_64 rng(seed);
    auto l = logits_fixture();
    int32_t id = sample_next(l, p, {}, rng);
    EXPECT_TRUE(id == 1 || id == 2) << id;
  }
}

TEST(Sampling, SameSeedSameTokens) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  std::mt19937_64 a(42), b(42);
  for (int i = 0; i < 20; ++i) {
    auto la = logits_fixture(), lb = logits_fixture();
    EXPECT_EQ(sample_next(la, p, {}, a), sample_next(lb, p, {}, b));
  }
}

TEST(Sampling, LogprobIsLogSoftmax) {
  auto l = logits_fixture();
  double z = 0;
  for (float x : l) z += std::exp(x);
  EXPECT_NEAR(token_logprob(l, 2), 2.5 - std::log(z), 1e-6);
}

TEST(Sampling, RejectsOutOfRangeParameters) {
  SamplingParams p;
  p.top_p = 0.0f;
  EXPECT_THROW(validate_sampling(p), Error);
  p = SamplingParams{};
  p.temperature = -1.0f;
  EXPECT_THROW(validate_sampling(p), Error);
  p = SamplingParams{};
  p.max_tokens = 0;
  EXPECT_THROW(validate_sampling(p), Error);
  p = SamplingParams{};
  p.stop = {""};
  EXPECT_THROW(validate_sampling(p), Error);
}

}  // namespace hs
