#include "model/cpu_ops.h"

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>

#include <cmath>

namespace hs {

namespace {

// Rows per parallel task: a prefill's rows spread over the threads; a decode step's few stay on one.
constexpr int64_t kRowsPerTask = 64;

}  // namespace

bool tracks_grad(const at::Tensor& x) { return at::GradMode::is_enabled() && x.requires_grad(); }

bool takes_cpu_loops(const at::Tensor& x) {
  return x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() >= 2 && x.stride(-1) == 1 &&
         c10::InferenceMode::is_enabled();
}

at::Tensor cpu_rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const int64_t D = x.size(-1), heads = weight.numel() / D;
  const at::Tensor in = x.reshape({-1, heads, D});  // a view for the step's tensors (rows of heads of D)
  at::Tensor out = at::empty({in.size(0), heads, D}, x.options());
  const at::Tensor w = weight.contiguous();
  const float* wp = w.data_ptr<float>();
  const float* ip = in.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t row_stride = in.stride(0), head_stride = in.stride(1);
  at::parallel_for(0, in.size(0), kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t h = 0; h < heads; ++h) {
        const float* v = ip + r * row_stride + h * head_stride;
        float* o = op + (r * heads + h) * D;
        float sum = 0;
        for (int64_t d = 0; d < D; ++d) sum += v[d] * v[d];
        const float inv = 1.0f / std::sqrt(sum / static_cast<float>(D) + static_cast<float>(eps));
        const float* wr = wp + h * D;
        for (int64_t d = 0; d < D; ++d) o[d] = wr[d] * (v[d] * inv);
      }
  });
  return out.view(x.sizes());
}

at::Tensor cpu_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& signed_sin) {
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3), half = D / 2;
  const at::Tensor in = x.contiguous(), c = cos.contiguous(), s = signed_sin.contiguous();
  at::Tensor out = at::empty_like(in);
  const float *ip = in.data_ptr<float>(), *cp = c.data_ptr<float>(), *sp = s.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, B * T, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t bt = begin; bt < end; ++bt) {
      const float *cr = cp + bt * D, *sr = sp + bt * D;
      for (int64_t h = 0; h < H; ++h) {
        const float* v = ip + (bt * H + h) * D;
        float* o = op + (bt * H + h) * D;
        // roll(x, D / 2): the first half reads the second half, and the second half the first.
        for (int64_t d = 0; d < half; ++d) o[d] = v[d] * cr[d] + v[d + half] * sr[d];
        for (int64_t d = half; d < D; ++d) o[d] = v[d] * cr[d] + v[d - half] * sr[d];
      }
    }
  });
  return out;
}

}  // namespace hs
