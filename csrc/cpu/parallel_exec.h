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

  // One "thread" per element: the grid-stride loops then run once each.
  static int64_t max_blocks() {
    return int64_t(1) << 30;
  }

  template <class Kernel>
  static void launch(Dim3 grid, Dim3 block, const typename Kernel::Args& args) {
    TORCH_CHECK(grid.y == 1 && grid.z == 1 && block.y == 1 && block.z == 1,
                "ParallelCpuExec runs 1-D grids only");
    at::parallel_for(0, grid.x, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b)
        for (unsigned t = 0; t < block.x; ++t)
          Kernel::run(ThreadCoord{{static_cast<unsigned>(b), 0, 0}, {t, 0, 0}, block, grid}, args);
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
