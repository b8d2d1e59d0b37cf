#pragma once
// Elementwise steps of a decoder layer as single CPU loops. In a decode step each of them touches a few
// thousand floats, where ATen's cost per op (a few microseconds of dispatch, allocation and iterator setup)
// is most of the time: RMSNorm alone is six ATen ops. They serve float32 tensors in inference passes
// (c10::InferenceMode: serving, scopes). Learning keeps the ATen form, also in its passes without autograd:
// a checkpointed forward must round as the recompute under autograd does, and both as the reference
// implementations the learning tests compare with (the loops sum in another order: a few ulp apart).
#include <ATen/ATen.h>

namespace hs {

// Whether autograd records products with x (so a kernel without a derivative must not be used).
bool tracks_grad(const at::Tensor& x);

// Whether x takes the loops below: a float32 CPU tensor whose last dimension is contiguous, in inference mode.
bool takes_cpu_loops(const at::Tensor& x);

// RMSNorm of x [..., D] with a float32 weight [D], or one row per head ([heads, D], x [..., heads, D]), as
// transformers computes it in float32.
at::Tensor cpu_rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// Rotary embedding of x [B, T, heads, D] with tables [B, T, 1, D] whose sine carries rotate-half's sign
// (forward.cpp: rope): x cos + roll(x, D / 2) sin.
at::Tensor cpu_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& signed_sin);

}  // namespace hs
