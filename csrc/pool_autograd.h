// The two pooling ops with their gradients recorded by C++ autograd nodes, for the direct
// Python entries (eager_calls.cpp) when an input requires grad. See pool_autograd.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

namespace deconvkernels {

// A pool's geometry as the ops take it: {h, w} pairs.
struct PoolGeometry {
  int64_t kernel[2];
  int64_t stride[2];
  int64_t padding[2];
  int64_t dilation[2];
};

// max_pool2d_with_switches with a grad_fn on y (switches are not differentiable).
std::tuple<at::Tensor, at::Tensor> max_pool2d_with_switches_autograd(const at::Tensor& x,
                                                                     const PoolGeometry& g,
                                                                     bool ceil_mode);

// max_unpool2d_with_switches with a grad_fn on its output (gradient flows to y only).
at::Tensor max_unpool2d_with_switches_autograd(const at::Tensor& y, const at::Tensor& switches,
                                               int64_t out_h, int64_t out_w,
                                               const PoolGeometry& g);

}  // namespace deconvkernels
