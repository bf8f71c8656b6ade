// The CUDA launchers of the pooling ops, written once over an executor:
//   CudaExec      (pool_cuda.cu)            launches the kernels on the GPU;
//   EmulatedExec  (../cpu/cuda_emulator.h)  runs the same kernels on the CPU, block by
//                                           block and thread by thread, for the tests.
// So the launch geometry, the strides handed to the kernels and the edge handling that
// a GPU would run are the ones CI runs. The executor provides:
//   Guard(device), kThreadsPerBlock, max_blocks(), fast_unravel_allowed(),
//   launch<Kernel>(grid, block, args),
//   check_device(tensor, name), check_flag(flag, message); and for the kernels with
//   barriers (unpool_deconv_tiled.h) kPhasedKernels, launch_phased<Kernel>(grid, block,
//   args), phased_blocks_wanted().
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <tuple>
#include <type_traits>

#include "../kernels/pool_kernels.h"
#include "../pool_args.h"

namespace deconvkernels::launch {

using at::Tensor;

template <class Exec>
int64_t elementwise_blocks(int64_t total) {
  constexpr unsigned threads = Exec::kThreadsPerBlock;
  return std::min<int64_t>((total + threads - 1) / threads, Exec::max_blocks());
}

template <class Exec, class Kernel>
void launch_elementwise(int64_t total, const typename Kernel::Args& args) {
  Exec::template launch<Kernel>(
      Dim3{static_cast<unsigned>(elementwise_blocks<Exec>(total)), 1, 1},
      Dim3{Exec::kThreadsPerBlock, 1, 1}, args);
}

// Whether an elementwise launch over `total` elements may decode them with fast_unravel.
template <class Exec>
bool fast_unravel_fits(int64_t total) {
  return Exec::fast_unravel_allowed() &&
      fits_fast_unravel(total, elementwise_blocks<Exec>(total) * Exec::kThreadsPerBlock);
}

// The dividers of a walk over `total` pooled elements (N, C, OH, OW) of plan p.
template <class Exec>
FastUnravel pooled_fast_unravel(const PoolPlan& p, int64_t total) {
  return make_fast_unravel(p.out.size(1), p.g.OH, p.g.OW, fast_unravel_fits<Exec>(total));
}

// Calls f(std::integral_constant<int, K>) with K = 2 for a 2x2 window (DeconvNet's pools:
// the kernels unroll their taps), K = 0 (read at run time) otherwise.
template <class F>
void with_window_size(const PoolGeom& g, F&& f) {
  if (g.kh == 2 && g.kw == 2) {
    f(std::integral_constant<int, 2>{});
  } else {
    f(std::integral_constant<int, 0>{});
  }
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
    const int64_t total = p.out.numel();
    const FastUnravel un = pooled_fast_unravel<Exec>(p, total);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2d_with_switches", [&] {
          with_window_size(p.g, [&](auto k) {
            using K = MaxPoolForwardKernel<scalar_t, decltype(k)::value>;
            typename K::Args a{
                p.in.const_data_ptr<scalar_t>(), p.out.mutable_data_ptr<scalar_t>(),
                p.out_switches.mutable_data_ptr<uint8_t>(), strides_of(p.in),
                strides_of(p.out), p.out.size(1), p.g, p.channels_last, total, un};
            launch_elementwise<Exec, K>(total, a);
          });
        });
  }
  return {unbatch_like(p.out, p.original), unbatch_like(p.out_switches, p.original)};
}

template <typename T>
ScatterOperands<T> scatter_operands(const PoolPlan& p) {
  return {p.in.const_data_ptr<T>(), p.switches.const_data_ptr<uint8_t>(),
          p.out.mutable_data_ptr<T>(), strides_of(p.in), strides_of(p.switches),
          strides_of(p.out), p.out.size(1), p.g, p.channels_last};
}

// Windows that do not overlap: one thread per window writes it whole, and checks its
// switch on the way (SwitchScatterWindowsKernel).
template <class Exec, bool kSum>
void scatter_windows(const PoolPlan& p) {
  const PoolGeom& g = p.g;
  // Every unpooled position lies in some window when the windows tile the plane.
  const bool tiled = g.dh == 1 && g.dw == 1 && g.sh == g.kh && g.sw == g.kw && g.ph == 0 &&
      g.pw == 0 && g.OH * g.sh >= g.H && g.OW * g.sw >= g.W;
  if (!tiled) p.out.zero_();
  const int64_t total = p.switches.numel();
  if (total == 0) return;
  Tensor bad = at::zeros({1}, p.switches.options().dtype(at::kInt));
  const FastUnravel un = pooled_fast_unravel<Exec>(p, total);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, p.in.scalar_type(), "switch_scatter_windows", [&] {
        with_window_size(g, [&](auto k) {
          using K = SwitchScatterWindowsKernel<scalar_t, kSum, decltype(k)::value>;
          typename K::Args a{
              {scatter_operands<scalar_t>(p)}, total, un, bad.mutable_data_ptr<int32_t>()};
          launch_elementwise<Exec, K>(total, a);
        });
      });
  Exec::check_flag(bad, kBadSwitchMessage);
}

template <class Exec, bool kSum>
Tensor scatter(const PoolPlan& p) {
  if (p.out.numel() == 0) return unbatch_like(p.out, p.original);
  typename Exec::Guard guard(p.in.device());
  if (!windows_overlap(p.g)) {
    scatter_windows<Exec, kSum>(p);
    return unbatch_like(p.out, p.original);
  }
  validate_switches<Exec>(p.switches, p.g);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, p.in.scalar_type(), "switch_scatter", [&] {
        using K = SwitchScatterKernel<scalar_t, kSum>;
        typename K::Args a{{scatter_operands<scalar_t>(p)}, p.out.numel()};
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
  const int64_t total = p.out.numel();
  const FastUnravel un = pooled_fast_unravel<Exec>(p, total);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_output.scalar_type(), "switch_gather", [&] {
        using K = SwitchGatherKernel<scalar_t>;
        typename K::Args a{
            p.in.const_data_ptr<scalar_t>(), p.switches.const_data_ptr<uint8_t>(),
            p.out.mutable_data_ptr<scalar_t>(), strides_of(p.in), strides_of(p.switches),
            strides_of(p.out), p.out.size(1), p.g, p.channels_last, windows_overlap(p.g),
            total, un};
        launch_elementwise<Exec, K>(total, a);
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
