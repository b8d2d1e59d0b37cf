#include "learning/adamw.h"

#include <cmath>
#include <string>

#include "common/error.h"

namespace hs {

void validate_adamw_options(const AdamWOptions& o) {
  auto bad = [](const std::string& what) { throw Error(ErrorKind::InvalidArgument, what); };
  if (!(o.lr > 0) || !std::isfinite(o.lr)) bad("the learning rate must be a positive number");
  if (!(o.beta1 >= 0 && o.beta1 < 1) || !(o.beta2 >= 0 && o.beta2 < 1)) bad("AdamW betas must lie in [0, 1)");
  if (!(o.eps > 0)) bad("AdamW eps must be positive");
  if (!(o.weight_decay >= 0) || !std::isfinite(o.weight_decay)) bad("weight decay must be zero or positive");
}

void adamw_step(const AdamWOptions& o, AdamWState& state, std::vector<float>& values, const std::vector<float>& grads) {
  if (grads.size() != values.size()) throw Error(ErrorKind::Internal, "AdamW: gradient and value counts differ");
  if (state.m.empty()) {
    state.m.assign(values.size(), 0.0f);
    state.v.assign(values.size(), 0.0f);
  }
  if (state.m.size() != values.size()) throw Error(ErrorKind::Internal, "AdamW: state and value counts differ");
  state.step += 1;
  // Scalars as torch computes them (in double, on the Python side), applied in float like its CPU kernels.
  const double bias1 = 1.0 - std::pow(o.beta1, static_cast<double>(state.step));
  const double bias2 = 1.0 - std::pow(o.beta2, static_cast<double>(state.step));
  const float decay = static_cast<float>(1.0 - o.lr * o.weight_decay);
  const float w1 = static_cast<float>(1.0 - o.beta1);
  const float b2 = static_cast<float>(o.beta2), w2 = static_cast<float>(1.0 - o.beta2);
  const float step_size = static_cast<float>(o.lr / bias1);
  const float bias2_sqrt = static_cast<float>(std::sqrt(bias2));
  const float eps = static_cast<float>(o.eps);
  float* p = values.data();
  float* m = state.m.data();
  float* v = state.v.data();
  const float* g = grads.data();
  for (size_t i = 0, n = values.size(); i < n; ++i) {
    p[i] *= decay;
    m[i] += w1 * (g[i] - m[i]);  // lerp towards the gradient, as torch's exp_avg.lerp_(grad, 1 - beta1)
    v[i] = v[i] * b2 + w2 * g[i] * g[i];
    const float denom = std::sqrt(v[i]) / bias2_sqrt + eps;
    p[i] -= step_size * (m[i] / denom);
  }
}

}  // namespace hs
