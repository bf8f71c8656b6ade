// Vectorised CPU forward of the fused unpool + transposed convolution for DeconvNet's
// case: 2x2 stride-2 pool windows inside the input, and a stride-1, dilation-1,
// ungrouped transposed convolution (any kernel and padding). It walks the pooled values
// only: after a 2x2 unpool one position in four is non-zero, so it does a quarter of a
// dense transposed convolution's multiply-adds and never builds the unpooled map.
// Compiled per ISA like the pooling kernels (csrc/cpu/isa/unpool_deconv_kernels_*.cpp).
#pragma once

#include <algorithm>
#include <cstdint>

#include "../kernels/common.h"
#include "pool_kernels.h"

namespace deconvkernels::cpu {

struct UnpoolDeconvFastArgs {
  ScalarKind dtype;
  int64_t N, Cin, Cout;
  int64_t H, W, OH, OW;  // unpooled and pooled extents
  int64_t kh, kw, ph, pw, Ho, Wo;
  const void* y;           // (N, Cin, OH, OW), strides ys
  Strides4 ys;
  const uint8_t* switches;  // strides ss
  Strides4 ss;
  const void* weight_t;    // accumulation type, (kh, kw, Cin, Cout) contiguous
  const void* bias;        // accumulation type, (Cout,), or null
  void* out;               // (N, Cout, Ho, Wo), strides os
  Strides4 os;
};

// The backward passes read grad_output as (N, Ho, Wo, Cout) contiguous in the
// accumulation type (`grad_nhwc`); grad_y reads the weight as the forward (`weight_t`).
// With bf16_operands the bfloat16 kernels read it zero-padded instead, as
// (N, pad_top + Ho + ..., pad_left + Wo + ..., Cout) of rows `padded_w` pixels wide
// (grad_padding), so that every tap of every pooled value has a row to read.
struct UnpoolDeconvFastGrads {
  const void* grad_nhwc;
  int64_t pad_top = 0, pad_left = 0, padded_h = 0, padded_w = 0;
  void* grad_y;        // (N, Cin, OH, OW) of y's dtype, strides gys
  Strides4 gys;
  void* grad_weight_c; // accumulation type, (Cin, kh, kw, Cout) contiguous, zeroed
  void* grad_weight;   // y's dtype, (Cin, Cout, kh, kw) contiguous: see weight_grad_direct
};

// When the whole batch's grad_output slice for one block of output channels fits in L2
// (small maps: DeconvNet's 14x14 and 28x28 layers), the weight gradient is accumulated
// over the batch in registers and stored once, converted, straight into the
// (Cin, Cout, kh, kw) result: no zeroed buffer, no relayout afterwards. Otherwise it is
// accumulated into `grad_weight_c` in passes. The block is at most 32 lanes.
// Zero rows and columns around grad_output that the taps of pooled values can reach:
// {top, bottom, left, right}.
inline void grad_padding(const UnpoolDeconvFastArgs& a, int64_t pad[4]) {
  // output row of tap ka of unpooled row ih: ih - ph + ka, for ih in [0, 2 OH), ka < kh
  pad[0] = std::max<int64_t>(0, a.ph);
  pad[1] = std::max<int64_t>(0, 2 * a.OH - 1 - a.ph + a.kh - 1 - (a.Ho - 1));
  pad[2] = std::max<int64_t>(0, a.pw);
  pad[3] = std::max<int64_t>(0, 2 * a.OW - 1 - a.pw + a.kw - 1 - (a.Wo - 1));
}

inline bool weight_grad_direct(const UnpoolDeconvFastArgs& a, int64_t acc_bytes) {
  return a.N * a.Ho * a.Wo * 32 * acc_bytes <= (int64_t(256) << 10);
}

struct UnpoolDeconvKernelTable {
  // For bfloat16 the kernels take `weight_t` and `grad_nhwc` in bfloat16 (the dot-product
  // kernels multiply bfloat16 pairs), not in the accumulation type.
  bool bf16_operands;
  void (*forward)(const UnpoolDeconvFastArgs&);
  void (*backward_y)(const UnpoolDeconvFastArgs&, const UnpoolDeconvFastGrads&);
  // Needs kh == kw, 1 or 3 (the register tile is sized at compile time).
  void (*backward_weight)(const UnpoolDeconvFastArgs&, const UnpoolDeconvFastGrads&);
};

#define DK_DECLARE_UD_TABLE(ISA) \
  namespace ISA {                \
  const UnpoolDeconvKernelTable& unpool_deconv_kernel_table(); \
  }
DK_DECLARE_UD_TABLE(DEFAULT)
#if defined(DK_HAVE_AVX2)
DK_DECLARE_UD_TABLE(AVX2)
#endif
#if defined(DK_HAVE_AVX512)
DK_DECLARE_UD_TABLE(AVX512)
#endif
#if defined(DK_HAVE_AVX512_BF16)
DK_DECLARE_UD_TABLE(AVX512_BF16)
#endif
#undef DK_DECLARE_UD_TABLE

const UnpoolDeconvKernelTable& unpool_deconv_kernels();

}  // namespace deconvkernels::cpu
