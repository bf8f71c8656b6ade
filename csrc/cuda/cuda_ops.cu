// CUDA registrations of every op: the shared launchers (pool_launchers.h,
// unpool_deconv_launchers.h) over a real launch of the host-device kernels in
// csrc/kernels/. One .cu file on purpose: each costs minutes of nvcc per arch.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraphsUtils.cuh>
#include <ATen/ops/_assert_async.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>

#include "pool_launchers.h"
#include "unpool_deconv_launchers.h"

namespace deconvkernels {
namespace {

template <class Kernel>
__global__ void grid_stride_entry(const typename Kernel::Args args) {
  const ThreadCoord t{
      {blockIdx.x, blockIdx.y, blockIdx.z},
      {threadIdx.x, threadIdx.y, threadIdx.z},
      {blockDim.x, blockDim.y, blockDim.z},
      {gridDim.x, gridDim.y, gridDim.z}};
  Kernel::run(t, args);
}

// Kernels with barriers: the phases of Kernel::phase in order, __syncthreads() after each
// (the CPU emulator runs them the same way; see unpool_deconv_tiled.h).
template <class Kernel>
__global__ void phased_entry(const typename Kernel::Args args) {
  __shared__ typename Kernel::Shared shared;
  typename Kernel::State state;
  const ThreadCoord t{
      {blockIdx.x, blockIdx.y, blockIdx.z},
      {threadIdx.x, threadIdx.y, threadIdx.z},
      {blockDim.x, blockDim.y, blockDim.z},
      {gridDim.x, gridDim.y, gridDim.z}};
  const int64_t phases = Kernel::num_phases(args);
  for (int64_t p = 0; p < phases; ++p) {
    Kernel::phase(p, t, args, shared, state);
    __syncthreads();
  }
}

// Data-dependent checks (a switch outside its window) read one flag back, which
// synchronises. DECONVKERNELS_CUDA_ASYNC_CHECKS=1, or a CUDA graph being captured, turns
// that into a device-side assertion instead (PyTorch's own convention for bad indices):
// no synchronisation, but the error surfaces later and poisons the CUDA context.
bool async_checks() {
  static const bool from_env = [] {
    const char* v = std::getenv("DECONVKERNELS_CUDA_ASYNC_CHECKS");
    return v != nullptr && std::strcmp(v, "0") != 0 && std::strcmp(v, "") != 0;
  }();
  return from_env ||
      at::cuda::currentStreamCaptureStatus() != at::cuda::CaptureStatus::None;
}

int64_t multiprocessors() {
  return static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
}

struct CudaExec {
  using Guard = c10::cuda::CUDAGuard;
  static constexpr unsigned kThreadsPerBlock = 256;

  static int64_t max_blocks() {
    return multiprocessors() * 32;
  }

  static constexpr bool fast_unravel_allowed() {
    return true;
  }

  template <class Kernel>
  static void launch(Dim3 grid, Dim3 block, const typename Kernel::Args& args) {
    grid_stride_entry<Kernel><<<
        dim3(grid.x, grid.y, grid.z), dim3(block.x, block.y, block.z), 0,
        at::cuda::getCurrentCUDAStream()>>>(args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  static constexpr bool kPhasedKernels = true;
  // Blocks of a phased kernel (256 threads, up to 37 KiB of shared memory) that keep every
  // SM busy: a kernel with fewer (the tiled grad-weight of a few-channel layer) splits its
  // reduction until it has about this many.
  static int64_t phased_blocks_wanted() {
    return multiprocessors() * 4;
  }
  template <class Kernel>
  static void launch_phased(Dim3 grid, Dim3 block, const typename Kernel::Args& args) {
    phased_entry<Kernel><<<
        dim3(grid.x, grid.y, grid.z), dim3(block.x, block.y, block.z), 0,
        at::cuda::getCurrentCUDAStream()>>>(args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  static void check_device(const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device().is_cuda(), name, " must be a CUDA tensor here, got ", t.device());
  }

  static void check_flag(const at::Tensor& flag, const char* message) {
    if (async_checks()) {
      at::_assert_async(flag.eq(0).squeeze(), message);
    } else {
      TORCH_CHECK(flag.item<int32_t>() == 0, message);
    }
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(deconvkernels, CUDA, m) {
  m.impl("max_pool2d_with_switches", &launch::max_pool2d_with_switches<CudaExec>);
  m.impl(
      "max_pool2d_with_switches_backward", &launch::max_pool2d_with_switches_backward<CudaExec>);
  m.impl("max_unpool2d_with_switches", &launch::max_unpool2d_with_switches<CudaExec>);
  m.impl(
      "max_unpool2d_with_switches_backward",
      &launch::max_unpool2d_with_switches_backward<CudaExec>);
  m.impl("switches_to_indices", &launch::switches_to_indices<CudaExec>);
  m.impl("indices_to_switches", &launch::indices_to_switches<CudaExec>);
  m.impl("unpool_deconv2d", &launch::unpool_deconv2d<CudaExec>);
  m.impl("unpool_deconv2d_backward_y", &launch::unpool_deconv2d_backward_y<CudaExec>);
  m.impl("unpool_deconv2d_backward_weight", &launch::unpool_deconv2d_backward_weight<CudaExec>);
  m.impl("unpool_deconv2d_backward_bias", &launch::unpool_deconv2d_backward_bias<CudaExec>);
}

}  // namespace deconvkernels
