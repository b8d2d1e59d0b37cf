#include "model/ggml_rows.h"

#include <ATen/Parallel.h>

#include <mutex>
#include <string>
#include <vector>

#include "common/error.h"

#ifdef HYPRSTREAM_HAVE_GGML
#include <ggml-cpu.h>
#include <ggml.h>
#endif

namespace hs {

#ifdef HYPRSTREAM_HAVE_GGML

namespace {

// ggml's CPU tables (half-precision conversion among them) are filled once before any dot product.
const ggml_type_traits_cpu* cpu_traits(int32_t type) {
  static std::once_flag once;
  std::call_once(once, [] { ggml_cpu_init(); });
  return ggml_get_type_traits_cpu(static_cast<ggml_type>(type));
}

bool has_dot(int32_t type) {
  if (type < 0 || type >= GGML_TYPE_COUNT) return false;
  if (!ggml_get_type_traits(static_cast<ggml_type>(type))->is_quantized) return false;
  const ggml_type_traits_cpu* t = cpu_traits(type);
  return t->vec_dot && cpu_traits(t->vec_dot_type)->from_float;
}


}  // namespace

// Also initializes ggml's CPU tables, at load rather than at the first product (the init sets environment
// variables, which must not race with other threads reading theirs).
bool ggml_available() { return cpu_traits(GGML_TYPE_Q8_0) != nullptr; }

GgmlRows ggml_rows_from_gguf(uint32_t type, const uint8_t* data, int64_t rows, int64_t cols) {
  const int32_t t = static_cast<int32_t>(type);
  if (!has_dot(t) || cols % ggml_blck_size(static_cast<ggml_type>(t)) != 0) return {};
  const auto row_bytes = static_cast<int64_t>(ggml_row_size(static_cast<ggml_type>(t), cols));
  return {at::from_blob(const_cast<uint8_t*>(data), {rows, row_bytes}, at::kByte), t, cols};
}

GgmlRows ggml_rows_q8_0(const at::Tensor& weight) {
  const at::Tensor f = weight.to(at::kFloat).contiguous();
  const int64_t rows = f.size(0), cols = f.size(1);
  GgmlRows r{at::empty({rows, static_cast<int64_t>(ggml_row_size(GGML_TYPE_Q8_0, cols))}, at::kByte), GGML_TYPE_Q8_0,
             cols};
  ggml_quantize_chunk(GGML_TYPE_Q8_0, f.data_ptr<float>(), r.bytes.data_ptr<uint8_t>(), 0, rows, cols, nullptr);
  return r;
}

at::Tensor ggml_matmul(const at::Tensor& x, const GgmlRows& w) {
  if (!x.device().is_cpu() || x.dim() != 2 || x.size(1) != w.cols)
    throw Error(ErrorKind::Internal, "ggml_matmul takes CPU rows of " + std::to_string(w.cols) + " values");
  const ggml_type_traits_cpu* t = cpu_traits(w.type);
  const ggml_type act = t->vec_dot_type;
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const int64_t M = xf.size(0), N = w.bytes.size(0), K = w.cols, row_bytes = w.bytes.size(1);
  const size_t act_bytes = ggml_row_size(act, K);
  std::vector<uint8_t> xq(act_bytes * M);
  const ggml_from_float_t quantize = cpu_traits(act)->from_float;
  for (int64_t m = 0; m < M; ++m) quantize(xf.data_ptr<float>() + m * K, xq.data() + m * act_bytes, K);
  at::Tensor y = at::empty({M, N}, at::kFloat);
  float* yp = y.data_ptr<float>();
  const uint8_t* wp = w.bytes.data_ptr<uint8_t>();
  // Output rows in blocks across the threads; every row of x per weight row, while that row is in cache.
  at::parallel_for(0, N, 256, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n)
      for (int64_t m = 0; m < M; ++m)
        t->vec_dot(static_cast<int>(K), yp + m * N + n, 0, wp + n * row_bytes, 0, xq.data() + m * act_bytes, 0, 1);
  });
  return y;
}

at::Tensor ggml_dequantize_rows(const GgmlRows& w, const at::Tensor& index) {
  const ggml_to_float_t to_float = ggml_get_type_traits(static_cast<ggml_type>(w.type))->to_float;
  const at::Tensor idx = index.defined() ? index.to(at::kLong).contiguous() : at::arange(w.bytes.size(0), at::kLong);
  const int64_t n = idx.size(0), row_bytes = w.bytes.size(1);
  at::Tensor out = at::empty({n, w.cols}, at::kFloat);
  const int64_t* ip = idx.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i)
    if (ip[i] < 0 || ip[i] >= w.bytes.size(0))
      throw Error(ErrorKind::InvalidArgument, "row " + std::to_string(ip[i]) + " is outside a table of " +
                                                  std::to_string(w.bytes.size(0)) + " rows");
  // All rows (a gradient pass's weight) are many: spread them over the threads.
  at::parallel_for(0, n, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      to_float(w.bytes.data_ptr<uint8_t>() + ip[i] * row_bytes, out.data_ptr<float>() + i * w.cols, w.cols);
  });
  return out;
}

#else

bool ggml_available() { return false; }

GgmlRows ggml_rows_from_gguf(uint32_t, const uint8_t*, int64_t, int64_t) { return {}; }

namespace {
[[noreturn]] void no_ggml() {
  throw Error(ErrorKind::Internal,
              "this build has no ggml (ggml_available() is false): callers keep torch's int8 form");
}
}  // namespace

GgmlRows ggml_rows_q8_0(const at::Tensor&) { no_ggml(); }
at::Tensor ggml_matmul(const at::Tensor&, const GgmlRows&) { no_ggml(); }
at::Tensor ggml_dequantize_rows(const GgmlRows&, const at::Tensor&) { no_ggml(); }

#endif

}  // namespace hs
