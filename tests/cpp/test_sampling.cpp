#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/error.h"
#include "serving/row_logits.h"
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

namespace hs {
namespace {

// The scheduler samples most rows from their 64 largest logits, reduced on the device; the token, its logprob
// and the top logprobs must be what the whole row gives with the same generator. Rows 2 and 3 tie: row 2 has
// 70 equal logits at the top (more than the device keeps), row 3 a group of equal logits across the cut.
TEST(Sampling, ARowReducedToItsLargestLogitsSamplesAsTheWholeRow) {
  SamplingParams greedy;
  greedy.temperature = 0;
  greedy.top_logprobs = 5;
  SamplingParams wide;
  wide.temperature = 1.3f;
  wide.top_k = kDeviceTopK;
  wide.top_p = 1;
  wide.min_p = 0;
  wide.top_logprobs = 20;
  SamplingParams narrow;
  narrow.top_k = 10;
  narrow.top_p = 0.5f;
  const std::vector<SamplingParams> params = {SamplingParams{}, greedy, wide, narrow};
  for (int64_t seed = 0; seed < 10; ++seed) {
    at::Generator gen = at::detail::createCPUGenerator(static_cast<uint64_t>(seed));
    at::Tensor logits = at::randn({4, 1000}, gen) * 3;
    const at::Tensor order = at::randperm(1000, gen);
    logits[2].index_fill_(0, order.narrow(0, 0, 70), 20.0);
    logits[3].index_fill_(0, order.narrow(0, 0, 50), 20.0);
    logits[3].index_fill_(0, order.narrow(0, 50, 30), 15.0);  // ranks 50 to 79 tie
    for (const SamplingParams& p : params) {
      const int64_t needed = candidates_needed(p);
      ASSERT_GT(needed, 0);
      const std::vector<RowLogits> reduced = fetch_row_logits(logits, std::vector<int64_t>(4, needed));
      const std::vector<RowLogits> whole = fetch_row_logits(logits, std::vector<int64_t>(4, 0));
      for (size_t r = 0; r < 4; ++r) {
        std::mt19937_64 rng_reduced(static_cast<uint64_t>(seed)), rng_whole(static_cast<uint64_t>(seed));
        for (int draw = 0; draw < 5; ++draw) {
          RowLogits row = reduced[r];
          std::vector<float> full = whole[r].full;
          const int32_t id = sample_row(row, p, {}, rng_reduced, 0);
          ASSERT_EQ(id, sample_next(full, p, {}, rng_whole, 0)) << "seed " << seed << " row " << r;
          EXPECT_NEAR(row_logprob(reduced[r], id), token_logprob(whole[r].full, id), 1e-5);
        }
        const auto top = row_top_logprobs(reduced[r], p.top_logprobs);
        const auto expected = top_logprobs(whole[r].full, p.top_logprobs);
        ASSERT_EQ(top.size(), expected.size());
        for (size_t i = 0; i < top.size(); ++i) {
          EXPECT_EQ(top[i].first, expected[i].first);
          EXPECT_NEAR(top[i].second, expected[i].second, 1e-5);
        }
      }
      EXPECT_TRUE(reduced[0].full.empty());  // no ties: reduced
      EXPECT_FALSE(reduced[2].full.empty());  // more equal logits at the top than the device keeps
      EXPECT_EQ(reduced[3].full.empty(), needed < 50);  // the tie matters only when sampling reaches it
    }
  }
}

TEST(Sampling, PenaltiesAndWideTopKFetchTheWholeRowAndNonFiniteRowsAreFlagged) {
  SamplingParams p;
  EXPECT_EQ(candidates_needed(p), 40);
  p.repetition_penalty = 1.1f;
  EXPECT_EQ(candidates_needed(p), 0);
  p = SamplingParams{};
  p.frequency_penalty = 0.5f;
  EXPECT_EQ(candidates_needed(p), 0);
  p = SamplingParams{};
  p.top_k = 0;
  EXPECT_EQ(candidates_needed(p), 0);
  p.temperature = 0;  // greedy reads only the largest logit, and the top logprobs asked for
  EXPECT_EQ(candidates_needed(p), 1);
  p.top_logprobs = 7;
  EXPECT_EQ(candidates_needed(p), 7);
  p = SamplingParams{};
  p.top_k = kDeviceTopK + 1;
  EXPECT_EQ(candidates_needed(p), 0);

  at::Tensor logits = at::randn({3, 100});
  logits[1][7] = std::numeric_limits<float>::quiet_NaN();
  logits[2][3] = std::numeric_limits<float>::infinity();
  const std::vector<RowLogits> rows = fetch_row_logits(logits, {40, 0, 40});
  EXPECT_TRUE(rows[0].finite);
  EXPECT_EQ(rows[0].top_ids.size(), static_cast<size_t>(kDeviceTopK));
  EXPECT_FALSE(rows[1].finite);
  EXPECT_EQ(rows[1].full.size(), 100u);
  EXPECT_FALSE(rows[2].finite);
  EXPECT_TRUE(rows[2].full.empty());

  // Penalties apply to the draw, not to the row the logprobs read afterwards.
  p = SamplingParams{};
  p.temperature = 0;
  p.repetition_penalty = 2.0f;
  const RowLogits whole = fetch_row_logits(at::tensor(logits_fixture()).view({1, -1}), {0})[0];
  std::mt19937_64 rng(1);
  EXPECT_EQ(sample_row(whole, p, {1}, rng, 0), 2);  // token 1's 3.0 halves below token 2's 2.5
  EXPECT_EQ(whole.full, logits_fixture());
}

}  // namespace
}  // namespace hs
