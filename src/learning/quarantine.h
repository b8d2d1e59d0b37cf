#pragma once
// What keeps one batch from wedging a domain. A logged batch whose application fails (an exception in the
// gradient or the optimizer, non-finite values, or a process that died while applying it twice: killed for
// memory, say) is set aside with its events and the reason, and training carries on without it. Its events
// are kept, never applied, and their ids may be submitted again. A batch whose new version the publication guard
// refused is set aside the same way, with its figures and the refused candidate (learning/trainer.h). Torch-free.
//
// In the domain's training folder: quarantine/batch-<seq>.json ({"seq", "reason", "ids", "events"}), written
// atomically, and `applying` ({"seq", "attempts"}), present while a batch is being applied.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace hs {

// What the guard measured on a refused candidate.
struct GuardRejection {
  double drift = 0, max_drift = 0;  // the candidate's canary drift and the bound it exceeded
  double worst_canary = 0;          // the largest drift of one canary prompt
  std::string candidate;            // the refused adapter values (an adapter image file)
};

struct QuarantinedBatch {
  uint64_t seq = 0;
  std::string reason;
  std::vector<std::string> ids;
  std::string file;  // where its events are kept
  std::optional<GuardRejection> rejection;  // set when the guard refused it, rather than a failure
};

// A process that dies this many times while applying the same batch has it quarantined at the next start.
constexpr int kMaxApplyAttempts = 2;

// Writes the batch's record (payload: its events, one per line). Throws Io.
QuarantinedBatch quarantine_batch(const std::string& training_dir, uint64_t seq, const std::string& reason,
                                  const std::string& payload, const std::vector<std::string>& ids,
                                  const std::optional<GuardRejection>& rejection = std::nullopt);

// Where the candidate refused for batch `seq` is kept: quarantine/candidate-<seq>.hsl.
std::string rejected_candidate_path(const std::string& training_dir, uint64_t seq);

// The batches quarantined so far, by log position. Throws CorruptFile for an unreadable record.
std::map<uint64_t, QuarantinedBatch> read_quarantine(const std::string& training_dir);

// The batch being applied and how many processes have started applying it. Written without fsync: it guards
// against a process dying, which the page cache survives.
struct ApplyAttempt {
  uint64_t seq = 0;
  int attempts = 0;
};
std::optional<ApplyAttempt> read_apply_attempt(const std::string& training_dir);
void begin_apply_attempt(const std::string& training_dir, const ApplyAttempt& attempt);
void end_apply_attempt(const std::string& training_dir);

}  // namespace hs
