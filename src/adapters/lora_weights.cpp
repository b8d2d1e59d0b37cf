#include "adapters/lora_weights.h"

#include <algorithm>

#include "adapters/tile_layout.h"
#include "common/error.h"
#include "model/model.h"
#include "storage/adapter_image.h"

namespace hs {

std::shared_ptr<const LoraWeights> make_lora_weights(const AdapterImage& image, const Model& model, double scale,
                                                     const std::string& name, uint64_t version) {
  const TileLayout& layout = image.layout();
  auto w = std::make_shared<LoraWeights>();
  w->name = name;
  w->version = version;
  w->rank = layout.rank;
  w->scale = scale;
  w->a.resize(model.config.num_layers);
  w->b.resize(model.config.num_layers);
  for (const LoraTensorInfo& t : layout.tensors) {
    if (t.layer >= model.config.num_layers)
      throw Error(ErrorKind::InvalidArgument, "adapter '" + name + "' has layer " + std::to_string(t.layer) +
                                                  " but the model has " + std::to_string(model.config.num_layers));
    at::Tensor dense = at::zeros({t.rows, t.cols}, at::kFloat);
    float* d = dense.data_ptr<float>();
    for (int64_t k = 0; k < t.num_tiles; ++k) {
      const TilePos& p = layout.tiles[t.first_tile + k];
      const float* src = image.tile(t.first_tile + k);
      for (int64_t i = 0; i < kTileSize; ++i)
        std::copy(src + i * kTileSize, src + (i + 1) * kTileSize, d + (p.row * kTileSize + i) * t.cols + p.col * kTileSize);
    }
    at::Tensor placed = dense.to(model.device, model.dtype);
    w->bytes += placed.numel() * placed.element_size();
    (t.is_b ? w->b : w->a)[t.layer][static_cast<int>(t.module)] = placed;
  }
  return w;
}

LoraBatch make_lora_batch(const std::vector<const LoraWeights*>& rows, const std::vector<double>& scales,
                          const Model& model) {
  LoraBatch batch;
  std::vector<const LoraWeights*> slots;
  std::vector<int64_t> slot_of(rows.size(), 0);
  std::vector<float> scale_of(rows.size(), 0.0f);
  for (size_t r = 0; r < rows.size(); ++r) {
    if (!rows[r]) continue;
    auto it = std::find(slots.begin(), slots.end(), rows[r]);
    slot_of[r] = it - slots.begin();
    if (it == slots.end()) slots.push_back(rows[r]);
    scale_of[r] = static_cast<float>(rows[r]->scale * scales[r]);
  }
  batch.slots = static_cast<int64_t>(slots.size());
  if (slots.empty()) return batch;

  const int64_t L = model.config.num_layers;
  int64_t rank = 0;
  for (const auto* w : slots) rank = std::max(rank, w->rank);
  batch.a.resize(L);
  batch.b.resize(L);
  for (int64_t l = 0; l < L; ++l)
    for (int p = 0; p < kLoraProjections; ++p) {
      const at::Tensor* shape_a = nullptr;
      const at::Tensor* shape_b = nullptr;
      for (const auto* w : slots)
        if (w->a[l][p].defined()) {
          shape_a = &w->a[l][p];
          shape_b = &w->b[l][p];
        }
      if (!shape_a) continue;
      if (slots.size() == 1) {
        batch.a[l][p] = shape_a->unsqueeze(0);
        batch.b[l][p] = shape_b->unsqueeze(0);
        continue;
      }
      // Slots without this projection, or with a smaller rank, are zero-padded: zeros add nothing.
      const int64_t in = shape_a->size(1), out = shape_b->size(0);
      at::Tensor a = at::zeros({batch.slots, rank, in}, shape_a->options());
      at::Tensor b = at::zeros({batch.slots, out, rank}, shape_b->options());
      for (int64_t s = 0; s < batch.slots; ++s) {
        const LoraWeights& w = *slots[s];
        if (!w.a[l][p].defined()) continue;
        a[s].narrow(0, 0, w.rank).copy_(w.a[l][p]);
        b[s].narrow(1, 0, w.rank).copy_(w.b[l][p]);
      }
      batch.a[l][p] = a;
      batch.b[l][p] = b;
    }
  batch.slot = at::tensor(slot_of, at::kLong).to(model.device);
  batch.scale = at::tensor(scale_of, at::kFloat).view({-1, 1, 1}).to(model.device, model.dtype);
  return batch;
}

}  // namespace hs
