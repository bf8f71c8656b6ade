// Runs the grid-stride kernels of csrc/kernels on the CPU's threads: blocks are split
// over at::parallel_for, each block's threads run in order. This is the CPU's general
// path for kernels that have no vectorised CPU twin (yet): same code as on the GPU.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "../kernels/common.h"

namespace deconvkernels {

struct ParallelCpuExec {
  struct Guard {
    explicit Guard(c10::Device) {}
  };

  // One "thread" per element, one thread per block: the grid-stride loops then run once
  // each, and the work splits evenly over the cores however small the launch.
  static constexpr unsigned kThreadsPerBlock = 1;
  // No phased (shared-memory) kernels here: the CPU has its own fast kernels for the cases
  // they cover (unpool_deconv_fast.h).
  static constexpr bool kPhasedKernels = false;
  template <class Kernel>
  static void launch_phased(Dim3, Dim3, const typename Kernel::Args&) {
    TORCH_CHECK(false, "ParallelCpuExec runs no phased kernels");
  }
  static int64_t phased_blocks_wanted() {
    return 1;
  }

  static int64_t max_blocks() {
    return int64_t(1) << 30;
  }

  template <class Kernel>
  static void launch(Dim3 grid, Dim3 block, const typename Kernel::Args& args) {
    TORCH_CHECK(grid.y == 1 && grid.z == 1 && block.y == 1 && block.z == 1,
                "ParallelCpuExec runs 1-D grids only");
    const int64_t threads = static_cast<int64_t>(grid.x) * block.x;
    at::parallel_for(0, threads, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const Dim3 b{static_cast<unsigned>(i / block.x), 0, 0};
        const Dim3 t{static_cast<unsigned>(i % block.x), 0, 0};
        Kernel::run(ThreadCoord{b, t, block, grid}, args);
      }
    });
  }

  static void check_device(const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor here, got ", t.device());
  }

  static void check_flag(const at::Tensor& flag, const char* message) {
    TORCH_CHECK(flag.item<int32_t>() == 0, message);
  }
};

}  // namespace deconvkernels
