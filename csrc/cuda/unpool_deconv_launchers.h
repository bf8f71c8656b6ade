// Launchers of the fused unpool + transposed convolution, written once over an executor
// (see pool_launchers.h): CudaExec on the GPU, EmulatedExec in the tests, and
// ParallelCpuExec for the CPU's general path (every geometry the fast CPU kernels do not
// cover runs these same gather kernels on the CPU's threads).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <optional>

#include "../kernels/unpool_deconv_kernels.h"
#include "../kernels/unpool_deconv_tiled.h"
#include "../pool_args.h"
#include "../unpool_deconv_args.h"
#include "pool_launchers.h"

namespace deconvkernels::launch {

inline UnpoolDeconvArgs ud_args(
    c10::SymIntArrayRef output_size, at::IntArrayRef pool_kernel_size, at::IntArrayRef pool_stride,
    at::IntArrayRef pool_padding, at::IntArrayRef pool_dilation, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups,
    at::IntArrayRef dilation) {
  return UnpoolDeconvArgs{output_size, pool_kernel_size, pool_stride, pool_padding,
                          pool_dilation, stride, padding, output_padding, groups, dilation};
}

#define DK_UD_PARAMS                                                                        \
  c10::SymIntArrayRef output_size, at::IntArrayRef pool_kernel_size,                       \
      at::IntArrayRef pool_stride, at::IntArrayRef pool_padding, at::IntArrayRef pool_dilation, \
      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding,     \
      int64_t groups, at::IntArrayRef dilation
#define DK_UD_FORWARD_NAMES                                                                  \
  output_size, pool_kernel_size, pool_stride, pool_padding, pool_dilation, stride, padding, \
      output_padding, groups, dilation
#define DK_UD_FORWARD_ARGS                                                                   \
  ud_args(output_size, pool_kernel_size, pool_stride, pool_padding, pool_dilation, stride,    \
          padding, output_padding, groups, dilation)

// DeconvNet's case: 2x2 stride-2 pool windows inside the input and a stride-1, dilation-1,
// ungrouped transposed convolution. After such an unpool one position in four is non-zero,
// and the fast kernels (the CPU's vectorised ones, the GPU's tiled ones) walk only those.
inline bool deconvnet_case(const UnpoolDeconvPlan& plan) {
  const PoolGeom& g = plan.geo.pool;
  const DeconvGeom& d = plan.geo.dc;
  return g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2 && g.ph == 0 && g.pw == 0 &&
      g.dh == 1 && g.dw == 1 && 2 * g.OH <= g.H && 2 * g.OW <= g.W && d.sh == 1 && d.sw == 1 &&
      d.dh == 1 && d.dw == 1 && d.groups == 1;
}

// Whether the tiled kernels of shape S (unpool_deconv_tiled.h) can take the plan on Exec:
// an executor that runs phased kernels, DeconvNet's case, kernels up to S::kMaxK a side.
template <class Exec, class S>
bool tiled_case(const UnpoolDeconvPlan& plan) {
  const DeconvGeom& d = plan.geo.dc;
  return Exec::kPhasedKernels && deconvnet_case(plan) && d.kh <= S::kMaxK && d.kw <= S::kMaxK;
}

// The tiled forward (unpool_deconv_tiled.h), for executors that run phased kernels (the
// GPU and its emulator): DeconvNet's case with kernels up to 5x5, a grid within CUDA's
// limits. Returns false, having done nothing, otherwise.
template <class Exec, typename scalar_t>
bool try_tiled_forward(const UnpoolDeconvPlan& plan, const Tensor& y4, const Tensor& weight,
                       const std::optional<Tensor>& bias, Tensor& out) {
  using S = TiledForwardShape;
  const DeconvGeom& d = plan.geo.dc;
  const int64_t tiles_h = (d.Ho + S::kTileH - 1) / S::kTileH;
  const int64_t tiles_w = (d.Wo + S::kTileW - 1) / S::kTileW;
  const int64_t co_tiles = (d.cout + S::kCoTile - 1) / S::kCoTile;
  if (!tiled_case<Exec, S>(plan) || tiles_h * tiles_w > (int64_t(1) << 31) - 1 ||
      co_tiles > 65535 || y4.size(0) > 65535) {
    return false;
  }
  using K = UnpoolDeconvTiledForwardKernel<scalar_t>;
  typename K::Args a{
      y4.const_data_ptr<scalar_t>(), plan.switches.const_data_ptr<uint8_t>(),
      weight.const_data_ptr<scalar_t>(),
      bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr,
      out.mutable_data_ptr<scalar_t>(), strides_of(y4), strides_of(plan.switches),
      strides_of(out), weight_strides(weight), plan.geo.pool, d, tiles_w};
  Exec::template launch_phased<K>(
      Dim3{static_cast<unsigned>(tiles_h * tiles_w), static_cast<unsigned>(co_tiles),
           static_cast<unsigned>(y4.size(0))},
      Dim3{S::kThreads, 1, 1}, a);
  return true;
}

// The tiled grad_y (unpool_deconv_tiled.h), under the same conditions.
template <class Exec, typename scalar_t>
bool try_tiled_grad_y(const UnpoolDeconvPlan& plan, const Tensor& g, const Tensor& weight,
                      Tensor& grad_y) {
  using S = TiledGradYShape;
  const DeconvGeom& d = plan.geo.dc;
  const PoolGeom& pg = plan.geo.pool;
  const int64_t tiles_h = (pg.OH + S::kWinH - 1) / S::kWinH;
  const int64_t tiles_w = (pg.OW + S::kWinW - 1) / S::kWinW;
  const int64_t ci_tiles = (d.cin + S::kCiTile - 1) / S::kCiTile;
  if (!tiled_case<Exec, S>(plan) || tiles_h * tiles_w > (int64_t(1) << 31) - 1 ||
      ci_tiles > 65535 || g.size(0) > 65535) {
    return false;
  }
  using K = UnpoolDeconvTiledGradYKernel<scalar_t>;
  typename K::Args a{
      g.const_data_ptr<scalar_t>(), plan.switches.const_data_ptr<uint8_t>(),
      weight.const_data_ptr<scalar_t>(), grad_y.mutable_data_ptr<scalar_t>(), strides_of(g),
      strides_of(plan.switches), strides_of(grad_y), weight_strides(weight), pg, d, tiles_w};
  Exec::template launch_phased<K>(
      Dim3{static_cast<unsigned>(tiles_h * tiles_w), static_cast<unsigned>(ci_tiles),
           static_cast<unsigned>(g.size(0))},
      Dim3{S::kThreads, 1, 1}, a);
  return true;
}

// The tiled grad_weight (unpool_deconv_tiled.h), under the same conditions. The chunks of
// pooled windows are split over blockIdx.z until the grid has about
// Exec::phased_blocks_wanted() blocks; the splits' float sums are then added in order.
template <class Exec, typename scalar_t>
bool try_tiled_grad_weight(const UnpoolDeconvPlan& plan, const Tensor& g, const Tensor& y4,
                           Tensor& grad_w) {
  using S = TiledGradWeightShape;
  using K = UnpoolDeconvTiledGradWeightKernel<scalar_t>;
  using acc_t = typename K::acc_t;
  const DeconvGeom& d = plan.geo.dc;
  const PoolGeom& pg = plan.geo.pool;
  const int64_t ci_tiles = (d.cin + S::kCiTile - 1) / S::kCiTile;
  const int64_t co_tiles = (d.cout + S::kCoTile - 1) / S::kCoTile;
  if (!tiled_case<Exec, S>(plan) || ci_tiles > (int64_t(1) << 31) - 1 || co_tiles > 65535) {
    return false;
  }
  const int64_t tiles_w = (pg.OW + K::kWinW - 1) / K::kWinW;
  const int64_t tiles = ((pg.OH + S::kWinH - 1) / S::kWinH) * tiles_w;
  const int64_t chunks = y4.size(0) * tiles;
  if (chunks == 0) {
    grad_w.zero_();
    return true;
  }
  const int64_t blocks = ci_tiles * co_tiles;
  const int64_t wanted = std::clamp<int64_t>(
      (Exec::phased_blocks_wanted() + blocks - 1) / blocks, 1, 65535);
  const int64_t per_split = (chunks + wanted - 1) / wanted;
  const int64_t splits = (chunks + per_split - 1) / per_split;  // none left empty
  Tensor partial;
  if (splits > 1) {
    partial = at::empty({splits, grad_w.numel()},
                        grad_w.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  }
  typename K::Args a{
      g.const_data_ptr<scalar_t>(), y4.const_data_ptr<scalar_t>(),
      plan.switches.const_data_ptr<uint8_t>(), grad_w.mutable_data_ptr<scalar_t>(),
      splits > 1 ? partial.mutable_data_ptr<acc_t>() : nullptr, strides_of(g), strides_of(y4),
      strides_of(plan.switches), pg, d, tiles_w, tiles, chunks, per_split};
  Exec::template launch_phased<K>(
      Dim3{static_cast<unsigned>(ci_tiles), static_cast<unsigned>(co_tiles),
           static_cast<unsigned>(splits)},
      Dim3{S::kThreads, 1, 1}, a);
  if (splits > 1) {
    using R = SplitSumKernel<scalar_t>;
    typename R::Args r{partial.const_data_ptr<acc_t>(), grad_w.mutable_data_ptr<scalar_t>(),
                       splits, grad_w.numel()};
    launch_elementwise<Exec, R>(r.total, r);
  }
  return true;
}

// Each op below is "check and plan" then "run the plan": the CPU's fast kernels share the
// first half and fall back to the second, so a call is checked and planned once.

template <class Exec>
UnpoolDeconvPlan plan_unpool_deconv2d(
    const Tensor& y, const Tensor& switches, const Tensor& weight, DK_UD_PARAMS) {
  Exec::check_device(y, "y");
  check_pooled_values(y, switches);
  check_weight(weight, y, "weight");
  return plan_unpool_deconv(
      switches, {weight.size(2), weight.size(3)}, weight.size(0), weight.size(1),
      DK_UD_FORWARD_ARGS);
}

template <class Exec>
Tensor unpool_deconv2d_planned(
    const UnpoolDeconvPlan& plan, const Tensor& y, const Tensor& weight,
    const std::optional<Tensor>& bias_arg) {
  const DeconvGeom& d = plan.geo.dc;
  if (bias_arg.has_value()) check_bias(*bias_arg, y, d.cout);
  // The kernels read bias[co]: a strided or expanded bias is made dense first (a view of
  // every other element, or of one element expanded, read wrong values or past its storage).
  const std::optional<Tensor> bias =
      bias_arg.has_value() ? std::optional<Tensor>(bias_arg->contiguous()) : std::nullopt;
  const Tensor y4 = as_batched(y);
  Tensor out = empty_like_format(y4, d.cout, d.Ho, d.Wo, y.scalar_type());
  if (out.numel() > 0) {
    typename Exec::Guard guard(y.device());
    validate_switches<Exec>(plan.switches, plan.geo.pool);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, y.scalar_type(), "unpool_deconv2d", [&] {
          if (try_tiled_forward<Exec, scalar_t>(plan, y4, weight, bias, out)) return;
          using K = UnpoolDeconvForwardKernel<scalar_t>;
          typename K::Args a{
              y4.const_data_ptr<scalar_t>(), plan.switches.const_data_ptr<uint8_t>(),
              weight.const_data_ptr<scalar_t>(),
              bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr,
              out.mutable_data_ptr<scalar_t>(), strides_of(y4), strides_of(plan.switches),
              strides_of(out), weight_strides(weight), plan.geo.pool, d, !out.is_contiguous(),
              out.numel()};
          launch_elementwise<Exec, K>(a.total, a);
        });
  }
  return plan.batched ? out : out.squeeze(0);
}

template <class Exec>
Tensor unpool_deconv2d(
    const Tensor& y, const Tensor& switches, const Tensor& weight,
    const std::optional<Tensor>& bias, DK_UD_PARAMS) {
  return unpool_deconv2d_planned<Exec>(
      plan_unpool_deconv2d<Exec>(y, switches, weight, DK_UD_FORWARD_NAMES), y, weight, bias);
}

template <class Exec>
UnpoolDeconvPlan plan_unpool_deconv2d_backward_y(
    const Tensor& grad_output, const Tensor& switches, const Tensor& weight, DK_UD_PARAMS) {
  Exec::check_device(grad_output, "grad_output");
  check_floating(grad_output, "grad_output");
  check_weight(weight, grad_output, "weight");
  return plan_unpool_deconv(
      switches, {weight.size(2), weight.size(3)}, weight.size(0), weight.size(1),
      DK_UD_FORWARD_ARGS);
}

template <class Exec>
Tensor unpool_deconv2d_backward_y_planned(
    const UnpoolDeconvPlan& plan, const Tensor& grad_output, const Tensor& weight) {
  const Tensor g = check_grad_output(grad_output, plan);
  Tensor grad_y = empty_like_format(plan.switches, plan.geo.pool.OH, plan.geo.pool.OW,
                                    grad_output.scalar_type());
  if (grad_y.numel() > 0) {
    typename Exec::Guard guard(grad_output.device());
    validate_switches<Exec>(plan.switches, plan.geo.pool);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, grad_output.scalar_type(), "unpool_deconv2d_backward_y", [&] {
          if (try_tiled_grad_y<Exec, scalar_t>(plan, g, weight, grad_y)) return;
          using K = UnpoolDeconvGradYKernel<scalar_t>;
          typename K::Args a{
              g.const_data_ptr<scalar_t>(), plan.switches.const_data_ptr<uint8_t>(),
              weight.const_data_ptr<scalar_t>(), grad_y.mutable_data_ptr<scalar_t>(),
              strides_of(g), strides_of(plan.switches), strides_of(grad_y),
              weight_strides(weight), plan.geo.pool, plan.geo.dc,
              windows_overlap(plan.geo.pool), !grad_y.is_contiguous(), grad_y.numel()};
          launch_elementwise<Exec, K>(a.total, a);
        });
  }
  return plan.batched ? grad_y : grad_y.squeeze(0);
}

