// Online learning: the write-ahead log (torn tails, damage, compaction), the rehearsal memory's sample, the
// domain pipeline's queue (backpressure, duplicates, restart from checkpoint and log) and the guard's drift
// measure.
#include <gtest/gtest.h>

#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <fstream>
#include <nlohmann/json.hpp>

#include "adapters/registry.h"
#include "learning/distillation.h"
#include "learning/lora_gradients.h"
#include "learning/rehearsal.h"
#include "learning/trainer.h"
#include "model/load.h"
#include "model/model.h"
#include "common/fs_util.h"
#include "learning/checkpoint.h"
#include "storage/adapter_image.h"
#include "storage/crc32.h"
#include "storage/write_ahead_log.h"
#include "test_support.h"
#include "tokenizer/tokenizer.h"

namespace hs {
namespace {

std::string segment_of(const std::string& dir) {
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.path().filename().string().rfind("wal-", 0) == 0) return e.path().string();
  return "";
}

TEST(WriteAheadLog, RecoversEveryRecordAndCutsATornTail) {
  TempDir tmp("wal_torn");
  {
    WriteAheadLog log(tmp.path, FsyncPolicy::Always);
    for (uint64_t s = 1; s <= 3; ++s) log.append(s, "batch " + std::to_string(s));
  }
  // A crash in the middle of the fourth record: its header and half its payload reached the disk.
  const std::string seg = segment_of(tmp.path);
  const auto intact = std::filesystem::file_size(seg);
  {
    WriteAheadLog log(tmp.path, FsyncPolicy::Never);
    log.append(4, std::string(100, 'x'));
  }
  std::filesystem::resize_file(seg, intact + 24 + 50);
  WriteAheadLog log(tmp.path, FsyncPolicy::Always);
  auto recs = log.recovered(0);
  ASSERT_EQ(recs.size(), 3u);
  EXPECT_EQ(recs[2].payload, "batch 3");
  EXPECT_EQ(std::filesystem::file_size(seg), intact);  // the torn bytes are gone, appends start clean
  log.append(4, "again");
  WriteAheadLog reread(tmp.path, FsyncPolicy::Always);
  EXPECT_EQ(reread.recovered(2).size(), 2u);
  EXPECT_EQ(reread.recovered(2).back().payload, "again");
}

TEST(WriteAheadLog, CompactionDropsOldSegmentsAndDamageBeforeTheLastSegmentIsCorrupt) {
  TempDir tmp("wal_damage");
  std::string old_segment, saved = tmp.path + "/saved";
  {
    WriteAheadLog log(tmp.path, FsyncPolicy::Always);
    log.append(1, "one");
    log.append(2, "two");
    old_segment = segment_of(tmp.path);
    std::filesystem::copy_file(old_segment, saved);
    log.compact(2);  // a checkpoint covers records 1 and 2: a new segment starts and the old one goes
    log.append(3, "three");
  }
  EXPECT_FALSE(std::filesystem::exists(old_segment));
  {
    WriteAheadLog log(tmp.path, FsyncPolicy::Always);
    ASSERT_EQ(log.recovered(0).size(), 1u);
    EXPECT_EQ(log.recovered(0)[0].payload, "three");
  }
  // A crash between the checkpoint and the deletion leaves the old segment: its records are read again
  // (the trainer skips those its checkpoint covers).
  std::filesystem::copy_file(saved, old_segment);
  {
    WriteAheadLog log(tmp.path, FsyncPolicy::Always);
    EXPECT_EQ(log.recovered(0).size(), 3u);
    EXPECT_EQ(log.recovered(2).size(), 1u);
  }
  // Damage in a segment that is not the last is not a torn write: refuse to guess.
  {
    std::fstream f(old_segment, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(26);
    f.put('#');
  }
  EXPECT_EQ(kind_of([&] { WriteAheadLog log(tmp.path, FsyncPolicy::Always); }), ErrorKind::CorruptFile);
}

// Group commit: appends return before their sync, the log's thread reports them durable together after at
// most the group-commit wait, a compaction reports what its checkpoint covers, and a reopened log holds all.
TEST(WriteAheadLog, BatchPolicyReportsRecordsDurableAfterOneSharedSync) {
  TempDir tmp("wal_batch");
  std::mutex mu;
  std::condition_variable heard;
  std::vector<uint64_t> reports;
  auto on_durable = [&](uint64_t seq) {
    std::lock_guard<std::mutex> lock(mu);
    reports.push_back(seq);
    heard.notify_all();
  };
  auto wait_for = [&](uint64_t seq) {
    std::unique_lock<std::mutex> lock(mu);
    return heard.wait_for(lock, std::chrono::seconds(10), [&] { return !reports.empty() && reports.back() >= seq; });
  };
  {
    WriteAheadLog log(tmp.path, FsyncPolicy::Batch, std::chrono::seconds(1), on_durable);
    for (uint64_t s = 1; s <= 5; ++s) log.append(s, "batch " + std::to_string(s));
    {
      std::lock_guard<std::mutex> lock(mu);
      EXPECT_TRUE(reports.empty()) << "reported before the group-commit wait";
    }
    ASSERT_TRUE(wait_for(5));
    EXPECT_EQ(reports, std::vector<uint64_t>{5});  // one sync for the five
    log.append(6, "six");
    log.compact(6);  // the checkpoint holds record 6: durable without waiting for the sync
    {
      std::lock_guard<std::mutex> lock(mu);
      EXPECT_EQ(reports.back(), 6u);
    }
    log.append(7, "seven");
  }  // closing syncs and reports what is left
  EXPECT_EQ(reports.back(), 7u);
  WriteAheadLog reopened(tmp.path, FsyncPolicy::Batch);
  ASSERT_EQ(reopened.recovered(0).size(), 1u);
  EXPECT_EQ(reopened.recovered(0)[0].payload, "seven");
}

TEST(WriteAheadLog, AlwaysAndNeverReportEachRecordFromAppend) {
  for (FsyncPolicy policy : {FsyncPolicy::Always, FsyncPolicy::Never}) {
    TempDir tmp(std::string("wal_inline_") + fsync_policy_name(policy));
    std::vector<uint64_t> reports;
    WriteAheadLog log(tmp.path, policy, std::chrono::milliseconds(1), [&](uint64_t seq) { reports.push_back(seq); });
    log.append(1, "one");
    log.append(2, "two");
    EXPECT_EQ(reports, (std::vector<uint64_t>{1, 2})) << fsync_policy_name(policy);
  }
  EXPECT_EQ(parse_fsync_policy("batch"), FsyncPolicy::Batch);
  EXPECT_EQ(kind_of([] { parse_fsync_policy("sometimes"); }), ErrorKind::InvalidArgument);
}

// Example k of a run, recognisable by its first token.
TrainingExample numbered(int32_t k) { return {{k, 1, 2}, {0, 1, 1}}; }

// Algorithm R keeps each of the n examples taught with probability capacity / n, whatever batch it came in: a
// memory that kept the first ones (or the last) would fail the per-tenth counts below. Over 200 seeds, each
// tenth of 1000 examples is expected in 200 * 50 / 10 = 1000 kept slots, with a standard deviation near 30.
TEST(Rehearsal, TheMemoryIsAUniformSampleOfEverythingTaught) {
  const size_t capacity = 50;
  std::vector<int> per_tenth(10, 0);
  for (uint64_t seed = 0; seed < 200; ++seed) {
    RehearsalMemory m;
    for (int32_t batch = 0; batch < 100; ++batch) {
      std::vector<TrainingExample> taught;
      for (int32_t i = 0; i < 10; ++i) taught.push_back(numbered(batch * 10 + i));
      remember(m, taught, capacity, seed, static_cast<uint64_t>(batch + 1));
    }
    ASSERT_EQ(m.examples.size(), capacity);
    EXPECT_EQ(m.seen, 1000u);
    for (const TrainingExample& ex : m.examples) per_tenth[static_cast<size_t>(ex.tokens[0] / 100)] += 1;
  }
  for (int n : per_tenth) EXPECT_NEAR(n, 1000, 150);
}

TEST(Rehearsal, TheSameSeedAndBatchesGiveTheSameMemoryAndStepsGoThroughItInTurn) {
  RehearsalMemory a, b, c;
  for (uint64_t seq = 1; seq <= 8; ++seq) {
    const std::vector<TrainingExample> taught = {numbered(static_cast<int32_t>(seq * 2)),
                                                 numbered(static_cast<int32_t>(seq * 2 + 1))};
    remember(a, taught, 5, 7, seq);
    remember(b, taught, 5, 7, seq);
    remember(c, taught, 5, 8, seq);
  }
  auto firsts = [](const RehearsalMemory& m) {
    std::vector<int32_t> f;
    for (const TrainingExample& ex : m.examples) f.push_back(ex.tokens[0]);
    return f;
  };
  EXPECT_EQ(firsts(a), firsts(b));
  EXPECT_NE(firsts(a), firsts(c));  // another seed draws other replacements (16 examples into 5 slots)
  // Two a step from five: steps 0, 1 and 2 take slots {0,1}, {2,3}, {4,0}.
  std::vector<int32_t> taken;
  for (int64_t step = 0; step < 3; ++step)
    for (const TrainingExample& ex : rehearsed_at(a, 2, step)) taken.push_back(ex.tokens[0]);
  const std::vector<int32_t> f = firsts(a);
  EXPECT_EQ(taken, (std::vector<int32_t>{f[0], f[1], f[2], f[3], f[4], f[0]}));
  EXPECT_EQ(rehearsed_at(a, 9, 0).size(), 5u);  // never more than it holds
  EXPECT_TRUE(rehearsed_at(RehearsalMemory{}, 2, 3).empty());
}

TEST(Rehearsal, TheCheckpointRecordRoundTripsAndDamageIsCorruptFile) {
  RehearsalMemory m;
  remember(m, {numbered(4), numbered(9)}, 8, 0, 1);
  const RehearsalMemory back = rehearsal_from_json(rehearsal_to_json(m));
  EXPECT_EQ(back.seen, 2u);
  ASSERT_EQ(back.examples.size(), 2u);
  EXPECT_EQ(back.examples[1].tokens, m.examples[1].tokens);
  EXPECT_EQ(back.examples[1].is_target, m.examples[1].is_target);
  nlohmann::json uneven = rehearsal_to_json(m);
  uneven["examples"][0]["targets"].push_back(1);
  nlohmann::json overfull = rehearsal_to_json(m);
  overfull["seen"] = 1;
  nlohmann::json wrong_type = rehearsal_to_json(m);
  wrong_type["examples"][0]["tokens"] = "abc";
  nlohmann::json nothing_to_learn = rehearsal_to_json(m);
  nothing_to_learn["examples"][1]["targets"] = {0, 0, 0};
  for (const nlohmann::json& bad : {uneven, overfull, wrong_type, nothing_to_learn})
    EXPECT_EQ(kind_of([&] { rehearsal_from_json(bad); }), ErrorKind::CorruptFile) << bad.dump();
}

class TrainerTest : public testing::Test {
 protected:
  void SetUp() override {
    model_ = make_random_model(tiny_config(), LoadOptions{"float32", "cpu", "none"}, 3);
    tokenizer_ = std::make_shared<Tokenizer>();  // gradient events need no tokens
    tmp_ = std::make_unique<TempDir>(testing::UnitTest::GetInstance()->current_test_info()->name());
    registry_ = std::make_unique<AdapterRegistry>(RegistryOptions{tmp_->path}, model_);
    options_.deterministic = true;
    options_.create.sparsity = 0;
    options_.adamw.lr = 1e-2;
  }
  std::string gradient(const std::string& id, float value) {
    nlohmann::json e = {{"id", id}, {"type", "gradient"}, {"base_version", 1},
                        {"gradients", {{{"layer", 1}, {"module", "v_proj"}, {"matrix", "B"},
                                        {"entries", {{3, 5, value}, {7, 1, -value}}}}}}};
    return e.dump();
  }
  std::vector<float> current_values(const std::string& name) { return registry_->acquire(name)->image->values(); }

  std::shared_ptr<Model> model_;
  std::shared_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<TempDir> tmp_;
  std::unique_ptr<AdapterRegistry> registry_;
  TrainerOptions options_;
};

TEST_F(TrainerTest, FullQueueRejectsWithBusyAndDropsNothing) {
  options_.batch_events = 100;  // deterministic: nothing is applied until flush
  options_.queue_capacity = 3;
  DomainTrainer t(*registry_, model_, tokenizer_, "busy", options_);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(t.submit(gradient("e" + std::to_string(i), 0.5f)), SubmitResult::Queued);
  try {
    t.submit(gradient("e3", 0.5f));
    FAIL() << "a full queue must refuse";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Busy);
    EXPECT_NE(std::string(e.what()).find("retry"), std::string::npos);
  }
  EXPECT_EQ(t.submit(gradient("e1", 0.5f)), SubmitResult::Duplicate);
  t.flush();
  EXPECT_EQ(t.submit(gradient("e3", 0.5f)), SubmitResult::Queued);  // room again
  t.flush();
  const TrainerStats s = t.stats();
  EXPECT_EQ(s.totals.events_applied, 4u);
  EXPECT_EQ(s.busy, 1u);
  EXPECT_EQ(s.duplicates, 1u);
  EXPECT_EQ(s.version, 3u);
  EXPECT_EQ(registry_->manifest("busy").current, 3u);
}

TEST_F(TrainerTest, RestartFromCheckpointAndLogEqualsAnUninterruptedRun) {
  options_.batch_events = 2;
  options_.checkpoint_every = 3;
  std::vector<std::string> events;
  for (int i = 0; i < 14; ++i) events.push_back(gradient("e" + std::to_string(i), 0.1f * static_cast<float>(i + 1)));
  {
    DomainTrainer t(*registry_, model_, tokenizer_, "whole", options_);
    for (const auto& e : events) t.submit(e);
    t.flush();
  }
  // Half the events, then a stop (checkpoint), a restart, the rest, and everything resubmitted once more.
  {
    DomainTrainer t(*registry_, model_, tokenizer_, "split", options_);
    for (size_t i = 0; i < 8; ++i) t.submit(events[i]);
    t.flush();
  }
  {
    DomainTrainer t(*registry_, model_, tokenizer_, "split", options_);
    EXPECT_THROW(DomainTrainer(*registry_, model_, tokenizer_, "split", options_), Error);  // one trainer per domain
    for (const auto& e : events) t.submit(e);
    t.flush();
    EXPECT_EQ(t.stats().duplicates, 8u);
    EXPECT_EQ(t.stats().totals.events_applied, 14u);
  }
  EXPECT_EQ(current_values("whole"), current_values("split"));
}

// A checkpoint keeps the rehearsal memory; one written before rehearsal existed (no "rehearsal" in its JSON)
// loads with an empty memory.
TEST_F(TrainerTest, TheCheckpointKeepsTheRehearsalMemoryAndOlderOnesLoadEmpty) {
  registry_->create("c", options_.create);
  TrainerCheckpoint c;
  c.seq = 3;
  c.adapter = registry_->acquire("c")->image;
  remember(c.rehearsal, {numbered(4), numbered(9)}, 8, 0, 1);
  const std::string dir = tmp_->path + "/ckpt";
  std::filesystem::create_directories(dir);
  write_checkpoint(dir, c);
  ASSERT_EQ(read_checkpoint(dir)->rehearsal.examples.size(), 2u);

  const std::string name = nlohmann::json::parse(read_text_file(dir + "/CHECKPOINT", ErrorKind::Io))["name"];
  const std::string path = dir + "/" + name + ".state", bytes = read_text_file(path, ErrorKind::Io);
  uint64_t len = 0;
  std::memcpy(&len, bytes.data() + 8, sizeof(len));
  nlohmann::json meta = nlohmann::json::parse(bytes.substr(16, len));
  meta.erase("rehearsal");
  const std::string text = meta.dump();
  len = text.size();
  std::string older = bytes.substr(0, 8) + std::string(reinterpret_cast<const char*>(&len), sizeof(len)) + text;
  const uint32_t crc = crc32_update(0, older.data(), older.size());  // no optimizer moments: none follow
  older.append(reinterpret_cast<const char*>(&crc), sizeof(crc));
  std::ofstream(path, std::ios::binary | std::ios::trunc) << older;
  const std::optional<TrainerCheckpoint> back = read_checkpoint(dir);
  ASSERT_TRUE(back.has_value());
  EXPECT_TRUE(back->rehearsal.examples.empty());
  EXPECT_EQ(back->rehearsal.seen, 0u);
  EXPECT_EQ(back->seq, 3u);
}

// Drift reads vocabulary logits a chunk of positions at a time (a 151k vocabulary over a domain's many canaries,
// or the evaluation's 120 controls, would otherwise hold gigabytes of them); the chunking must not change it.
// The gRPC API's arrays are checked as the JSON form is and teach the same values; the log keeps them packed,
// and the packed line parses back to the same gradient (what a replay applies).
TEST_F(TrainerTest, GradientArraysTeachAsTheirJsonFormAndTheirPackedLogLineReplaysThem) {
  const uint32_t rows[] = {3, 7, 3}, cols[] = {5, 1, 5};
  const float values[] = {0.5f, -0.5f, 0.25f};  // (3, 5) twice: summed
  const std::vector<GradientPart> parts = {{1, "v_proj", "B", rows, cols, values, 3}};
  auto json_form = [](const std::string& id) {
    return nlohmann::json{{"id", id}, {"type", "gradient"}, {"base_version", 1},
                          {"gradients", {{{"layer", 1}, {"module", "v_proj"}, {"matrix", "B"},
                                          {"entries", {{3, 5, 0.5}, {7, 1, -0.5}, {3, 5, 0.25}}}}}}}
        .dump();
  };
  {
    DomainTrainer by_json(*registry_, model_, tokenizer_, "by-json", options_);
    DomainTrainer by_arrays(*registry_, model_, tokenizer_, "by-arrays", options_);
    for (int i = 0; i < 3; ++i) {
      by_json.submit(json_form("g" + std::to_string(i)));
      EXPECT_EQ(by_arrays.submit_gradient("g" + std::to_string(i), 1, parts), SubmitResult::Queued);
    }
    EXPECT_EQ(by_arrays.submit_gradient("g0", 1, parts), SubmitResult::Duplicate);
    const uint32_t far[] = {4096};
    const float nan[] = {std::nanf("")};
    for (const GradientPart& bad : {GradientPart{1, "v_proj", "B", far, cols, values, 1},
                                    GradientPart{1, "w_proj", "B", rows, cols, values, 1},
                                    GradientPart{1, "v_proj", "C", rows, cols, values, 1},
                                    GradientPart{1, "v_proj", "B", rows, cols, nan, 1}})
      EXPECT_EQ(kind_of([&] { by_arrays.submit_gradient("bad", 1, {bad}); }), ErrorKind::InvalidArgument);
    EXPECT_EQ(kind_of([&] { by_arrays.submit_gradient("", 1, parts); }), ErrorKind::InvalidArgument);
    EXPECT_EQ(kind_of([&] { by_arrays.submit_gradient("old", 9, parts); }), ErrorKind::InvalidArgument);
    EXPECT_EQ(by_arrays.stats().rejected, 6u);
  }
  EXPECT_EQ(current_values("by-json"), current_values("by-arrays"));

  const auto snap = registry_->acquire("by-arrays");
  EventContext ctx;
  ctx.domain = "by-arrays";
  ctx.layout = &snap->image->layout();
  const LearningEvent ev = gradient_event("p1", 1, parts, ctx);
  EXPECT_NE(ev.json.find("\"packed\""), std::string::npos);
  EXPECT_EQ(ev.gradient.size(), 2u);
  const LearningEvent replayed = parse_learning_event(ev.json, ctx);
  EXPECT_EQ(replayed.id, "p1");
  EXPECT_EQ(replayed.base_version, 1u);
  EXPECT_EQ(replayed.gradient, ev.gradient);
  EXPECT_EQ(parse_learning_event(json_form("p1"), ctx).gradient, ev.gradient);
  nlohmann::json descending = nlohmann::json::parse(ev.json);
  descending["packed"] = "AAAAAAAAgD8AAAAAAACAPw==";  // index 0 twice
  EXPECT_EQ(kind_of([&] { parse_learning_event(descending.dump(), ctx); }), ErrorKind::InvalidArgument);
}

// A gradient may name a version up to max_staleness behind the current one, whether or not its file is kept,
// and no version not yet published.
TEST_F(TrainerTest, GradientsOnVersionsTooOldOrNotYetPublishedAreRefused) {
  options_.batch_events = 1;
  options_.max_staleness = 3;
  RegistryOptions keep_two{tmp_->path};
  keep_two.keep_versions = 2;  // version 2, three behind version 5, is pruned yet still welcome
  registry_ = std::make_unique<AdapterRegistry>(keep_two, model_);
  registry_->create("stale", options_.create);
  DomainTrainer t(*registry_, model_, tokenizer_, "stale", options_);
  for (int i = 0; i < 4; ++i) t.submit(gradient("e" + std::to_string(i), 0.1f));
  t.flush();
  ASSERT_EQ(t.stats().version, 5u);
  auto on = [&](const std::string& id, uint64_t base) {
    nlohmann::json e = nlohmann::json::parse(gradient(id, 0.1f));
    e["base_version"] = base;
    return e.dump();
  };
  ASSERT_EQ(registry_->manifest("stale").find(2), nullptr);
  EXPECT_EQ(t.submit(on("ok", 2)), SubmitResult::Queued);
  for (const auto& [base, words] : {std::pair<uint64_t, const char*>{1, "more than 3 versions behind the current one (5)"},
                                    {6, "is newer than the adapter's current version 5"}}) {
    try {
      t.submit(on("b" + std::to_string(base), base));
      FAIL() << "base version " << base << " was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  }
}

// Group commit applies a batch before its sync: it is served at once but announced applied only after it is
// announced durable, so a client told "applied" holds an acknowledgement.
TEST_F(TrainerTest, WithFsyncBatchEachBatchIsAnnouncedDurableBeforeApplied) {
  options_.batch_events = 2;
  options_.fsync = FsyncPolicy::Batch;
  options_.group_commit_us = 50'000;  // the sync comes well after the apply
  std::mutex mu;
  std::condition_variable heard;
  std::vector<std::pair<std::string, uint64_t>> told;
  TrainerCallbacks cb;
  cb.on_durable = [&](const std::vector<std::string>&, uint64_t seq) {
    std::lock_guard<std::mutex> lock(mu);
    told.emplace_back("durable", seq);
  };
  cb.on_applied = [&](const BatchReport& r) {
    std::lock_guard<std::mutex> lock(mu);
    told.emplace_back("applied", r.seq);
    heard.notify_all();
  };
  DomainTrainer t(*registry_, model_, tokenizer_, "group", options_, cb);
  for (int i = 0; i < 6; ++i) t.submit(gradient("e" + std::to_string(i), 0.2f));
  t.flush();
  std::unique_lock<std::mutex> lock(mu);
  ASSERT_TRUE(heard.wait_for(lock, std::chrono::seconds(10), [&] { return told.size() == 6; }));
  // One sync may cover several batches; each batch's durable line still precedes its applied line.
  EXPECT_EQ(std::count_if(told.begin(), told.end(), [](const auto& x) { return x.first == "durable"; }), 3);
  for (uint64_t seq = 1; seq <= 3; ++seq) {
    auto at = [&](const std::string& kind) {
      return std::find(told.begin(), told.end(), std::make_pair(kind, seq)) - told.begin();
    };
    EXPECT_LT(at("durable"), at("applied")) << "batch " << seq;
  }
}

// Versions are published without a sync: a current version torn by a power loss is published again from the
// checkpoint when the trainer starts, instead of failing every request for the adapter.
TEST_F(TrainerTest, ATornCurrentVersionIsPublishedAgainFromTheCheckpoint) {
  options_.batch_events = 2;
  {
    DomainTrainer t(*registry_, model_, tokenizer_, "torn", options_);
    for (int i = 0; i < 4; ++i) t.submit(gradient("e" + std::to_string(i), 0.3f));
  }  // stopped: applied and checkpointed
  const std::vector<float> learnt = current_values("torn");
  const AdapterManifest before = registry_->manifest("torn");
  const std::string file = tmp_->path + "/torn/" + before.find(before.current)->file;
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(std::filesystem::file_size(file) / 2));
    f.put('#');
  }
  registry_ = std::make_unique<AdapterRegistry>(RegistryOptions{tmp_->path}, model_);  // nothing in memory
  EXPECT_EQ(kind_of([&] { registry_->acquire("torn"); }), ErrorKind::CorruptFile);
  {
    DomainTrainer t(*registry_, model_, tokenizer_, "torn", options_);
    EXPECT_EQ(t.stats().version, before.current + 1);
  }
  EXPECT_EQ(current_values("torn"), learnt);
}

TEST_F(TrainerTest, CanaryDriftIsTheSameWhateverTheLogitsChunk) {
  registry_->create("d", options_.create);
  const auto snap = registry_->acquire("d");
  const TileLayout layout = snap->image->layout();
  std::vector<float> values = snap->image->values();
  const std::vector<TeacherTargets> anchors = {teacher_targets_for(*model_, {1, 5, 9, 2, 7, 3, 8}, 2, 4),
                                               teacher_targets_for(*model_, {4, 6, 1, 1, 2, 9, 9, 3, 5}, 3, 4)};
  GradientOptions whole, chunked;
  chunked.logits_chunk = 3;  // 4 and 5 positions: the middle chunk holds the end of one and the start of the other
  EXPECT_NEAR(distillation_drift(*model_, layout, values, 1.0, anchors, whole).mean, 0.0, 1e-6);
  for (size_t i = 0; i < values.size(); ++i) values[i] = 0.2f * std::sin(static_cast<float>(i));
  const Drift a = distillation_drift(*model_, layout, values, 1.0, anchors, whole);
  const Drift b = distillation_drift(*model_, layout, values, 1.0, anchors, chunked);
  // The KL is a difference of float32 log-probabilities of size log(vocab); differently shaped matmuls round
  // them differently, by about 1e-7 nats here, while the guard's bounds are tenths of a nat.
  const double tolerance = 1e-6;
  ASSERT_GT(a.mean, 100 * tolerance);
  EXPECT_NEAR(a.mean, b.mean, tolerance);
  EXPECT_NEAR(a.max, b.max, tolerance);
  ASSERT_EQ(a.per_anchor.size(), 2u);
  ASSERT_EQ(b.per_anchor.size(), 2u);
  for (size_t i = 0; i < 2; ++i) EXPECT_NEAR(a.per_anchor[i], b.per_anchor[i], tolerance);
}

}  // namespace
}  // namespace hs
