#pragma once
// An append-only log of records, each a sequence number and an opaque payload, in segment files
// wal-<first seq>.log inside one folder. When a record is durable depends on the policy:
//   Always  on disk before append() returns (an fdatasync per append: one per micro-batch);
//   Batch   group commit: append() returns once the record is written, and the log's own thread syncs
//           everything written so far at most `group_commit` after the first unsynced record (0: at once;
//           what is written during a sync waits for the next), one fdatasync for all of them, then reports
//           them durable (a killed process loses nothing written);
//   Never   the OS decides: survives a killed process, not a power loss.
// Torch-free.
//
// Record: u32 magic "HSWL", u32 payload bytes, u64 seq, u32 CRC-32 of (seq, payload), u32 zero, payload.
// Opening truncates a torn tail (a record cut short or failing its CRC at the end of the last segment: the
// crash happened while it was written, so it was never acknowledged). Damage anywhere else is CorruptFile.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <string_view>
#include <vector>

namespace hs {

enum class FsyncPolicy { Always, Batch, Never };
FsyncPolicy parse_fsync_policy(const std::string& name);  // "always", "batch" or "never"
const char* fsync_policy_name(FsyncPolicy policy);

struct WalRecord {
  uint64_t seq = 0;
  std::string payload;
};

class WriteAheadLog {
 public:
  // Opens the log in `dir` (created if missing) and reads every record in it. `on_durable(seq)` hears that
  // every record through seq is as durable as the policy makes it: from append() (Always, Never), from
  // compact(), or from the log's thread (Batch); `on_sync_failure` hears that the log's thread could not sync
  // (appends fail from then on). Neither may call back into the log.
  WriteAheadLog(std::string dir, FsyncPolicy policy,
                std::chrono::microseconds group_commit = std::chrono::microseconds(0),
                std::function<void(uint64_t seq)> on_durable = {},
                std::function<void(const std::string& why)> on_sync_failure = {});
  ~WriteAheadLog();
  WriteAheadLog(const WriteAheadLog&) = delete;
  WriteAheadLog& operator=(const WriteAheadLog&) = delete;

  // The records found when the log was opened, in order; records with seq <= after are left out.
  std::vector<WalRecord> recovered(uint64_t after) const;
  uint64_t last_seq() const { return last_seq_; }

  // Appends a record; seq must exceed every earlier one. Throws Io when the disk refuses it.
  void append(uint64_t seq, std::string_view payload);

  // After a checkpoint covering every record up to `through`: starts a new segment and deletes the older ones.
  // Their records count as durable from then on (the checkpoint holds them).
  void compact(uint64_t through);

  // Bytes in all segments, for metrics.
  uint64_t bytes() const { return bytes_; }

 private:
  void open_segment(uint64_t first_seq);
  void run_syncer();
  void mark_durable(uint64_t seq);  // mu_ not held

  std::string dir_;
  FsyncPolicy policy_;
  std::chrono::microseconds group_commit_;
  std::function<void(uint64_t)> on_durable_;
  std::function<void(const std::string&)> on_sync_failure_;
  std::mutex sync_mu_;  // held while the syncer syncs, and by compact(), which closes the segment's descriptor
  std::mutex mu_;       // guards the fields below
  std::condition_variable written_;
  int fd_ = -1;
  std::string segment_;  // path of the segment being appended to
  uint64_t last_seq_ = 0, durable_seq_ = 0;
  std::chrono::steady_clock::time_point first_unsynced_;
  uint64_t bytes_ = 0;
  bool stopping_ = false;
  std::string failure_;  // why the syncer stopped; appends fail with it
  std::vector<WalRecord> recovered_;
  std::thread syncer_;  // Batch only
};

}  // namespace hs