template <class Exec>
Tensor unpool_deconv2d_backward_y(
    const Tensor& grad_output, const Tensor& switches, const Tensor& weight, DK_UD_PARAMS) {
  return unpool_deconv2d_backward_y_planned<Exec>(
      plan_unpool_deconv2d_backward_y<Exec>(grad_output, switches, weight, DK_UD_FORWARD_NAMES),
      grad_output, weight);
}

// The weight gradient's plan also holds grad_output as (N, C_out, Ho, Wo), checked.
struct WeightGradPlan {
  UnpoolDeconvPlan plan;
  Tensor grad;
};

template <class Exec>
WeightGradPlan plan_unpool_deconv2d_backward_weight(
    const Tensor& grad_output, const Tensor& y, const Tensor& switches,
    at::IntArrayRef kernel_size, DK_UD_PARAMS) {
  Exec::check_device(grad_output, "grad_output");
  check_floating(grad_output, "grad_output");
  check_pooled_values(y, switches);
  TORCH_CHECK_VALUE(
      kernel_size.size() == 2 && kernel_size[0] > 0 && kernel_size[1] > 0,
      "kernel_size must hold 2 positive sizes, got ", kernel_size);
  TORCH_CHECK_VALUE(groups > 0, "groups must be positive, got ", groups);
  const int64_t cin = switches.size(switches.dim() - 3);
  const int64_t cout = grad_output.size(grad_output.dim() - 3);
  TORCH_CHECK_VALUE(
      cout % groups == 0, "groups (", groups, ") must divide grad_output's channels (", cout,
      ")");
  const UnpoolDeconvPlan plan =
      plan_unpool_deconv(switches, kernel_size, cin, cout / groups, DK_UD_FORWARD_ARGS);
  const Tensor g = check_grad_output(grad_output, plan);
  TORCH_CHECK_VALUE(
      y.scalar_type() == g.scalar_type(), "y must have grad_output's dtype ", g.scalar_type(),
      ", got ", y.scalar_type());
  return {plan, g};
}

