#pragma once
// A trainer's whole state at a point in its log: the adapter (pattern and values), AdamW's moments, the ids
// of every event applied, the rehearsal memory (learning/rehearsal.h) and counters. With the log records after
// it, it reproduces the trainer exactly. Torch-free.
//
// In the domain's training folder: checkpoint-<seq>.hsl (an adapter image, storage/adapter_image.h),
// checkpoint-<seq>.state (magic "HSCKPT01", u64 JSON length, JSON, float32 m, float32 v, CRC-32 of all before)
// and CHECKPOINT, a JSON pointer to the current pair, replaced atomically after both are on disk. A trainer
// with a relevance scope also writes checkpoint-<seq>.scope (adapters/scope.h), which the state names.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_set>

#include "adapters/scope.h"
#include "learning/adamw.h"
#include "learning/rehearsal.h"

namespace hs {

class AdapterImage;

struct TrainerCounters {
  uint64_t batches = 0, events_applied = 0, examples = 0, gradients = 0, steps = 0, tokens_trained = 0;
};

struct TrainerCheckpoint {
  uint64_t seq = 0;  // the last log record applied
  std::shared_ptr<const AdapterImage> adapter;
  AdamWState adam;
  TrainerCounters counters;
  std::unordered_set<std::string> ids;
  std::shared_ptr<const AdapterScope> scope;  // null: none
  bool unscoped = false;  // the adapter learnt what no scope describes (learning/trainer.h)
  RehearsalMemory rehearsal;
};

// Writes the checkpoint and then deletes older ones. Throws Io.
void write_checkpoint(const std::string& dir, const TrainerCheckpoint& checkpoint);

// The current checkpoint, or nothing when the folder has none. Throws CorruptFile for a damaged one.
std::optional<TrainerCheckpoint> read_checkpoint(const std::string& dir);

}  // namespace hs
