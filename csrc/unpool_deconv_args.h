// Argument checks, shapes and outputs of the fused unpool + transposed convolution, for
// every device (the fake kernels in deconvkernels/ops.py mirror these shapes and formats).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymIntArrayRef.h>

#include "kernels/unpool_deconv_kernels.h"

namespace deconvkernels {

// The geometry of one call: the pool that made the switches and the deconvolution.
struct UnpoolDeconvGeometry {
  PoolGeom pool;
  DeconvGeom dc;
};

struct UnpoolDeconvArgs {
  c10::SymIntArrayRef output_size;  // the unpooled (H, W)
  at::IntArrayRef pool_kernel_size, pool_stride, pool_padding, pool_dilation;
  at::IntArrayRef stride, padding, output_padding;
  int64_t groups;
  at::IntArrayRef dilation;
};

// Checks y (pooled, 3-D or 4-D), switches, the weight's shape (C_in, C_out / groups, kh, kw)
// and every geometry argument; returns the batched views and the geometry.
struct UnpoolDeconvPlan {
  at::Tensor switches;     // 4-D
  UnpoolDeconvGeometry geo;
  bool batched;            // y was 4-D
};

// `switches` gives the pooled shape; the weight's shape is (weight_cin, weight_cout_group,
// weight_kernel).
UnpoolDeconvPlan plan_unpool_deconv(
    const at::Tensor& switches, at::IntArrayRef weight_kernel, int64_t weight_cin,
    int64_t weight_cout_group, const UnpoolDeconvArgs& args);

// y must be a float tensor of the switches' shape (the pooled values).
void check_pooled_values(const at::Tensor& y, const at::Tensor& switches);

void check_weight(const at::Tensor& weight, const at::Tensor& like, const char* name);
void check_bias(const at::Tensor& bias, const at::Tensor& like, int64_t cout);

// grad_output must be (N, C_out, Ho, Wo) of the geometry; returns it batched.
at::Tensor check_grad_output(
    const at::Tensor& grad_output, const UnpoolDeconvPlan& plan);

WeightStrides weight_strides(const at::Tensor& weight);

}  // namespace deconvkernels
