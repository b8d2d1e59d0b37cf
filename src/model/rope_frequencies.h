#pragma once
// RoPE's inverse frequencies for a configuration, scaled as transformers' modeling_rope_utils.py scales them
// (linear, llama3, YaRN), with the op order of its float32 computation so that the tables agree to the bit.
#include <ATen/ATen.h>

#include "model/config.h"

namespace hs {

struct RopeFrequencies {
  at::Tensor inv_freq;            // [head_dim / 2] float32 on the CPU
  double attention_factor = 1.0;  // multiplies cos and sin (YaRN)
};

RopeFrequencies rope_frequencies(const ModelConfig& config);

}  // namespace hs