template <class Exec>
Tensor unpool_deconv2d_backward_weight_planned(const WeightGradPlan& wp, const Tensor& y) {
  const UnpoolDeconvPlan& plan = wp.plan;
  const Tensor& g = wp.grad;
  const Tensor y4 = as_batched(y);
  const DeconvGeom& d = plan.geo.dc;
  Tensor grad_w = at::empty({d.cin, d.cout_group, d.kh, d.kw}, y.options());
  if (grad_w.numel() > 0) {
    typename Exec::Guard guard(y.device());
    validate_switches<Exec>(plan.switches, plan.geo.pool);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, y.scalar_type(), "unpool_deconv2d_backward_weight", [&] {
          if (try_tiled_grad_weight<Exec, scalar_t>(plan, g, y4, grad_w)) return;
          using K = UnpoolDeconvGradWeightKernel<scalar_t>;
          typename K::Args a{
              g.const_data_ptr<scalar_t>(), y4.const_data_ptr<scalar_t>(),
              plan.switches.const_data_ptr<uint8_t>(), grad_w.mutable_data_ptr<scalar_t>(),
              strides_of(g), strides_of(y4), strides_of(plan.switches), plan.geo.pool, d,
              y4.size(0), windows_overlap(plan.geo.pool), grad_w.numel()};
          launch_elementwise<Exec, K>(a.total, a);
        });
  }
  return grad_w;
}

