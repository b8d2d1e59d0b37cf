#pragma once
// Rehearsal (experience replay, as in Rolnick et al. 2019 and Chaudhry et al.'s tiny episodic memories): a
// domain keeps a bounded sample of the examples it was taught, and each later batch's steps add a few of them
// to the loss, so that teaching new facts does not overwrite the ones taught before. The sample is a
// reservoir (Vitter's algorithm R): every example taught so far is in it with equal probability, whatever
// the count, while its capacity stays the same (one raised later takes the next examples whole, so favours
// them until it is full). Its random choices are drawn from (seed, batch), so a replay after a crash rebuilds
// the same memory; it is part of the trainer's checkpoint. Torch-free.
#include <cstdint>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "learning/lora_gradients.h"

namespace hs {

struct RehearsalMemory {
  std::vector<TrainingExample> examples;  // at most the capacity it was last added to with
  uint64_t seen = 0;                       // examples ever offered to it
};

// Offers the batch `seq`'s examples to the memory, in order, after keeping a random `capacity` of its entries
// when it holds more (a bound lowered since).
void remember(RehearsalMemory& memory, const std::vector<TrainingExample>& taught, size_t capacity, uint64_t seed,
              uint64_t seq);

// The `count` examples rehearsed at the optimizer's step `step` (fewer when the memory holds fewer), taken in
// turn, so that consecutive steps go through the whole memory.
std::vector<TrainingExample> rehearsed_at(const RehearsalMemory& memory, size_t count, int64_t step);

// The checkpoint's record of the memory. from_json throws CorruptFile naming what is wrong.
nlohmann::json rehearsal_to_json(const RehearsalMemory& memory);
RehearsalMemory rehearsal_from_json(const nlohmann::json& j);

}  // namespace hs
