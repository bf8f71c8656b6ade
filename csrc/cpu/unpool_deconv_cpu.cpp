// CPU registrations of the fused unpool + transposed convolution. For now every geometry
// runs the general gather kernels (csrc/kernels/unpool_deconv_kernels.h) on the CPU's
// threads; the vectorised kernels for DeconvNet's case (2x2/2 pool, stride-1 odd kernels,
// walking pooled values only) are the next step (issue 3).
#include <torch/library.h>

#include "../cuda/unpool_deconv_launchers.h"
#include "parallel_exec.h"

namespace deconvkernels {

TORCH_LIBRARY_IMPL(deconvkernels, CPU, m) {
  using E = ParallelCpuExec;
  m.impl("unpool_deconv2d", &launch::unpool_deconv2d<E>);
  m.impl("unpool_deconv2d_backward_y", &launch::unpool_deconv2d_backward_y<E>);
  m.impl("unpool_deconv2d_backward_weight", &launch::unpool_deconv2d_backward_weight<E>);
  m.impl("unpool_deconv2d_backward_bias", &launch::unpool_deconv2d_backward_bias<E>);
}

}  // namespace deconvkernels
