#include "storage/write_ahead_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common/error.h"
#include "common/fs_util.h"
#include "storage/atomic_file.h"
#include "storage/crc32.h"

namespace hs {

namespace {

constexpr uint32_t kMagic = 0x4C575348;  // "HSWL" little-endian
constexpr size_t kHeaderBytes = 24;
constexpr uint32_t kMaxPayload = 1u << 30;

[[noreturn]] void io_error(const std::string& what, const std::string& path) {
  throw Error(ErrorKind::Io, what + " '" + path + "': " + std::strerror(errno));
}

uint32_t record_crc(uint64_t seq, const char* payload, size_t n) {
  return crc32_update(crc32_update(0, &seq, sizeof(seq)), payload, n);
}

std::string segment_name(uint64_t first_seq) {
  char buf[48];
  std::snprintf(buf, sizeof(buf), "wal-%020llu.log", static_cast<unsigned long long>(first_seq));
  return buf;
}

// Segment files in `dir`, oldest first (the zero-padded names sort by first sequence number).
std::vector<std::string> list_segments(const std::string& dir) {
  std::vector<std::string> out;
  for (const std::string& n : list_directory(dir))
    if (n.size() == 28 && n.rfind("wal-", 0) == 0 && n.compare(24, 4, ".log") == 0) out.push_back(n);
  return out;
}

}  // namespace

FsyncPolicy parse_fsync_policy(const std::string& name) {
  if (name == "always") return FsyncPolicy::Always;
  if (name == "batch") return FsyncPolicy::Batch;
  if (name == "never") return FsyncPolicy::Never;
  throw Error(ErrorKind::InvalidArgument, "fsync policy '" + name + "' is not 'always', 'batch' or 'never'");
}

const char* fsync_policy_name(FsyncPolicy policy) {
  switch (policy) {
    case FsyncPolicy::Always: return "always";
    case FsyncPolicy::Batch: return "batch";
    case FsyncPolicy::Never: return "never";
  }
  return "always";
}

WriteAheadLog::WriteAheadLog(std::string dir, FsyncPolicy policy, std::chrono::microseconds group_commit,
                             std::function<void(uint64_t seq)> on_durable,
                             std::function<void(const std::string& why)> on_sync_failure)
    : dir_(std::move(dir)),
      policy_(policy),
      group_commit_(group_commit),
      on_durable_(std::move(on_durable)),
      on_sync_failure_(std::move(on_sync_failure)) {
  ensure_directory(dir_);
  const std::vector<std::string> segments = list_segments(dir_);
  for (size_t s = 0; s < segments.size(); ++s) {
    const std::string path = dir_ + "/" + segments[s];
    const std::string bytes = read_text_file(path, ErrorKind::CorruptFile);
    const bool last_segment = s + 1 == segments.size();
    size_t pos = 0;
    while (pos < bytes.size()) {
      uint32_t magic = 0, len = 0, crc = 0;
      uint64_t seq = 0;
      bool ok = bytes.size() - pos >= kHeaderBytes;
      if (ok) {
        std::memcpy(&magic, bytes.data() + pos, 4);
        std::memcpy(&len, bytes.data() + pos + 4, 4);
        std::memcpy(&seq, bytes.data() + pos + 8, 8);
        std::memcpy(&crc, bytes.data() + pos + 16, 4);
        ok = magic == kMagic && len <= kMaxPayload && bytes.size() - pos - kHeaderBytes >= len &&
             record_crc(seq, bytes.data() + pos + kHeaderBytes, len) == crc && seq > last_seq_;
      }
      if (!ok) {
        if (!last_segment)
          throw Error(ErrorKind::CorruptFile, "log segment '" + path + "' is damaged at byte " + std::to_string(pos) +
                                                  "; a later segment exists, so this is not a torn write");
        // A torn tail: cut it off so the next record starts on a clean boundary.
        if (::truncate(path.c_str(), static_cast<off_t>(pos)) != 0) io_error("cannot truncate the torn log tail of", path);
        break;
      }
      recovered_.push_back({seq, bytes.substr(pos + kHeaderBytes, len)});
      last_seq_ = seq;
      pos += kHeaderBytes + len;
    }
    bytes_ += pos;  // what is left of the segment once a torn tail is cut
  }
  if (segments.empty()) {
    open_segment(last_seq_ + 1);
  } else {
    segment_ = dir_ + "/" + segments.back();
    fd_ = ::open(segment_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd_ < 0) io_error("cannot open the log segment", segment_);
  }
  durable_seq_ = last_seq_;
  if (policy_ == FsyncPolicy::Batch) syncer_ = std::thread([this] { run_syncer(); });
}

WriteAheadLog::~WriteAheadLog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    written_.notify_all();
  }
  if (syncer_.joinable()) syncer_.join();  // it syncs what is still unsynced first
  if (fd_ >= 0) ::close(fd_);
}

