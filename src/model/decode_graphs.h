#pragma once
// CUDA graphs of decode steps (every row one token). A step's shapes are fixed per bucket of rows (1, 2, 4, ...
// up to the cache's slots) and its inputs (tokens, slots, positions, key lengths, LoRA scales) live in fixed
// device buffers, so each bucket's step is captured once and then replayed: one launch per step instead of
// about forty per layer. Replays run forward_slots' kernels, except that a LoRA scale shared by every row is
// a multiply by a scale buffer instead of addmm's alpha (a difference of one rounding).
#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "model/forward.h"
#include "model/lora_batch.h"

namespace hs {

class DecodeGraphs {
 public:
  // `cache` must outlive this; its tensors are never reallocated.
  DecodeGraphs(const Model& model, KvCache& cache);
  ~DecodeGraphs();
  DecodeGraphs(const DecodeGraphs&) = delete;
  DecodeGraphs& operator=(const DecodeGraphs&) = delete;

  // Whether a model's decode steps can be captured: on CUDA, through the flash decode path.
  static bool supported(const Model& model);
  // Whether these graphs serve `step`: every row one token, every row's logits wanted, in row order.
  static bool serves(const SlotStep& step);

  // Float32 logits [rows, vocab] on the device, as forward_slots computes them. The bucket's graph is
  // captured first when it has none for this LoRA stack (a stack at other addresses is captured anew; two
  // graphs are kept per bucket). The result is a view of the graph's output, valid until the next call.
  // A failed capture throws; the caller may go on eagerly.
  at::Tensor run(const SlotStep& step, const LoraBatch* lora);

  int64_t captures() const { return captures_; }  // graphs captured so far, recaptures included

 private:
  struct Graph;
  std::unique_ptr<Graph> capture(int64_t bucket, const LoraBatch* lora);
  Graph& graph_for(int64_t bucket, const LoraBatch* lora);
  at::Tensor decode_step(Graph& g, const LoraBatch* lora);

  const Model& model_;
  KvCache& cache_;
  std::pair<unsigned long long, unsigned long long> pool_;  // one memory pool shared by every bucket's graph
  std::map<int64_t, std::vector<std::unique_ptr<Graph>>> graphs_;  // by bucket, most recently used last
  int64_t captures_ = 0;
};

}  // namespace hs
