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
  auto bad = [&](const std::string& why) {
    throw Error(ErrorKind::CorruptFile, "adapter '" + name + "' version " + std::to_string(version) +
                                            " does not fit the model: " + why);
  };
  for (const LoraTensorInfo& t : layout.tensors) {
    if (t.layer >= model.config.num_layers) bad("it has layer " + std::to_string(t.layer));
    const ModuleShape shape = lora_module_shape(model.config, t.module);
    const bool fits = t.is_b ? (t.rows == shape.out && t.cols == layout.rank) : (t.rows == layout.rank && t.cols == shape.in);
    if (!fits) bad(std::string(lora_module_name(t.module)) + (t.is_b ? " B" : " A") + " has the wrong shape");
    if ((t.is_b ? w->b : w->a)[t.layer][static_cast<int>(t.module)].defined())
      bad(std::string(lora_module_name(t.module)) + " appears twice in layer " + std::to_string(t.layer));
    at::Tensor dense = at::zeros({t.rows, t.cols}, at::kFloat);
    scatter_tiles(layout, t, [&](int64_t g) { return image.tile(g); }, dense.data_ptr<float>());
    at::Tensor placed = dense.to(model.device, model.dtype);
    w->bytes += placed.numel() * placed.element_size();
    (t.is_b ? w->b : w->a)[t.layer][static_cast<int>(t.module)] = placed;
  }
  for (int64_t l = 0; l < model.config.num_layers; ++l)
    for (int p = 0; p < kLoraProjections; ++p)
      if (w->a[l][p].defined() != w->b[l][p].defined()) bad("an A without its B, or a B without its A");
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
  batch.uniform = slots.size() == 1 && std::all_of(rows.begin(), rows.end(), [](const LoraWeights* w) { return w; }) &&
                  std::all_of(scale_of.begin(), scale_of.end(), [&](float s) { return s == scale_of[0]; });
  batch.uniform_scale = scale_of[0];

  const int64_t L = model.config.num_layers;
  int64_t rank = 0;
  for (const auto* w : slots) rank = std::max(rank, w->rank);
  batch.a.resize(L);
  batch.b.resize(L);
  for (int64_t l = 0; l < L; ++l)
    for (int p = 0; p < kLoraProjections; ++p) {
      const LoraWeights* shape = nullptr;
      for (const auto* w : slots)
        if (w->a[l][p].defined()) shape = w;
      if (!shape) continue;
      if (slots.size() == 1) {
        batch.a[l][p] = shape->a[l][p];
        batch.b[l][p] = shape->b[l][p];
        continue;
      }
      // Slot s owns rank columns [s * rank, s * rank + its rank); slots without this projection stay zero.
      const int64_t in = shape->a[l][p].size(1), out = shape->b[l][p].size(0);
      at::Tensor a = at::zeros({batch.slots * rank, in}, shape->a[l][p].options());
      at::Tensor b = at::zeros({out, batch.slots * rank}, shape->b[l][p].options());
      for (int64_t s = 0; s < batch.slots; ++s) {
        const LoraWeights& w = *slots[s];
        if (!w.a[l][p].defined()) continue;
        a.narrow(0, s * rank, w.rank).copy_(w.a[l][p]);
        b.narrow(1, s * rank, w.rank).copy_(w.b[l][p]);
      }
      batch.a[l][p] = a;
      batch.b[l][p] = b;
    }
  at::Tensor mask = at::zeros({static_cast<int64_t>(rows.size()), 1, batch.slots * rank}, at::kFloat);
  for (size_t r = 0; r < rows.size(); ++r)
    if (rows[r]) mask[r][0].narrow(0, slot_of[r] * rank, rows[r]->rank).fill_(scale_of[r]);
  batch.row_scale = mask.to(model.device, model.dtype);
  return batch;
}

}  // namespace hs
