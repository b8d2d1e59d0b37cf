#include "model/decode_graphs.h"

#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "common/error.h"
#include "model/slot_attention.h"

namespace hs {

namespace {

// The fixed input rows of a graph: [kInputs, bucket] int64 on the device.
enum InputRow : int64_t { kToken, kSlot, kPosition, kKeys, kInputs };

// Graphs kept per bucket: one for steps without adapters and one for the current LoRA stack, so that traffic
// mixing the two does not recapture on every change.
constexpr size_t kGraphsPerBucket = 2;

// A LoRA stack's data addresses and parts: a graph reads the stack it was captured with, so a stack elsewhere
// needs a new capture (one at the same addresses and shapes is read as it is now).
std::vector<const void*> lora_key(const LoraBatch* lora) {
  std::vector<const void*> out;
  if (!lora) return out;
  for (const auto& layer : lora->groups)
    for (const LoraGroup& g : layer) {
      out.push_back(g.a.defined() ? g.a.data_ptr() : nullptr);
      out.push_back(g.b.defined() ? g.b.data_ptr() : nullptr);
      // With the width (part of the key too), the parts give the group's shapes: a stack at recycled
      // addresses with other parts needs its own capture.
      out.push_back(reinterpret_cast<const void*>(static_cast<intptr_t>(g.parts)));
    }
  return out;
}

}  // namespace

struct DecodeGraphs::Graph {
  at::cuda::CUDAGraph graph;
  at::Tensor input;      // [kInputs, bucket] int64
  at::Tensor row_scale;  // [1, bucket, width] in the model's dtype, with a LoRA stack
  at::Tensor logits;     // [bucket, vocab] float32, written by each replay
  std::vector<const void*> lora;
  int64_t width = 0;
};

DecodeGraphs::DecodeGraphs(const Model& model, KvCache& cache)
    : model_(model), cache_(cache), pool_(at::cuda::graph_pool_handle()) {}

DecodeGraphs::~DecodeGraphs() = default;

bool DecodeGraphs::supported(const Model& model) { return flash_decode(model); }

bool DecodeGraphs::serves(const SlotStep& step) {
  const size_t rows = step.row_len.size();
  if (rows == 0 || step.tokens.size() != rows || step.row_slot.size() != rows || step.row_start.size() != rows ||
      step.logits_rows.size() != rows)
    return false;
  for (size_t r = 0; r < rows; ++r)
    if (step.row_len[r] != 1 || step.logits_rows[r] != static_cast<int64_t>(r)) return false;
  return true;
}

// The captured work: the whole decode step, reading only the graph's input buffers.
at::Tensor DecodeGraphs::decode_step(Graph& g, const LoraBatch* lora) {
  SlotAttention a;
  const at::Tensor slot = g.input[kSlot], pos = g.input[kPosition];
  a.write_pos = pos;
  a.write_flat = slot * (cache_.capacity + 1) + pos;
  set_flash_decode(a, cache_, slot, g.input[kKeys]);
  return output_logits(model_, slot_hidden(model_, cache_, a, g.input[kToken], lora));
}

std::unique_ptr<DecodeGraphs::Graph> DecodeGraphs::capture(int64_t bucket, const LoraBatch* lora) {
  auto g = std::make_unique<Graph>();
  g->lora = lora_key(lora);
  const auto i64 = at::TensorOptions().dtype(at::kLong).device(model_.device);
  // Padding rows: token 0 written to slot 0's scratch position, reading one key.
  g->input = at::stack({at::zeros({bucket}, i64), at::zeros({bucket}, i64), at::full({bucket}, cache_.capacity, i64),
                        at::ones({bucket}, i64)});
  // The graph always scales rows through row_scale (LoraBatch's mixed form): a uniform scale is a fill.
  LoraBatch captured;
  if (lora) {
    captured = *lora;
    captured.uniform = false;
    g->width = lora->width;
    g->row_scale = at::zeros({1, bucket, g->width}, at::TensorOptions().dtype(model_.dtype).device(model_.device));
    captured.row_scale = g->row_scale;
  }
  const LoraBatch* used = lora ? &captured : nullptr;
  c10::cuda::device_synchronize();
  c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool();
  c10::cuda::CUDAStreamGuard guard(stream);
  decode_step(*g, used);  // warm-up on the capture stream: library handles and workspaces exist before capture
  stream.synchronize();
  // Thread-local: CUDA calls of other threads (an adapter upload) neither break nor join this capture.
  g->graph.capture_begin(pool_, cudaStreamCaptureModeThreadLocal);
  try {
    g->logits = decode_step(*g, used);
  } catch (...) {
    try {
      g->graph.capture_end();  // ends the capture so that the stream and the allocator leave capture mode
    } catch (...) {
    }
    throw;
  }
  g->graph.capture_end();
  stream.synchronize();
  ++captures_;
  return g;
}

// The bucket's graph for this LoRA stack, most recently used last, capturing it when there is none.
DecodeGraphs::Graph& DecodeGraphs::graph_for(int64_t bucket, const LoraBatch* lora) {
  std::vector<std::unique_ptr<Graph>>& kept = graphs_[bucket];
  const std::vector<const void*> key = lora_key(lora);
  const int64_t width = lora ? lora->width : 0;
  auto it = std::find_if(kept.begin(), kept.end(), [&](const auto& g) { return g->lora == key && g->width == width; });
  std::unique_ptr<Graph> g;
  if (it != kept.end()) {
    g = std::move(*it);
    kept.erase(it);
  } else {
    if (kept.size() >= kGraphsPerBucket) kept.erase(kept.begin());  // its pool memory goes back first
    g = capture(bucket, lora);
  }
  kept.push_back(std::move(g));
  return *kept.back();
}

at::Tensor DecodeGraphs::run(const SlotStep& step, const LoraBatch* lora) {
  const int64_t rows = static_cast<int64_t>(step.tokens.size());
  if (!serves(step) || rows > cache_.rows)
    throw Error(ErrorKind::Internal, "a decode graph got a step that is not " + std::to_string(rows) +
                                         " single-token rows within " + std::to_string(cache_.rows) + " slots");
  int64_t bucket = 1;
  while (bucket < rows) bucket *= 2;
  Graph& g = graph_for(std::min(bucket, cache_.rows), lora);
  bucket = g.input.size(1);
  at::Tensor host = at::empty({kInputs, bucket}, at::kLong);
  auto in = host.accessor<int64_t, 2>();
  for (int64_t r = 0; r < bucket; ++r) {
    const bool real = r < rows;
    const int64_t slot = real ? step.row_slot[r] : 0, start = real ? step.row_start[r] : cache_.capacity;
    if (real) check_row_fits(cache_, static_cast<size_t>(r), slot, start, 1);
    in[kToken][r] = real ? step.tokens[r] : 0;
    in[kSlot][r] = slot;
    in[kPosition][r] = start;
    in[kKeys][r] = real ? start + 1 : 1;
  }
  g.input.copy_(host);
  if (lora) {
    g.row_scale.zero_();
    if (lora->uniform)
      g.row_scale.narrow(1, 0, rows).fill_(lora->uniform_scale);
    else
      g.row_scale.narrow(1, 0, rows).copy_(lora->row_scale);
  }
  g.graph.replay();
  return g.logits.narrow(0, 0, rows);
}

}  // namespace hs
