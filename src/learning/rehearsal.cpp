#include "learning/rehearsal.h"

#include <algorithm>
#include <random>
#include <utility>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace hs {

void remember(RehearsalMemory& memory, const std::vector<TrainingExample>& taught, size_t capacity, uint64_t seed,
              uint64_t seq) {
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull ^ (seq * 0xC2B2AE3D27D4EB4Full) ^ 0x5245484541525345ull);
  // A capacity lowered since the memory filled keeps `capacity` of its entries chosen at random (a partial
  // Fisher-Yates shuffle): a uniform sample of a uniform sample.
  if (memory.examples.size() > capacity) {
    for (size_t i = 0; i < capacity; ++i)
      std::swap(memory.examples[i],
                memory.examples[std::uniform_int_distribution<size_t>(i, memory.examples.size() - 1)(rng)]);
    memory.examples.resize(capacity);
  }
  for (const TrainingExample& ex : taught) {
    memory.seen += 1;
    if (memory.examples.size() < capacity) {
      memory.examples.push_back(ex);
      continue;
    }
    const uint64_t j = std::uniform_int_distribution<uint64_t>(0, memory.seen - 1)(rng);
    if (j < capacity) memory.examples[static_cast<size_t>(j)] = ex;
  }
}

std::vector<TrainingExample> rehearsed_at(const RehearsalMemory& memory, size_t count, int64_t step) {
  const size_t size = memory.examples.size();
  const size_t n = std::min(count, size);
  std::vector<TrainingExample> out;
  for (size_t i = 0; i < n; ++i) out.push_back(memory.examples[(static_cast<size_t>(step) * n + i) % size]);
  return out;
}

nlohmann::json rehearsal_to_json(const RehearsalMemory& memory) {
  nlohmann::json examples = nlohmann::json::array();
  for (const TrainingExample& ex : memory.examples)
    examples.push_back({{"tokens", ex.tokens}, {"targets", ex.is_target}});
  return {{"seen", memory.seen}, {"examples", std::move(examples)}};
}

RehearsalMemory rehearsal_from_json(const nlohmann::json& j) {
  RehearsalMemory memory;
  try {
    memory.seen = j.at("seen").get<uint64_t>();
    for (const nlohmann::json& e : j.at("examples")) {
      TrainingExample ex{e.at("tokens").get<std::vector<int32_t>>(), e.at("targets").get<std::vector<uint8_t>>()};
      if (ex.tokens.size() != ex.is_target.size() || ex.tokens.size() < 2)
        throw Error(ErrorKind::CorruptFile, "a rehearsed example whose tokens and target marks differ in length");
      bool any = false;
      for (size_t t = 0; t < ex.is_target.size(); ++t) {
        if (ex.is_target[t] > 1 || (t == 0 && ex.is_target[t]) || ex.tokens[t] < 0)
          throw Error(ErrorKind::CorruptFile, "a rehearsed example with an invalid token or target mark");
        any = any || ex.is_target[t];
      }
      if (!any) throw Error(ErrorKind::CorruptFile, "a rehearsed example with nothing to learn");
      memory.examples.push_back(std::move(ex));
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::CorruptFile, std::string("an unreadable rehearsal memory: ") + e.what());
  }
  if (memory.examples.size() > memory.seen)
    throw Error(ErrorKind::CorruptFile, "a rehearsal memory holding more examples than it was ever given");
  return memory;
}

}  // namespace hs
