#include "adapters/scope_index.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <limits>

#include "adapters/scope.h"
#include "common/error.h"
#include "model/forward.h"
#include "model/model.h"

namespace hs {

namespace {

// Taught keys compared with a prompt at a time: bounds the [rows, tokens] similarity matrix.
constexpr int64_t kRowsPerChunk = 8192;

// A taught prompt a general prompt matches this closely cannot be told apart from it: it keeps its own radius
// (nothing is inside it) and does not set the others'.
constexpr double kIndistinct = 0.99;

// The radius each taught prompt is held to: the scope's, the highest of its prompts' own radii. One radius for
// all keeps 99% of unrelated prompts outside where each prompt's own radius keeps 84% (issue 12's evaluation);
// the indistinct keep theirs.
std::vector<float> effective_radii(const AdapterScope& scope) {
  double shared = -1;
  for (const ScopeExample& e : scope.examples)
    if (e.radius < kIndistinct) shared = std::max(shared, e.radius);
  std::vector<float> out;
  for (const ScopeExample& e : scope.examples) out.push_back(static_cast<float>(std::max(e.radius, shared)));
  return out;
}

}  // namespace

at::Tensor scope_keys(const Model& model, const std::vector<int32_t>& tokens, int64_t layers) {
  c10::InferenceMode guard;
  const int64_t T = static_cast<int64_t>(tokens.size());
  const auto i64 = at::TensorOptions().dtype(at::kLong);
  const at::Tensor ids = at::tensor(std::vector<int64_t>(tokens.begin(), tokens.end()), i64).to(model.device);
  const LayerContext ctx = causal_context(model, 1, T);
  at::Tensor x = embed_tokens(model, ids.view({1, T}));
  for (int64_t l = 0; l < std::min(layers, model.config.num_layers); ++l) x = decoder_layer(model, l, x, ctx, nullptr);
  x = x[0].to(at::kFloat);
  return x / x.norm(2, {1}, true).clamp_min(1e-12);
}

ScopeIndex make_scope_index(const AdapterScope& scope, const Model& model) {
  if (scope.dim != model.config.hidden_size)
    throw Error(ErrorKind::InvalidArgument, "the adapter's scope was made with a model of hidden size " +
                                                std::to_string(scope.dim) + ", not this one's " +
                                                std::to_string(model.config.hidden_size));
  ScopeIndex index;
  index.layers = scope.layers;
  const int64_t rows = scope.rows();
  index.keys = at::from_blob(const_cast<float*>(scope.keys.data()), {rows, scope.dim}, at::kFloat)
                   .to(model.device, /*non_blocking=*/false, /*copy=*/true);
  size_t longest = 0;
  for (const ScopeExample& e : scope.examples) longest = std::max(longest, e.rows.size() - e.first);
  std::vector<int64_t> members(scope.examples.size() * longest, rows);
  for (size_t i = 0; i < scope.examples.size(); ++i) {
    const ScopeExample& e = scope.examples[i];
    std::copy(e.rows.begin() + e.first, e.rows.end(), members.begin() + static_cast<std::ptrdiff_t>(i * longest));
  }
  const int64_t n = static_cast<int64_t>(scope.examples.size());
  index.members = at::tensor(members, at::TensorOptions().dtype(at::kLong)).view({n, static_cast<int64_t>(longest)})
                      .to(model.device);
  index.radius = at::tensor(effective_radii(scope), at::TensorOptions().dtype(at::kFloat)).to(model.device);
  for (const ScopeExample& e : scope.examples) {
    const auto outside = [&](int32_t t) { return t < 0 || t >= model.config.vocab_size; };
    if (!valid_memory(e.memory) || std::any_of(e.memory.tokens.begin(), e.memory.tokens.end(), outside))
      throw Error(ErrorKind::CorruptFile, "the adapter's scope recalls a conversation this model cannot be given "
                                          "(tokens outside its vocabulary, or no turns after its opening)");
    index.memory.push_back(e.memory);
    index.prompts.push_back(e.tokens);
  }
  return index;
}

bool starts_with_taught(const ScopeIndex& index, const std::vector<int32_t>& prompt) {
  return std::any_of(index.prompts.begin(), index.prompts.end(), [&](const std::vector<int32_t>& taught) {
    return common_prefix(taught, prompt) == std::min(taught.size(), prompt.size());
  });
}

at::Tensor scope_similarities(const ScopeIndex& index, const at::Tensor& prompt_keys) {
  c10::InferenceMode guard;
  std::vector<at::Tensor> best;  // each taught token's best match
  for (int64_t at_ = 0; at_ < index.keys.size(0); at_ += kRowsPerChunk)
    best.push_back(at::mm(index.keys.narrow(0, at_, std::min(kRowsPerChunk, index.keys.size(0) - at_)),
                          prompt_keys.t())
                       .amax(1));
  best.push_back(at::full({1}, std::numeric_limits<float>::infinity(), index.keys.options()));
  return at::cat(best).index_select(0, index.members.flatten()).view(index.members.sizes()).amin(1);
}

ScopeMatch scope_match(const ScopeIndex& index, const at::Tensor& prompt_keys) {
  if (index.members.size(0) == 0) return {};
  c10::InferenceMode guard;
  const at::Tensor sim = scope_similarities(index, prompt_keys);
  const int64_t e = (sim - index.radius).argmax().item<int64_t>();
  return {sim[e].item<double>(), index.radius[e].item<double>(), e};
}

}  // namespace hs
