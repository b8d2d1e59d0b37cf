#include "model/lora_batch.h"

#include <string>

#include "common/error.h"

namespace hs {

namespace {

struct GroupParts {
  int first, count;
};

// Group g fuses projections [first, first + count) in adapter order.
constexpr GroupParts kGroupParts[kLoraGroups] = {{0, 3}, {3, 1}, {4, 2}, {6, 1}};

int64_t projection_out(const ModelConfig& c, int p) {
  switch (p) {
    case 0: return c.num_heads * c.head_dim;
    case 1:
    case 2: return c.num_kv_heads * c.head_dim;
    case 4:
    case 5: return c.intermediate_size;
    default: return c.hidden_size;
  }
}

LoraGroup make_group(const std::array<at::Tensor, kLoraProjections>& a,
                     const std::array<at::Tensor, kLoraProjections>& b, GroupParts parts, int64_t width,
                     const ModelConfig& c) {
  LoraGroup g;
  std::vector<at::Tensor> as;
  for (int p = parts.first; p < parts.first + parts.count; ++p)
    if (a[p].defined()) as.push_back(a[p]);
  if (as.empty()) return g;
  g.parts = static_cast<int64_t>(as.size());
  g.a = as.size() == 1 ? as[0] : at::cat(as, 0);
  // Each part's B padded to the group's columns; zero rows for parts without an adapter.
  std::vector<at::Tensor> rows;
  int64_t column = 0;
  const int64_t columns = g.parts * width;
  for (int p = parts.first; p < parts.first + parts.count; ++p) {
    if (!a[p].defined()) {
      rows.push_back(at::zeros({projection_out(c, p), columns}, as[0].options()));
      continue;
    }
    rows.push_back(column == 0 && columns == width ? b[p] : at::constant_pad_nd(b[p], {column, columns - column - width}));
    column += width;
  }
  g.b = rows.size() == 1 ? rows[0] : at::cat(rows, 0);
  return g;
}

}  // namespace

void set_lora_groups(LoraBatch& batch, const LoraProjections& a, const LoraProjections& b, const ModelConfig& config) {
  batch.groups.assign(a.size(), {});
  batch.width = 0;
  for (const auto& layer : a)
    for (const at::Tensor& t : layer)
      if (t.defined()) {
        if (batch.width != 0 && t.size(0) != batch.width)
          throw Error(ErrorKind::Internal, "LoRA parts of one batch differ in width (" + std::to_string(t.size(0)) +
                                               " against " + std::to_string(batch.width) + ")");
        batch.width = t.size(0);
      }
  for (size_t l = 0; l < a.size(); ++l)
    for (int g = 0; g < kLoraGroups; ++g) batch.groups[l][g] = make_group(a[l], b[l], kGroupParts[g], batch.width, config);
}

}  // namespace hs
