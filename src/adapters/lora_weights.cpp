#include "adapters/lora_weights.h"

#include <algorithm>

#include "adapters/scope.h"
#include "adapters/tile_layout.h"
#include "common/error.h"
#include "model/model.h"
#include "storage/adapter_image.h"

namespace hs {

std::shared_ptr<const LoraWeights> make_lora_weights(const AdapterImage& image, const Model& model, double scale,
                                                     const std::string& name, uint64_t version,
                                                     const AdapterScope* scope) {
  const TileLayout& layout = image.layout();
  auto w = std::make_shared<LoraWeights>();
  w->name = name;
  w->version = version;
  w->key = name + "@" + std::to_string(version) + "#" + std::to_string(image.crc32());
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
  if (scope && !scope->empty()) {
    w->scope = std::make_shared<const ScopeIndex>(make_scope_index(*scope, model));
    for (const at::Tensor& t : {w->scope->keys, w->scope->members, w->scope->radius})
      w->bytes += static_cast<size_t>(t.numel()) * t.element_size();
  }
  return w;
}

LoraBatch stack_adapters(const std::vector<const LoraWeights*>& slots, const Model& model) {
  LoraBatch batch;
  batch.slots = static_cast<int64_t>(slots.size());
  if (slots.empty()) return batch;
  const int64_t L = model.config.num_layers;
  int64_t rank = 0;
  for (const auto* w : slots) rank = std::max(rank, w->rank);
  LoraProjections stacked_a(L), stacked_b(L);
  for (int64_t l = 0; l < L; ++l)
    for (int p = 0; p < kLoraProjections; ++p) {
      const LoraWeights* shape = nullptr;
      for (const auto* w : slots)
        if (w->a[l][p].defined()) shape = w;
      if (!shape) continue;
      if (slots.size() == 1) {
        stacked_a[l][p] = shape->a[l][p];
        stacked_b[l][p] = shape->b[l][p];
        continue;
      }
      // Slots without this projection stay zero.
      const int64_t in = shape->a[l][p].size(1), out = shape->b[l][p].size(0);
      at::Tensor a = at::zeros({batch.slots * rank, in}, shape->a[l][p].options());
      at::Tensor b = at::zeros({out, batch.slots * rank}, shape->b[l][p].options());
      for (int64_t s = 0; s < batch.slots; ++s) {
        const LoraWeights& w = *slots[s];
        if (!w.a[l][p].defined()) continue;
        a.narrow(0, s * rank, w.rank).copy_(w.a[l][p]);
        b.narrow(1, s * rank, w.rank).copy_(w.b[l][p]);
      }
      stacked_a[l][p] = a;
      stacked_b[l][p] = b;
    }
  set_lora_groups(batch, stacked_a, stacked_b, model.config);
  return batch;
}

void set_lora_scales(LoraBatch& batch, const std::vector<const LoraWeights*>& slots,
                     const std::vector<int64_t>& slot_of, const std::vector<double>& scale_of, bool per_token,
                     const Model& model) {
  const int64_t n = static_cast<int64_t>(slot_of.size());
  std::vector<float> scales(n, 0.0f);
  for (int64_t i = 0; i < n; ++i)
    if (slot_of[i] >= 0) scales[i] = static_cast<float>(slots[slot_of[i]]->scale * scale_of[i]);
  batch.uniform = slots.size() == 1 && std::all_of(slot_of.begin(), slot_of.end(), [](int64_t s) { return s >= 0; }) &&
                  std::all_of(scales.begin(), scales.end(), [&](float s) { return s == scales[0]; });
  batch.uniform_scale = n > 0 ? scales[0] : 0.0f;
  if (batch.uniform || slots.empty()) return;
  int64_t rank = 0;
  for (const auto* w : slots) rank = std::max(rank, w->rank);
  at::Tensor mask = at::zeros({n, batch.slots * rank}, at::kFloat);
  for (int64_t i = 0; i < n; ++i)
    if (slot_of[i] >= 0) mask[i].narrow(0, slot_of[i] * rank, slots[slot_of[i]]->rank).fill_(scales[i]);
  mask = per_token ? mask.unsqueeze(0) : mask.unsqueeze(1);
  batch.row_scale = mask.to(model.device, model.dtype);
}

LoraBatch make_lora_batch(const std::vector<const LoraWeights*>& rows, const std::vector<double>& scales,
                          const Model& model) {
  std::vector<const LoraWeights*> slots;
  std::vector<int64_t> slot_of(rows.size(), -1);
  for (size_t r = 0; r < rows.size(); ++r) {
    if (!rows[r]) continue;
    auto it = std::find(slots.begin(), slots.end(), rows[r]);
    slot_of[r] = it - slots.begin();
    if (it == slots.end()) slots.push_back(rows[r]);
  }
  LoraBatch batch = stack_adapters(slots, model);
  set_lora_scales(batch, slots, slot_of, scales, false, model);
  return batch;
}

}  // namespace hs
