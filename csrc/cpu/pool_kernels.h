// The CPU pooling kernels' interface. Their bodies (pool_kernels_impl.h) are compiled
// once per ISA (csrc/cpu/isa/*.cpp); cpu_isa.cpp picks one table at run time from the
// CPU's features, as ATen's DispatchStub does. Plain pointers only, so the per-ISA
// files need no torch headers beyond ATen's vector and parallel headers.
#pragma once

#include <atomic>
#include <cstdint>

#include "../kernels/common.h"

namespace deconvkernels::cpu {

enum class ScalarKind : int { kFloat, kDouble, kHalf, kBFloat16 };

// Tensors are contiguous, in NCHW or (channels_last) NHWC order, all the same order.
struct PoolKernelArgs {
  ScalarKind dtype;
  bool channels_last;
  int64_t N, C;
  PoolGeom g;
  const void* in;            // x (pool), pooled values (scatter), unpooled grad (gather)
  void* out;                 // y (pool), unpooled (scatter), pooled grad (gather)
  const uint8_t* switches;   // scatter and gather
  uint8_t* out_switches;     // pool
  // The outputs are too large to stay cached: kernels that can may write them with
  // streaming (non-temporal) stores.
  bool stream_outputs;
  // Set by the gathers, and the scatters of geometries other than 2x2 stride 2 inside the
  // input, when a switch names a position outside its window or the input (they check each
  // as they go; the callers check the switches of the 2x2 scatters before, see
  // switch_checks.h).
  std::atomic<bool>* bad_switch;
};

// The geometry of DeconvNet's pools: 2x2 windows, stride 2, inside the input. It has kernels
// of its own at every level.
inline bool is_2x2_stride2_inside(const PoolGeom& g) {
  return g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2 && g.ph == 0 && g.pw == 0 &&
      g.dh == 1 && g.dw == 1 && 2 * g.OH <= g.H && 2 * g.OW <= g.W;
}

struct PoolKernelTable {
  void (*max_pool_forward)(const PoolKernelArgs&);
  // Pooled values -> unpooled through the switches: sum (pool backward) or the last
  // window in raster order (unpool forward).
  void (*switch_scatter)(const PoolKernelArgs&, bool sum);
  // Unpooled -> pooled through the switches (unpool backward).
  void (*switch_gather)(const PoolKernelArgs&, bool only_if_last);
};

#define DK_DECLARE_POOL_TABLE(ISA) \
  namespace ISA {                  \
  const PoolKernelTable& pool_kernel_table(); \
  }

DK_DECLARE_POOL_TABLE(DEFAULT)
#if defined(DK_HAVE_AVX2)
DK_DECLARE_POOL_TABLE(AVX2)
#endif
#if defined(DK_HAVE_AVX512)
DK_DECLARE_POOL_TABLE(AVX512)
#endif
#undef DK_DECLARE_POOL_TABLE

// The table for the ISA in use (see cpu_isa.h).
const PoolKernelTable& pool_kernels();

}  // namespace deconvkernels::cpu
