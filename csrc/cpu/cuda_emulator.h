// A CPU executor for the CUDA kernels of csrc/kernels (see csrc/cuda/pool_launchers.h).
// It runs every thread of every block, in order, on CPU tensors. Kernels with barriers
// are written as phases; this executor runs one phase for all threads of a block before
// the next, which is what __syncthreads guarantees. The grid is kept small on purpose
// so that grid-stride loops wrap several times in the tests.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstring>
#include <memory>
#include <vector>

#include "../kernels/common.h"
#include "emulator_switches.h"

namespace deconvkernels {

struct EmulatedExec {
  struct Guard {
    explicit Guard(c10::Device) {}
  };

  static constexpr unsigned kThreadsPerBlock = 256;  // as CudaExec

  static int64_t max_blocks() {
    return 7;
  }

  static bool fast_unravel_allowed() {
    return cpu::emulator_fast_unravel().load(std::memory_order_relaxed);
  }

  template <class Kernel>
  static void launch(Dim3 grid, Dim3 block, const typename Kernel::Args& args) {
    for (unsigned bz = 0; bz < grid.z; ++bz)
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx)
          for (unsigned tz = 0; tz < block.z; ++tz)
            for (unsigned ty = 0; ty < block.y; ++ty)
              for (unsigned tx = 0; tx < block.x; ++tx)
                Kernel::run(ThreadCoord{{bx, by, bz}, {tx, ty, tz}, block, grid}, args);
  }

  // Kernels with barriers (Kernel::phase, num_phases, Shared, State; see
  // unpool_deconv_tiled.h): per block, one Shared and one State per thread; every thread
  // runs phase p before any runs phase p + 1.
  static constexpr bool kPhasedKernels = true;
  // Small, so that the tests' shapes split the tiled grad-weight's reduction (and some do
  // not): see phased_blocks_wanted in cuda_ops.cu.
  static int64_t phased_blocks_wanted() {
    return 6;
  }
  template <class Kernel>
  static void launch_phased(Dim3 grid, Dim3 block, const typename Kernel::Args& args) {
    const int64_t threads = static_cast<int64_t>(block.x) * block.y * block.z;
    const int64_t phases = Kernel::num_phases(args);
    auto shared = std::make_unique<typename Kernel::Shared>();
    std::vector<typename Kernel::State> states(threads);
    for (unsigned bz = 0; bz < grid.z; ++bz)
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          // garbage, as a GPU's uninitialised shared memory and registers would hold
          std::memset(static_cast<void*>(shared.get()), 0xA5, sizeof(typename Kernel::Shared));
          std::memset(static_cast<void*>(states.data()), 0xA5,
                      sizeof(typename Kernel::State) * states.size());
          for (int64_t p = 0; p < phases; ++p)
            for (unsigned tz = 0; tz < block.z; ++tz)
              for (unsigned ty = 0; ty < block.y; ++ty)
                for (unsigned tx = 0; tx < block.x; ++tx) {
                  const int64_t tid = (static_cast<int64_t>(tz) * block.y + ty) * block.x + tx;
                  Kernel::phase(p, ThreadCoord{{bx, by, bz}, {tx, ty, tz}, block, grid}, args,
                                *shared, states[tid]);
                }
        }
  }

  static void check_device(const at::Tensor& t, const char* name) {
    TORCH_CHECK(
        t.device().is_cpu(), name, ": the emulated CUDA ops take CPU tensors, got ", t.device());
  }

  static void check_flag(const at::Tensor& flag, const char* message) {
    TORCH_CHECK(flag.item<int32_t>() == 0, message);
  }
};

}  // namespace deconvkernels
