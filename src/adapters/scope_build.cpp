#include "adapters/scope_build.h"

#include <c10/core/InferenceMode.h>

#include "adapters/scope.h"
#include "adapters/scope_index.h"
#include "model/model.h"

namespace hs {

namespace {

// Per example of `taught`, the highest similarity of a prompt of `general` to it.
std::vector<double> radii(const AdapterScope& taught, const AdapterScope& general, const Model& model) {
  const ScopeIndex index = make_scope_index(taught, model);
  const ScopeIndex others = make_scope_index(general, model);
  at::Tensor highest = at::full({static_cast<int64_t>(taught.examples.size())}, -1.0f, index.keys.options());
  for (size_t g = 0; g < general.examples.size(); ++g) {
    const int64_t n = static_cast<int64_t>(general.examples[g].rows.size() - general.examples[g].first);
    const at::Tensor keys = others.keys.index_select(0, others.members[static_cast<int64_t>(g)].narrow(0, 0, n));
    highest = at::maximum(highest, scope_similarities(index, keys));
  }
  const at::Tensor host = highest.to(at::kDouble).to(at::kCPU).contiguous();
  return {host.data_ptr<double>(), host.data_ptr<double>() + host.numel()};
}

}  // namespace

void add_scope_prompts(AdapterScope& scope, const Model& model, const std::vector<std::vector<int32_t>>& prompts,
                       const AdapterScope* general, const std::vector<ScopeMemory>& memories) {
  c10::InferenceMode guard;
  AdapterScope added{scope.layers, scope.dim, {}, {}};
  for (size_t i = 0; i < prompts.size(); ++i) {
    const std::vector<int32_t>& p = prompts[i];
    if (p.empty()) continue;
    const at::Tensor keys = scope_keys(model, p, scope.layers).to(at::kCPU).contiguous();
    add_scope_example(added, p, keys.data_ptr<float>(), general ? shared_opening(*general, p) : 0, 0,
                      i < memories.size() ? memories[i] : ScopeMemory{});
  }
  if (added.empty()) return;
  const std::vector<double> r =
      general && !general->empty() ? radii(added, *general, model) : std::vector<double>(added.examples.size(), 0);
  for (size_t i = 0; i < added.examples.size(); ++i) {
    const ScopeExample& e = added.examples[i];
    std::vector<float> keys;
    for (uint32_t row : e.rows) {
      const float* k = added.keys.data() + static_cast<size_t>(row) * static_cast<size_t>(added.dim);
      keys.insert(keys.end(), k, k + added.dim);
    }
    add_scope_example(scope, e.tokens, keys.data(), e.first, r[i], e.memory);
  }
}

}  // namespace hs
