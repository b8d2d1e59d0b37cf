// Pieces of the server: the prefix cache (reuse, seeds, eviction, the last token always computed), which steps
// the decode graphs take, metrics in Prometheus' text format, strict JSON and file locks.
#include <gtest/gtest.h>

#include "common/error.h"
#include "common/file_lock.h"
#include "common/metrics.h"
#include "common/strict_json.h"
#include "model/decode_graphs.h"
#include "model/forward.h"
#include "model/load.h"
#include "model/model.h"
#include "model/torch_error.h"
#include "serving/prefix_cache.h"
#include "test_support.h"

namespace hs {
namespace {

std::shared_ptr<Model> tiny_model() { return make_random_model(tiny_config(), LoadOptions{"float32", "cpu", "none"}, 1); }

// Fills positions [0, n) of a slot with values derived from (slot, position, layer).
void fill(KvCache& cache, int64_t slot, int64_t n, float base) {
  for (size_t l = 0; l < cache.k.size(); ++l)
    for (int64_t p = 0; p < n; ++p) {
      cache.k[l][slot][p].fill_(base + static_cast<float>(p) + 100.0f * static_cast<float>(l));
      cache.v[l][slot][p].fill_(-(base + static_cast<float>(p)));
    }
}

TEST(PrefixCache, ReusesWholeBlocksOfTheSameSeedAndLeavesTheLastTokenToCompute) {
  auto model = tiny_model();
  KvCache cache = make_kv_cache(*model, 2, 32);
  PrefixCache prefix(*model, 4, 32);
  const std::vector<int32_t> prompt = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  fill(cache, 0, 10, 1.0f);
  prefix.store("base", prompt, 10, cache, 0);
  EXPECT_EQ(prefix.used_blocks(), 2);  // two whole blocks of 4; the two tokens after them are not kept

  EXPECT_EQ(prefix.load("base", prompt, cache, 1), 8);
  for (size_t l = 0; l < cache.k.size(); ++l) {
    EXPECT_TRUE(at::equal(cache.k[l][1].narrow(0, 0, 8), cache.k[l][0].narrow(0, 0, 8)));
    EXPECT_TRUE(at::equal(cache.v[l][1].narrow(0, 0, 8), cache.v[l][0].narrow(0, 0, 8)));
  }
  // Another seed (an adapter version) finds nothing; a prompt sharing one block finds one.
  EXPECT_EQ(prefix.load("adapter@2#1|1", prompt, cache, 1), 0);
  EXPECT_EQ(prefix.load("base", {1, 2, 3, 4, 9, 9, 9, 9, 9}, cache, 1), 4);
  // A prompt that is exactly two blocks long still computes its last token: one block comes from the cache.
  EXPECT_EQ(prefix.load("base", {1, 2, 3, 4, 5, 6, 7, 8}, cache, 1), 4);
}

TEST(PrefixCache, EvictsTheLeastRecentlyUsedBlockAndCanBeTurnedOff) {
  auto model = tiny_model();
  KvCache cache = make_kv_cache(*model, 1, 32);
  PrefixCache prefix(*model, 4, 8);  // two blocks
  fill(cache, 0, 12, 0.0f);
  prefix.store("a", {1, 2, 3, 4, 9}, 5, cache, 0);
  prefix.store("b", {5, 6, 7, 8, 9}, 5, cache, 0);
  EXPECT_EQ(prefix.load("a", {1, 2, 3, 4, 9}, cache, 0), 4);  // "a" is now the most recently used
  prefix.store("c", {7, 7, 7, 7, 9}, 5, cache, 0);            // evicts "b"
  EXPECT_EQ(prefix.used_blocks(), 2);
  EXPECT_EQ(prefix.load("b", {5, 6, 7, 8, 9}, cache, 0), 0);
  EXPECT_EQ(prefix.load("a", {1, 2, 3, 4, 9}, cache, 0), 4);
  EXPECT_EQ(prefix.load("c", {7, 7, 7, 7, 9}, cache, 0), 4);

  PrefixCache off(*model, 4, 0);
  off.store("a", {1, 2, 3, 4, 9}, 5, cache, 0);
  EXPECT_EQ(off.load("a", {1, 2, 3, 4, 9}, cache, 0), 0);
}

// A graph replays a fixed shape: rows of one token whose logits come back in row order. Anything else (a
// prefill chunk, a row without logits, rows out of order) must run eagerly. Replays themselves need a GPU:
// bench/gpu/run.sh compares their greedy tokens with eager decoding.
TEST(DecodeGraphs, TakeOnlyStepsOfSingleTokenRowsWithLogitsInRowOrder) {
  SlotStep decode{{5, 6, 7}, {2, 0, 1}, {10, 3, 8}, {1, 1, 1}, {0, 1, 2}};
  EXPECT_TRUE(DecodeGraphs::serves(decode));
  SlotStep chunk = decode;
  chunk.tokens.push_back(8);
  chunk.row_len[1] = 2;
  EXPECT_FALSE(DecodeGraphs::serves(chunk));
  SlotStep reordered = decode;
  reordered.logits_rows = {0, 2, 1};
  EXPECT_FALSE(DecodeGraphs::serves(reordered));
  SlotStep without_logits = decode;
  without_logits.logits_rows = {0, 1};
  EXPECT_FALSE(DecodeGraphs::serves(without_logits));
  EXPECT_FALSE(DecodeGraphs::serves(SlotStep{}));
  EXPECT_FALSE(DecodeGraphs::supported(*tiny_model()));  // CPU: eager steps only
}

TEST(Metrics, WritesPrometheusTextWithEscapedLabelsAndCumulativeBuckets) {
  MetricsRegistry r;
  MetricFamily& c = r.counter("hs_requests_total", "Requests");
  c.add(2, {{"reason", "a \"quoted\"\\path\nline"}});
  EXPECT_EQ(&r.counter("hs_requests_total", "again"), &c);  // one family per name
  EXPECT_THROW(r.gauge("hs_requests_total", "a gauge"), Error);  // the same name as another type
  r.gauge("hs_running", "Running").set(3);
  MetricFamily& h = r.histogram("hs_latency_seconds", "Latency", {0.1, 1});
  h.observe(0.05);
  h.observe(0.5);
  h.observe(5);
  const std::string text = r.text();
  EXPECT_NE(text.find("# TYPE hs_requests_total counter\n"), std::string::npos);
  EXPECT_NE(text.find("hs_requests_total{reason=\"a \\\"quoted\\\"\\\\path\\nline\"} 2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("hs_running 3\n"), std::string::npos);
  EXPECT_NE(text.find("hs_latency_seconds_bucket{le=\"0.1\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("hs_latency_seconds_bucket{le=\"1\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("hs_latency_seconds_bucket{le=\"+Inf\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("hs_latency_seconds_sum 5.55\n"), std::string::npos) << text;
  EXPECT_NE(text.find("hs_latency_seconds_count 3\n"), std::string::npos);
}

TEST(StrictJson, RefusesDuplicateKeysAtAnyDepthAndMalformedText) {
  EXPECT_EQ(parse_strict_json(R"({"a": {"b": 1, "c": [{"d": 2}]}})", "x")["a"]["c"][0]["d"], 2);
  EXPECT_EQ(parse_strict_json(R"([{"k": 1}, {"k": 2}])", "x").size(), 2u);  // the same key in sibling objects
  for (const char* bad : {R"({"a": 1, "a": 2})", R"({"a": {"b": 1, "b": 1}})", R"([{"x": [{"y": 1, "y": 2}]}])",
                          "{\"a\": ", "{\"a\": 1e999}", "{\"s\": \"\xff\"}"})
    EXPECT_EQ(kind_of([&] { parse_strict_json(bad, "the body"); }), ErrorKind::InvalidArgument) << bad;
}

TEST(FileLock, ASecondHolderInTheSameProcessIsBusyAndNamesTheFirst) {
  TempDir tmp("file_lock");
  const std::string path = tmp.path + "/lock";
  FileLock first(path, FileLock::Mode::Try, "busy");
  first.record_holder();
  try {
    FileLock second(path, FileLock::Mode::Try, "domain 'x' is being trained");
    FAIL() << "the second lock was granted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Busy);
    EXPECT_NE(std::string(e.what()).find("held by process " + std::to_string(::getpid())), std::string::npos);
  }
}

}  // namespace
}  // namespace hs

// A failed tensor op's message reaches users (a request's error, a quarantined batch's reason) without
// libtorch's C++ backtrace, and keeps what went wrong.
TEST(TorchError, MessageLeavesOutTheBacktrace) {
  try {
    (void)at::ones({2}).view({3});
    FAIL() << "the view should not fit";
  } catch (const std::exception& e) {
    ASSERT_NE(std::string(e.what()).find("frame #"), std::string::npos) << "libtorch no longer adds a backtrace";
    const std::string message = hs::message_of(e);
    EXPECT_EQ(message.find("frame #"), std::string::npos) << message;
    EXPECT_NE(message.find("shape '[3]' is invalid for input of size 2"), std::string::npos) << message;
  }
}
