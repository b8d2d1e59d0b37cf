#pragma once
// A short identity of a base model, so that an adapter trained on one model is never applied to another.
#include <string>

namespace hs {

struct Model;

// "hs1-" and 16 hex digits: a hash of the architecture's shape and of a sample of the weights (final norm,
// first layer's norms, first 64 embedding rows) rounded to bfloat16, so float32 and bfloat16 loads of the
// same checkpoint agree while fine-tunes and different quantisations of it do not.
std::string model_fingerprint(const Model& model);

}  // namespace hs