// Batch: waits for a first unsynced record, lets more arrive for up to group_commit, syncs them with one
// fdatasync outside mu_ (appends go on meanwhile), and reports them durable.
void WriteAheadLog::run_syncer() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    written_.wait(lock, [&] { return stopping_ || last_seq_ > durable_seq_; });
    if (last_seq_ <= durable_seq_) return;  // stopping, with nothing left to sync
    if (!stopping_) {
      const auto due = first_unsynced_ + group_commit_;
      lock.unlock();
      std::this_thread::sleep_until(due);
      lock.lock();
    }
    lock.unlock();
    uint64_t through = 0;
    {
      std::lock_guard<std::mutex> sync_lock(sync_mu_);
      int fd = -1;
      {
        std::lock_guard<std::mutex> l(mu_);
        fd = fd_;
        through = last_seq_;
      }
      if (::fdatasync(fd) != 0) {
        // Nothing more is reported durable, and the next append fails with this: the owner stops, and a
        // restart replays what reached the log.
        std::string why;
        {
          std::lock_guard<std::mutex> l(mu_);
          failure_ = why = "cannot sync the log '" + segment_ + "': " + std::strerror(errno);
        }
        if (on_sync_failure_) on_sync_failure_(why);
        return;
      }
    }
    mark_durable(through);
    lock.lock();
  }
}

void WriteAheadLog::mark_durable(uint64_t seq) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (seq <= durable_seq_) return;
    durable_seq_ = seq;
  }
  if (on_durable_) on_durable_(seq);
}

std::vector<WalRecord> WriteAheadLog::recovered(uint64_t after) const {
  std::vector<WalRecord> out;
  for (const WalRecord& r : recovered_)
    if (r.seq > after) out.push_back(r);
  return out;
}

void WriteAheadLog::open_segment(uint64_t first_seq) {
  if (fd_ >= 0) ::close(fd_);
  segment_ = dir_ + "/" + segment_name(first_seq);
  fd_ = ::open(segment_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) io_error("cannot create the log segment", segment_);
  if (policy_ != FsyncPolicy::Never) sync_directory(dir_);  // the segment's name is durable before its records
}

void WriteAheadLog::append(uint64_t seq, std::string_view payload) {
  if (seq <= last_seq_) throw Error(ErrorKind::Internal, "log sequence numbers must increase");
  if (payload.size() > kMaxPayload) throw Error(ErrorKind::InvalidArgument, "a log record is limited to 1 GiB");
  std::string rec(kHeaderBytes, '\0');
  const uint32_t len = static_cast<uint32_t>(payload.size());
  const uint32_t crc = record_crc(seq, payload.data(), payload.size());
  std::memcpy(rec.data(), &kMagic, 4);
  std::memcpy(rec.data() + 4, &len, 4);
  std::memcpy(rec.data() + 8, &seq, 8);
  std::memcpy(rec.data() + 16, &crc, 4);
  rec.append(payload);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!failure_.empty()) throw Error(ErrorKind::Io, failure_);
    if (!write_fully(fd_, rec.data(), rec.size())) io_error("cannot write the log", segment_);
    if (policy_ == FsyncPolicy::Always && ::fdatasync(fd_) != 0) io_error("cannot sync the log", segment_);
    if (last_seq_ == durable_seq_) first_unsynced_ = std::chrono::steady_clock::now();
    last_seq_ = seq;
    bytes_ += rec.size();
    written_.notify_all();
  }
  if (policy_ != FsyncPolicy::Batch) mark_durable(seq);
}

void WriteAheadLog::compact(uint64_t through) {
  uint64_t covered = 0;
  {
    std::lock_guard<std::mutex> sync_lock(sync_mu_);  // no sync runs on the descriptor closed here
    std::lock_guard<std::mutex> lock(mu_);
    const std::vector<std::string> old = list_segments(dir_);
    open_segment(std::max(through, last_seq_) + 1);
    const std::string keep = segment_.substr(dir_.size() + 1);
    bytes_ = 0;
    for (const std::string& n : old)
      if (n != keep && ::unlink((dir_ + "/" + n).c_str()) != 0 && errno != ENOENT) io_error("cannot delete", dir_ + "/" + n);
    sync_directory(dir_);
    recovered_.clear();
    covered = std::min(through, last_seq_);
  }
  mark_durable(covered);
}

}  // namespace hs
