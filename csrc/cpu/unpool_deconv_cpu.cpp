// CPU registrations of the fused unpool + transposed convolution. DeconvNet's case
// (2x2/2 pool windows inside the input; stride-1, dilation-1, ungrouped deconvolution)
// takes the vectorised kernels of unpool_deconv_fast.h (the weight gradient for 1x1 and
// 3x3 kernels); every other geometry runs the general gather kernels of
// csrc/kernels/unpool_deconv_kernels.h on the CPU's threads (same code as on the GPU).
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "../cuda/unpool_deconv_launchers.h"
#include "parallel_exec.h"
#include "scalar_kind.h"
#include "switch_checks.h"
#include "unpool_deconv_fast.h"

namespace deconvkernels {
namespace {

using at::Tensor;

bool fast_path_applies(const UnpoolDeconvPlan& plan) {
  return launch::deconvnet_case(plan);
}

#define DK_UD_PARAMS                                                                          \
  c10::SymIntArrayRef output_size, at::IntArrayRef pool_kernel_size,                         \
      at::IntArrayRef pool_stride, at::IntArrayRef pool_padding, at::IntArrayRef pool_dilation, \
      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding,       \
      int64_t groups, at::IntArrayRef dilation
#define DK_UD_NAMES                                                                           \
  output_size, pool_kernel_size, pool_stride, pool_padding, pool_dilation, stride, padding,   \
      output_padding, groups, dilation

at::ScalarType acc_type(const Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The dtype the chosen kernels read the weight and grad_output in: the accumulation type,
// or bfloat16 itself for the dot-product kernels (UnpoolDeconvKernelTable::bf16_operands).
at::ScalarType operand_type(const cpu::UnpoolDeconvKernelTable& kernels, const Tensor& t) {
  return kernels.bf16_operands && t.scalar_type() == at::kBFloat16 ? at::kBFloat16
                                                                    : acc_type(t);
}

// The weight as (kh, kw, C_in, C_out) in the operand type (output channels contiguous),
// as the forward and grad-y kernels read it. Not cached between the forward
// and the backward: a version-counter check would miss writes through `.data` (which
// gradcheck and hand-written optimisers do), so each op pays one relayout.
Tensor weight_taps_first(const Tensor& weight, at::ScalarType dtype) {
  return weight.permute({2, 3, 0, 1}).to(dtype).contiguous();
}

// The fast kernels' view of a call; y may be undefined (grad_y needs no values).
cpu::UnpoolDeconvFastArgs fast_args(const UnpoolDeconvPlan& plan, const Tensor& y4,
                                    at::ScalarType dtype) {
  const PoolGeom& g = plan.geo.pool;
  const DeconvGeom& d = plan.geo.dc;
  cpu::UnpoolDeconvFastArgs a{};
  a.dtype = cpu::scalar_kind(dtype);
  a.N = plan.switches.size(0);
  a.Cin = d.cin;
  a.Cout = d.cout;
  a.H = g.H;
  a.W = g.W;
  a.OH = g.OH;
  a.OW = g.OW;
  a.kh = d.kh;
  a.kw = d.kw;
  a.ph = d.ph;
  a.pw = d.pw;
  a.Ho = d.Ho;
  a.Wo = d.Wo;
  if (y4.defined()) {
    a.y = y4.const_data_ptr();
    a.ys = strides_of(y4);
  }
  a.switches = plan.switches.const_data_ptr<uint8_t>();
  a.ss = strides_of(plan.switches);
  return a;
}

Tensor unpool_deconv2d_cpu(
    const Tensor& y, const Tensor& switches, const Tensor& weight,
    const std::optional<Tensor>& bias, DK_UD_PARAMS) {
  const UnpoolDeconvPlan plan =
      launch::plan_unpool_deconv2d<ParallelCpuExec>(y, switches, weight, DK_UD_NAMES);
  if (!fast_path_applies(plan)) {
    return launch::unpool_deconv2d_planned<ParallelCpuExec>(plan, y, weight, bias);
  }
  const DeconvGeom& d = plan.geo.dc;
  if (bias.has_value()) check_bias(*bias, y, d.cout);
  const Tensor y4 = as_batched(y);
  Tensor out = empty_like_format(y4, d.cout, d.Ho, d.Wo, y.scalar_type());
  if (out.numel() == 0) return plan.batched ? out : out.squeeze(0);
  validate_switches_cpu(plan.switches, plan.geo.pool);
  const cpu::UnpoolDeconvKernelTable& kernels = cpu::unpool_deconv_kernels();
  const Tensor wt = weight_taps_first(weight, operand_type(kernels, y));
  const Tensor b = bias.has_value() ? bias->to(acc_type(y)).contiguous() : Tensor();
  cpu::UnpoolDeconvFastArgs a = fast_args(plan, y4, y.scalar_type());
  a.weight_t = wt.const_data_ptr();
  a.bias = b.defined() ? b.const_data_ptr() : nullptr;
  a.out = out.mutable_data_ptr();
  a.os = strides_of(out);
  kernels.forward(a);
  return plan.batched ? out : out.squeeze(0);
}

// grad_output as (N, Ho, Wo, C_out) contiguous in the operand type: a no-op for a
// channels_last gradient of that type, one pass otherwise (never the unpooled map's size).
Tensor grad_nhwc(const Tensor& g4, at::ScalarType dtype) {
  return g4.to(dtype).contiguous(at::MemoryFormat::ChannelsLast);
}

// grad_output for the kernels in `gr`: as grad_nhwc, or zero-padded in bfloat16 for the
// bfloat16 dot-product kernels (UnpoolDeconvFastGrads, grad_padding). Returns the tensor
// that owns the memory.
Tensor prepare_grad(const Tensor& g4, const cpu::UnpoolDeconvKernelTable& kernels,
                    const cpu::UnpoolDeconvFastArgs& a, cpu::UnpoolDeconvFastGrads& gr) {
  if (operand_type(kernels, g4) != at::kBFloat16) {
    Tensor gn = grad_nhwc(g4, acc_type(g4));
    gr.grad_nhwc = gn.const_data_ptr();
    return gn;
  }
  int64_t pad[4];
  cpu::grad_padding(a, pad);
  gr.pad_top = pad[0];
  gr.pad_left = pad[2];
  gr.padded_h = a.Ho + pad[0] + pad[1];
  gr.padded_w = a.Wo + pad[2] + pad[3];
  Tensor padded = at::zeros({a.N, gr.padded_h, gr.padded_w, a.Cout}, g4.options());
  padded.narrow(1, pad[0], a.Ho).narrow(2, pad[2], a.Wo).copy_(g4.permute({0, 2, 3, 1}));
  gr.grad_nhwc = padded.const_data_ptr();
  return padded;
}

Tensor unpool_deconv2d_backward_y_cpu(
    const Tensor& grad_output, const Tensor& switches, const Tensor& weight, DK_UD_PARAMS) {
  const UnpoolDeconvPlan plan = launch::plan_unpool_deconv2d_backward_y<ParallelCpuExec>(
      grad_output, switches, weight, DK_UD_NAMES);
  if (!fast_path_applies(plan)) {
    return launch::unpool_deconv2d_backward_y_planned<ParallelCpuExec>(plan, grad_output, weight);
  }
  const Tensor g = check_grad_output(grad_output, plan);
  Tensor grad_y = empty_like_format(
      plan.switches, plan.geo.pool.OH, plan.geo.pool.OW, grad_output.scalar_type());
  if (grad_y.numel() == 0) return plan.batched ? grad_y : grad_y.squeeze(0);
  validate_switches_cpu(plan.switches, plan.geo.pool);
  const cpu::UnpoolDeconvKernelTable& kernels = cpu::unpool_deconv_kernels();
  const Tensor wt = weight_taps_first(weight, operand_type(kernels, g));
  cpu::UnpoolDeconvFastArgs a = fast_args(plan, Tensor(), g.scalar_type());
  a.weight_t = wt.const_data_ptr();
  cpu::UnpoolDeconvFastGrads gr{};
  const Tensor gn = prepare_grad(g, kernels, a, gr);
  gr.grad_y = grad_y.mutable_data_ptr();
  gr.gys = strides_of(grad_y);
  kernels.backward_y(a, gr);
  return plan.batched ? grad_y : grad_y.squeeze(0);
}

Tensor unpool_deconv2d_backward_weight_cpu(
    const Tensor& grad_output, const Tensor& y, const Tensor& switches,
    at::IntArrayRef kernel_size, DK_UD_PARAMS) {
  const launch::WeightGradPlan wp =
      launch::plan_unpool_deconv2d_backward_weight<ParallelCpuExec>(
          grad_output, y, switches, kernel_size, DK_UD_NAMES);
  const UnpoolDeconvPlan& plan = wp.plan;
  const Tensor& g = wp.grad;
  const DeconvGeom& d = plan.geo.dc;
  // The fast path takes ungrouped 3x3 and 1x1 kernels only.
  const bool square = d.kh == d.kw && (d.kh == 1 || d.kh == 3);
  if (!square || !fast_path_applies(plan)) {
    return launch::unpool_deconv2d_backward_weight_planned<ParallelCpuExec>(wp, y);
  }
  const cpu::UnpoolDeconvFastArgs a = fast_args(plan, as_batched(y), y.scalar_type());
  const cpu::UnpoolDeconvKernelTable& kernels = cpu::unpool_deconv_kernels();
  const auto acc = acc_type(y);
  const auto operand = operand_type(kernels, y);
  const bool direct =
      cpu::weight_grad_direct(a, static_cast<int64_t>(c10::elementSize(operand)));
  Tensor grad_w = at::empty({d.cin, d.cout, d.kh, d.kw}, y.options());
  Tensor buf;
  if (!direct) buf = at::zeros({d.cin, d.kh, d.kw, d.cout}, y.options().dtype(acc));
  if (plan.switches.numel() == 0 || grad_w.numel() == 0) {
    return direct ? grad_w.zero_() : buf.permute({0, 3, 1, 2}).to(y.scalar_type()).contiguous();
  }
  validate_switches_cpu(plan.switches, plan.geo.pool);
  cpu::UnpoolDeconvFastGrads gr{};
  const Tensor gn = prepare_grad(g, kernels, a, gr);
  gr.grad_weight = grad_w.mutable_data_ptr();
  gr.grad_weight_c = direct ? nullptr : buf.mutable_data_ptr();
  kernels.backward_weight(a, gr);
  return direct ? grad_w : buf.permute({0, 3, 1, 2}).to(y.scalar_type()).contiguous();
}

// grad_bias: ATen's vectorised, parallel sum in the accumulation type (deterministic for
// a given thread count); the general kernel sums each channel serially.
Tensor unpool_deconv2d_backward_bias_cpu(const Tensor& grad_output) {
  ParallelCpuExec::check_device(grad_output, "grad_output");
  check_floating(grad_output, "grad_output");
  const Tensor g = as_batched(grad_output);
  return at::sum(g, {0, 2, 3}, /*keepdim=*/false, acc_type(g)).to(g.scalar_type());
}

#undef DK_UD_PARAMS
#undef DK_UD_NAMES

}  // namespace

TORCH_LIBRARY_IMPL(deconvkernels, CPU, m) {
  m.impl("unpool_deconv2d", &unpool_deconv2d_cpu);
  m.impl("unpool_deconv2d_backward_y", &unpool_deconv2d_backward_y_cpu);
  m.impl("unpool_deconv2d_backward_weight", &unpool_deconv2d_backward_weight_cpu);
  m.impl("unpool_deconv2d_backward_bias", &unpool_deconv2d_backward_bias_cpu);
}

}  // namespace deconvkernels
