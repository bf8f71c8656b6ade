// Test-only ops `_emulated_<op>`: the CUDA launchers and kernels of every op run on CPU
// tensors by the emulator. The tests compare them with the reference, so the CUDA
// index math, strides and edge handling are exercised without a GPU.
#include <torch/library.h>

#include "../cuda/pool_launchers.h"
#include "../cuda/unpool_deconv_launchers.h"
#include "cuda_emulator.h"

namespace deconvkernels {

TORCH_LIBRARY_IMPL(deconvkernels, CPU, m) {
  using E = EmulatedExec;
  m.impl("_emulated_max_pool2d_with_switches", &launch::max_pool2d_with_switches<E>);
  m.impl(
      "_emulated_max_pool2d_with_switches_backward",
      &launch::max_pool2d_with_switches_backward<E>);
  m.impl("_emulated_max_unpool2d_with_switches", &launch::max_unpool2d_with_switches<E>);
  m.impl(
      "_emulated_max_unpool2d_with_switches_backward",
      &launch::max_unpool2d_with_switches_backward<E>);
  m.impl("_emulated_switches_to_indices", &launch::switches_to_indices<E>);
  m.impl("_emulated_indices_to_switches", &launch::indices_to_switches<E>);
  m.impl("_emulated_unpool_deconv2d", &launch::unpool_deconv2d<E>);
  m.impl("_emulated_unpool_deconv2d_backward_y", &launch::unpool_deconv2d_backward_y<E>);
  m.impl(
      "_emulated_unpool_deconv2d_backward_weight", &launch::unpool_deconv2d_backward_weight<E>);
  m.impl("_emulated_unpool_deconv2d_backward_bias", &launch::unpool_deconv2d_backward_bias<E>);
}

}  // namespace deconvkernels
