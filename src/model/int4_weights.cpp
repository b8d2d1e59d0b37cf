#include "model/int4_weights.h"

#include <string>

#include "common/error.h"
#include "model/cpu_ops.h"
#include "model/dequantize.h"
#include "model/model.h"

namespace hs {

namespace {

// How torch's packing places codes, which depends on the CPU capability it dispatches to: per block of
// `block_rows` output rows and per input column, a byte holds two rows' codes, row j and j + block_rows / 2
// (AVX512: 64-row blocks; AVX2: 32-row blocks) or rows 2j and 2j + 1 (`pairs`, the portable kernel).
struct PackLayout {
  int64_t block_rows = 0;  // 0: none of the known layouts
  bool pairs = false;
};

at::Tensor unpack_codes(const at::Tensor& packed, int64_t out, int64_t in, PackLayout layout) {
  const at::Tensor b = packed.reshape({out / layout.block_rows, in, layout.block_rows / 2});
  const at::Tensor lo = at::bitwise_and(b, 15).permute({0, 2, 1}), hi = at::bitwise_right_shift(b, 4).permute({0, 2, 1});
  return (layout.pairs ? at::stack({lo, hi}, 2) : at::cat({lo, hi}, 1)).reshape({out, in});  // [out, in] uint8
}

// The layout of this process's packing, found once by packing a probe and recognizing it.
PackLayout pack_layout() {
  static const PackLayout found = [] {
    at::Generator gen = at::detail::createCPUGenerator(11);
    const at::Tensor probe = at::randint(0, 16, {64, 64}, gen, at::TensorOptions().dtype(at::kInt));
    const at::Tensor packed = at::_convert_weight_to_int4pack_for_cpu(probe, 1);
    for (PackLayout l : {PackLayout{64, false}, PackLayout{32, false}, PackLayout{32, true}})
      if (at::equal(unpack_codes(packed, 64, 64, l).to(at::kInt), probe)) return l;
    return PackLayout{};
  }();
  return found;
}

}  // namespace

Int4Codes int4_from_gguf(uint32_t ggml_type, const uint8_t* data, int64_t rows, int64_t cols) {
  Int4Codes c;
  at::Tensor codes = at::empty({rows, cols}, at::kByte);
  at::Tensor scale = at::empty({rows, cols / kInt4Group}, at::kFloat);
  at::Tensor zero = at::empty_like(scale);
  if (!int4_codes(ggml_type, data, rows * cols, codes.data_ptr<uint8_t>(), scale.data_ptr<float>(),
                  zero.data_ptr<float>()))
    return c;
  c.codes = codes;
  c.scale = scale;
  c.zero = zero;
  return c;
}

Int4Codes quantize_int4(const at::Tensor& weight) {
  const int64_t out = weight.size(0), in = weight.size(1);
  at::Tensor g = weight.to(at::kFloat).view({out, in / kInt4Group, kInt4Group});
  at::Tensor lo = std::get<0>(g.min(-1)), hi = std::get<0>(g.max(-1));
  at::Tensor scale = ((hi - lo) / 15).clamp_min(1e-12);
  Int4Codes c;
  c.codes = at::round((g - lo.unsqueeze(-1)) / scale.unsqueeze(-1)).clamp(0, 15).to(at::kByte).view({out, in});
  c.scale = scale;
  c.zero = lo + 8 * scale;
  return c;
}

Int4Codes cat_int4(const std::vector<Int4Codes>& parts) {
  Int4Codes c;
  std::vector<at::Tensor> codes, scale, zero;
  for (const Int4Codes& p : parts) {
    codes.push_back(p.codes);
    scale.push_back(p.scale);
    zero.push_back(p.zero);
  }
  c.codes = at::cat(codes);
  c.scale = at::cat(scale);
  c.zero = at::cat(zero);
  return c;
}

bool int4_kernel_fits(int64_t out, int64_t in) { return out % 64 == 0 && in % kInt4Group == 0; }

void set_int4(Linear& lin, const Int4Codes& c) {
  const int64_t out = c.codes.size(0), in = c.codes.size(1);
  if (!int4_kernel_fits(out, in))
    throw Error(ErrorKind::Internal, "an int4 weight of " + std::to_string(out) + " x " + std::to_string(in) +
                                         " does not fit the kernel's blocks");
  lin.q4 = at::_convert_weight_to_int4pack_for_cpu(c.codes.to(at::kInt), 1);
  // [in / 32, out, 2] in the activations' dtype, as the kernel reads them.
  lin.q4_scale_zero = at::stack({c.scale.t(), c.zero.t()}, -1).to(at::kBFloat16).contiguous();
  lin.weight = at::Tensor();
}

bool int4_gradients_supported() { return pack_layout().block_rows != 0; }

at::Tensor int4_dequantized(const Linear& lin) {
  const PackLayout layout = pack_layout();
  if (layout.block_rows == 0)
    throw Error(ErrorKind::Unsupported, "torch packs int4 weights on this CPU in a layout Hyprstream does not know, so "
                                        "an int4 model cannot run gradient passes here; load it with --quantize none");
  const int64_t out = lin.q4.size(0), in = lin.q4.size(1) * 2;
  const at::Tensor codes = unpack_codes(lin.q4, out, in, layout).view({out, in / kInt4Group, kInt4Group}).to(at::kFloat);
  const at::Tensor sz = lin.q4_scale_zero.to(at::kFloat).permute({1, 0, 2});  // [out, in / 32, 2]
  return ((codes - 8) * sz.select(-1, 0).unsqueeze(-1) + sz.select(-1, 1).unsqueeze(-1)).view({out, in});
}

at::Tensor int4_linear(const at::Tensor& x, const Linear& lin) {
  // The kernel keeps pace with a float32 product at any row count (2 cores, a 3072 x 576 weight: 1 row in 53 us
  // against 140, 128 rows in 2.7 ms against 2.8), but it has no derivative.
  if (tracks_grad(x)) return at::linear(x, int4_dequantized(lin).to(x.scalar_type()));
  return at::_weight_int4pack_mm_for_cpu(x.to(at::kBFloat16).contiguous(), lin.q4, kInt4Group, lin.q4_scale_zero)
      .to(x.scalar_type());
}

}  // namespace hs
