#pragma once
// An append-only log of records, each a sequence number and an opaque payload, in segment files
// wal-<first seq>.log inside one folder. A record reaches the disk before append() returns when the policy is
// Always (fdatasync per append: one per micro-batch, a group commit); with Never the OS decides, which
// survives a killed process but not a power loss. Torch-free.
//
// Record: u32 magic "HSWL", u32 payload bytes, u64 seq, u32 CRC-32 of (seq, payload), u32 zero, payload.
// Opening truncates a torn tail (a record cut short or failing its CRC at the end of the last segment: the
// crash happened while it was written, so it was never acknowledged). Damage anywhere else is CorruptFile.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace hs {

enum class FsyncPolicy { Always, Never };
FsyncPolicy parse_fsync_policy(const std::string& name);  // "always" or "never"

struct WalRecord {
  uint64_t seq = 0;
  std::string payload;
};

class WriteAheadLog {
 public:
  // Opens the log in `dir` (created if missing) and reads every record in it.
  WriteAheadLog(std::string dir, FsyncPolicy policy);
  ~WriteAheadLog();
  WriteAheadLog(const WriteAheadLog&) = delete;
  WriteAheadLog& operator=(const WriteAheadLog&) = delete;

  // The records found when the log was opened, in order; records with seq <= after are left out.
  std::vector<WalRecord> recovered(uint64_t after) const;
  uint64_t last_seq() const { return last_seq_; }

  // Appends a record; seq must exceed every earlier one. Throws Io when the disk refuses it.
  void append(uint64_t seq, std::string_view payload);

  // After a checkpoint covering every record up to `through`: starts a new segment and deletes the older ones.
  void compact(uint64_t through);

  // Bytes in all segments, for metrics.
  uint64_t bytes() const { return bytes_; }

 private:
  void open_segment(uint64_t first_seq);

  std::string dir_;
  FsyncPolicy policy_;
  int fd_ = -1;
  std::string segment_;  // path of the segment being appended to
  uint64_t last_seq_ = 0;
  uint64_t bytes_ = 0;
  std::vector<WalRecord> recovered_;
};

}  // namespace hs
