#include "model/rope_frequencies.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace hs {

namespace {

// theta^(2i / D), i over the dimension pairs: the wavelengths' divisors of 2 pi.
at::Tensor pos_freqs(const ModelConfig& c) {
  const at::Tensor exponents = at::arange(0, c.head_dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(c.head_dim);
  return at::pow(c.rope_theta, exponents);
}

// Python's `scalar / tensor` is tensor.reciprocal() * scalar (ATen's C++ operator divides instead, which may
// round differently): the tables follow Python's order.
at::Tensor scalar_over(double scalar, const at::Tensor& t) { return t.reciprocal() * scalar; }

// transformers' default inverse frequencies.
at::Tensor base_inv_freq(const ModelConfig& c) { return scalar_over(1.0, pos_freqs(c)); }

// _compute_llama3_parameters: long wavelengths divided by the factor, short ones kept, a smooth blend between.
at::Tensor llama3_inv_freq(const at::Tensor& inv_freq, const RopeScaling& s) {
  const double old_context = static_cast<double>(s.original_context);
  const double low_freq_wavelen = old_context / s.low_freq_factor, high_freq_wavelen = old_context / s.high_freq_factor;
  const at::Tensor wavelen = scalar_over(2 * M_PI, inv_freq);
  at::Tensor scaled = at::where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq);
  const at::Tensor smooth =
      (scalar_over(old_context, wavelen) - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
  const at::Tensor smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
  const at::Tensor medium = at::logical_not(wavelen < high_freq_wavelen) * at::logical_not(wavelen > low_freq_wavelen);
  return at::where(medium, smoothed, scaled);
}

// The dimension at which a wavelength makes num_rotations turns over the original context (YaRN's
// find_correction_dim).
double yarn_correction_dim(double num_rotations, int64_t dim, double base, int64_t original_context) {
  return (static_cast<double>(dim) * std::log(static_cast<double>(original_context) / (num_rotations * 2 * M_PI))) /
         (2 * std::log(base));
}

// _compute_yarn_parameters: dimensions below the correction range extrapolate (keep their frequency), those
// above interpolate (divided by the factor), with a linear ramp between.
at::Tensor yarn_inv_freq(const ModelConfig& c) {
  const RopeScaling& s = c.rope_scaling;
  const int64_t dim = c.head_dim;
  const at::Tensor extrapolation = base_inv_freq(c);
  const at::Tensor interpolation = scalar_over(1.0, pos_freqs(c) * s.factor);
  double low = yarn_correction_dim(s.beta_fast, dim, c.rope_theta, s.original_context);
  double high = yarn_correction_dim(s.beta_slow, dim, c.rope_theta, s.original_context);
  if (s.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;  // transformers' guard against a zero-width ramp
  const at::Tensor ramp = ((at::arange(dim / 2, at::kFloat) - low) / (high - low)).clamp(0, 1);
  const at::Tensor extrapolation_factor = 1 - ramp;
  return interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor;
}

}  // namespace

RopeFrequencies rope_frequencies(const ModelConfig& c) {
  const RopeScaling& s = c.rope_scaling;
  RopeFrequencies out;
  switch (s.type) {
    case RopeScalingType::None: out.inv_freq = base_inv_freq(c); break;
    case RopeScalingType::Linear: out.inv_freq = base_inv_freq(c) / s.factor; break;
    case RopeScalingType::Llama3: out.inv_freq = llama3_inv_freq(base_inv_freq(c), s); break;
    case RopeScalingType::Yarn:
      out.inv_freq = yarn_inv_freq(c);
      out.attention_factor = s.attention_factor;
      break;
  }
  if (!s.freq_factors.empty())
    out.inv_freq = out.inv_freq / at::tensor(std::vector<float>(s.freq_factors), at::kFloat);
  return out;
}

}  // namespace hs
