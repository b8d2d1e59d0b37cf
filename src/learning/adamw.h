#pragma once
// AdamW (Loshchilov & Hutter) over an adapter's active values only: the moment estimates are kept for the
// entries of the sparsity pattern and nowhere else, so optimizer state is as sparse as the adapter.
// Torch-free; the arithmetic follows torch.optim.AdamW (single-tensor form) step for step.
#include <cstdint>
#include <vector>

namespace hs {

struct AdamWOptions {
  double lr = 1e-4;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

struct AdamWState {
  int64_t step = 0;
  std::vector<float> m, v;  // first and second moments, one per active value
};

// Throws InvalidArgument for a learning rate, betas or eps outside their ranges.
void validate_adamw_options(const AdamWOptions& options);

// One step: values -= lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * values). `state` grows to the size
// of `values` on the first step.
void adamw_step(const AdamWOptions& options, AdamWState& state, std::vector<float>& values,
                const std::vector<float>& grads);

}  // namespace hs