template <class Exec>
Tensor unpool_deconv2d_backward_weight(
    const Tensor& grad_output, const Tensor& y, const Tensor& switches,
    at::IntArrayRef kernel_size, DK_UD_PARAMS) {
  return unpool_deconv2d_backward_weight_planned<Exec>(
      plan_unpool_deconv2d_backward_weight<Exec>(
          grad_output, y, switches, kernel_size, DK_UD_FORWARD_NAMES),
      y);
}

template <class Exec>
Tensor unpool_deconv2d_backward_bias(const Tensor& grad_output) {
  Exec::check_device(grad_output, "grad_output");
  check_floating(grad_output, "grad_output");
  const Tensor g = as_batched(grad_output);
  Tensor grad_b = at::empty({g.size(1)}, g.options());
  if (grad_b.numel() > 0) {
    typename Exec::Guard guard(g.device());
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, g.scalar_type(), "unpool_deconv2d_backward_bias", [&] {
          using K = DeconvGradBiasKernel<scalar_t>;
          typename K::Args a{
              g.const_data_ptr<scalar_t>(), grad_b.mutable_data_ptr<scalar_t>(), strides_of(g),
              g.size(0), g.size(2), g.size(3), grad_b.numel()};
          launch_elementwise<Exec, K>(a.total, a);
        });
  }
  return grad_b;
}

#undef DK_UD_PARAMS
#undef DK_UD_FORWARD_ARGS
#undef DK_UD_FORWARD_NAMES

}  // namespace deconvkernels::launch
