// The CUDA launchers of the pooling ops, written once over an executor:
//   CudaExec      (pool_cuda.cu)            launches the kernels on the GPU;
//   EmulatedExec  (../cpu/cuda_emulator.h)  runs the same kernels on the CPU, block by
//                                           block and thread by thread, for the tests.
// So the launch geometry, the strides handed to the kernels and the edge handling that
// a GPU would run are the ones CI runs. The executor provides:
//   Guard(device), kThreadsPerBlock, max_blocks(), launch<Kernel>(grid, block, args),
//   check_device(tensor, name), check_flag(flag, message); and for the kernels with
//   barriers (unpool_deconv_tiled.h) kPhasedKernels, launch_phased<Kernel>(grid, block,
//   args), phased_blocks_wanted().
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <tuple>

#include "../kernels/pool_kernels.h"
#include "../pool_args.h"

namespace deconvkernels::launch {

using at::Tensor;

template <class Exec, class Kernel>
void launch_elementwise(int64_t total, const typename Kernel::Args& args) {
  constexpr unsigned threads = Exec::kThreadsPerBlock;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, Exec::max_blocks());
  Exec::template launch<Kernel>(
      Dim3{static_cast<unsigned>(blocks), 1, 1}, Dim3{threads, 1, 1}, args);
}

template <class Exec>
void validate_switches(const Tensor& switches4, const PoolGeom& g) {
  if (switches4.numel() == 0) return;
  Tensor bad = at::zeros({1}, switches4.options().dtype(at::kInt));
  ValidateSwitchesKernel::Args a{
      switches4.const_data_ptr<uint8_t>(), strides_of(switches4), switches4.size(1), g,
      /*channels_last=*/false, switches4.numel(), bad.mutable_data_ptr<int32_t>()};
  launch_elementwise<Exec, ValidateSwitchesKernel>(a.total, a);
  Exec::check_flag(bad, kBadSwitchMessage);
}

template <class Exec>
std::tuple<Tensor, Tensor> max_pool2d_with_switches(
    const Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  Exec::check_device(x, "x");
  PoolPlan p = plan_max_pool(x, kernel_size, stride, padding, dilation, ceil_mode);
  if (p.out.numel() > 0) {
    typename Exec::Guard guard(x.device());
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2d_with_switches", [&] {
          using K = MaxPoolForwardKernel<scalar_t>;
          typename K::Args a{
              p.in.const_data_ptr<scalar_t>(), p.out.mutable_data_ptr<scalar_t>(),
              p.out_switches.mutable_data_ptr<uint8_t>(), strides_of(p.in), strides_of(p.out),
              p.out.size(1), p.g, p.channels_last, p.out.numel()};
          launch_elementwise<Exec, K>(a.total, a);
        });
  }
  return {unbatch_like(p.out, p.original), unbatch_like(p.out_switches, p.original)};
}

template <class Exec, bool kSum>
Tensor scatter(const PoolPlan& p) {
  if (p.out.numel() == 0) return unbatch_like(p.out, p.original);
  typename Exec::Guard guard(p.in.device());
  validate_switches<Exec>(p.switches, p.g);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, p.in.scalar_type(), "switch_scatter", [&] {
        using K = SwitchScatterKernel<scalar_t, kSum>;
        typename K::Args a{
            p.in.const_data_ptr<scalar_t>(), p.switches.const_data_ptr<uint8_t>(),
            p.out.mutable_data_ptr<scalar_t>(), strides_of(p.in), strides_of(p.switches),
            strides_of(p.out), p.out.size(1), p.g, p.channels_last, p.out.numel()};
        launch_elementwise<Exec, K>(a.total, a);
      });
  return unbatch_like(p.out, p.original);
}

template <class Exec>
Tensor max_pool2d_with_switches_backward(
    const Tensor& grad_y, const Tensor& switches, c10::SymIntArrayRef input_size,
    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation) {
  Exec::check_device(grad_y, "grad_y");
  return scatter<Exec, true>(plan_scatter(
      grad_y, switches, input_size, kernel_size, stride, padding, dilation, "grad_y",
      "input_size"));
}

template <class Exec>
Tensor max_unpool2d_with_switches(
    const Tensor& y, const Tensor& switches, c10::SymIntArrayRef output_size,
    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation) {
  Exec::check_device(y, "y");
  return scatter<Exec, false>(plan_scatter(
      y, switches, output_size, kernel_size, stride, padding, dilation, "y", "output_size"));
}

template <class Exec>
Tensor max_unpool2d_with_switches_backward(
    const Tensor& grad_output, const Tensor& switches, at::IntArrayRef kernel_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  Exec::check_device(grad_output, "grad_output");
  PoolPlan p = plan_gather(grad_output, switches, kernel_size, stride, padding, dilation);
  if (p.out.numel() == 0) return unbatch_like(p.out, p.original);
  typename Exec::Guard guard(grad_output.device());
  validate_switches<Exec>(p.switches, p.g);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_output.scalar_type(), "switch_gather", [&] {
        using K = SwitchGatherKernel<scalar_t>;
        typename K::Args a{
            p.in.const_data_ptr<scalar_t>(), p.switches.const_data_ptr<uint8_t>(),
            p.out.mutable_data_ptr<scalar_t>(), strides_of(p.in), strides_of(p.switches),
            strides_of(p.out), p.out.size(1), p.g, p.channels_last, windows_overlap(p.g),
            p.out.numel()};
        launch_elementwise<Exec, K>(a.total, a);
      });
  return unbatch_like(p.out, p.original);
}

template <class Exec>
Tensor switches_to_indices(
    const Tensor& switches, c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  Exec::check_device(switches, "switches");
  PoolPlan p = plan_convert(switches, input_size, kernel_size, stride, padding, dilation, true);
  if (p.out.numel() == 0) return unbatch_like(p.out, p.original);
  typename Exec::Guard guard(switches.device());
  Tensor bad = at::zeros({1}, switches.options().dtype(at::kInt));
  SwitchesToIndicesKernel::Args a{
      p.in.const_data_ptr<uint8_t>(), p.out.mutable_data_ptr<int64_t>(), strides_of(p.in),
      strides_of(p.out), p.out.size(1), p.g, p.channels_last, p.out.numel(),
      bad.mutable_data_ptr<int32_t>()};
  launch_elementwise<Exec, SwitchesToIndicesKernel>(a.total, a);
  Exec::check_flag(bad, kBadSwitchMessage);
  return unbatch_like(p.out, p.original);
}

template <class Exec>
Tensor indices_to_switches(
    const Tensor& indices, c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  Exec::check_device(indices, "indices");
  PoolPlan p = plan_convert(indices, input_size, kernel_size, stride, padding, dilation, false);
  if (p.out.numel() == 0) return unbatch_like(p.out, p.original);
  typename Exec::Guard guard(indices.device());
  Tensor bad = at::zeros({1}, indices.options().dtype(at::kInt));
  IndicesToSwitchesKernel::Args a{
      p.in.const_data_ptr<int64_t>(), p.out.mutable_data_ptr<uint8_t>(), strides_of(p.in),
      strides_of(p.out), p.out.size(1), p.g, p.channels_last, p.out.numel(),
      bad.mutable_data_ptr<int32_t>()};
  launch_elementwise<Exec, IndicesToSwitchesKernel>(a.total, a);
  Exec::check_flag(bad, kBadIndexMessage);
  return unbatch_like(p.out, p.original);
}

}  // namespace deconvkernels::launch
