#include "unpool_deconv_args.h"

#include <c10/util/Exception.h>

#include "pool_args.h"

namespace deconvkernels {

void check_weight(const at::Tensor& weight, const at::Tensor& like, const char* name) {
  TORCH_CHECK_VALUE(
      weight.dim() == 4, name, " must be 4-D (C_in, C_out / groups, kh, kw), got ",
      weight.dim(), "-D");
  TORCH_CHECK_VALUE(
      weight.scalar_type() == like.scalar_type(), name, " must have the dtype ",
      like.scalar_type(), ", got ", weight.scalar_type());
  TORCH_CHECK(
      weight.device() == like.device(), name, " is on ", weight.device(), " but switches are on ",
      like.device());
}

void check_bias(const at::Tensor& bias, const at::Tensor& like, int64_t cout) {
  TORCH_CHECK_VALUE(
      bias.dim() == 1 && bias.size(0) == cout, "bias must have shape (", cout, ",), got ",
      bias.sizes());
  TORCH_CHECK_VALUE(
      bias.scalar_type() == like.scalar_type(), "bias must have y's dtype ", like.scalar_type(),
      ", got ", bias.scalar_type());
  TORCH_CHECK(
      bias.device() == like.device(), "bias is on ", bias.device(), " but y is on ",
      like.device());
}

void check_pooled_values(const at::Tensor& y, const at::Tensor& switches) {
  check_floating(y, "y");
  check_pooled_companion(switches, y, at::kByte, "switches", "y");
}

UnpoolDeconvPlan plan_unpool_deconv(
    const at::Tensor& switches, at::IntArrayRef weight_kernel, int64_t weight_cin,
    int64_t weight_cout_group, const UnpoolDeconvArgs& args) {
  TORCH_CHECK_VALUE(
      switches.scalar_type() == at::kByte, "switches must be uint8, got ",
      switches.scalar_type());
  TORCH_CHECK_VALUE(
      switches.dim() == 3 || switches.dim() == 4, "switches must be 3-D or 4-D, got ",
      switches.dim(), "-D");
  UnpoolDeconvPlan plan;
  plan.switches = as_batched(switches);
  plan.batched = switches.dim() == 4;
  PoolGeom& g = plan.geo.pool;
  g = pool_geometry(args.pool_kernel_size, args.pool_stride, args.pool_padding, args.pool_dilation);
  std::tie(g.H, g.W) = spatial_size(args.output_size, "output_size");
  g.OH = plan.switches.size(2);
  g.OW = plan.switches.size(3);
  check_extent(g.OH, g.OW, "switches");
  check_unpooled_size(g, "output_size");

  check_pair(args.stride, "stride");
  check_pair(args.padding, "padding");
  check_pair(args.output_padding, "output_padding");
  check_pair(args.dilation, "dilation");
  DeconvGeom& d = plan.geo.dc;
  d.kh = weight_kernel[0];
  d.kw = weight_kernel[1];
  d.sh = args.stride[0];
  d.sw = args.stride[1];
  d.ph = args.padding[0];
  d.pw = args.padding[1];
  d.dh = args.dilation[0];
  d.dw = args.dilation[1];
  d.groups = args.groups;
  TORCH_CHECK_VALUE(d.sh > 0 && d.sw > 0, "stride must be positive, got ", args.stride);
  TORCH_CHECK_VALUE(d.dh > 0 && d.dw > 0, "dilation must be positive, got ", args.dilation);
  TORCH_CHECK_VALUE(d.ph >= 0 && d.pw >= 0, "padding must be non-negative, got ", args.padding);
  // Bounded so that the output size below cannot wrap around (see kMaxExtent).
  check_pair_bound(args.stride, "stride");
  check_pair_bound(args.padding, "padding");
  check_pair_bound(args.dilation, "dilation");
  check_extent(d.kh, d.kw, "weight's kernel");
  const int64_t oph = args.output_padding[0], opw = args.output_padding[1];
  TORCH_CHECK_VALUE(
      oph >= 0 && opw >= 0 && (oph < d.sh || oph < d.dh) && (opw < d.sw || opw < d.dw),
      "output_padding must be non-negative and smaller than either stride or dilation, got "
      "output_padding ", args.output_padding, ", stride ", args.stride, ", dilation ",
      args.dilation);
  TORCH_CHECK_VALUE(d.groups > 0, "groups must be positive, got ", d.groups);
  d.cin = plan.switches.size(1);
  TORCH_CHECK_VALUE(
      weight_cin == d.cin, "weight must have C_in = ", d.cin,
      " (y's channels) in dimension 0, got ", weight_cin);
  TORCH_CHECK_VALUE(
      d.cin % d.groups == 0, "groups (", d.groups, ") must divide y's channels (", d.cin, ")");
  d.cin_group = d.cin / d.groups;
  TORCH_CHECK_VALUE(
      weight_cout_group > 0, "weight must have at least one output channel (dimension 1)");
  d.cout_group = weight_cout_group;
  d.cout = d.cout_group * d.groups;
  TORCH_CHECK_VALUE(d.kh > 0 && d.kw > 0, "weight's kernel must be non-empty");
  d.Ho = (g.H - 1) * d.sh - 2 * d.ph + d.dh * (d.kh - 1) + oph + 1;
  d.Wo = (g.W - 1) * d.sw - 2 * d.pw + d.dw * (d.kw - 1) + opw + 1;
  TORCH_CHECK_VALUE(
      d.Ho >= 1 && d.Wo >= 1, "the deconvolution's output would be empty (", d.Ho, ", ", d.Wo,
      "): padding ", args.padding, " is too large for an input of ", g.H, "x", g.W);
  return plan;
}

at::Tensor check_grad_output(const at::Tensor& grad_output, const UnpoolDeconvPlan& plan) {
  const at::Tensor g = grad_output.dim() == 3 ? grad_output.unsqueeze(0) : grad_output;
  const DeconvGeom& d = plan.geo.dc;
  TORCH_CHECK_VALUE(
      g.dim() == 4 && g.size(0) == plan.switches.size(0) && g.size(1) == d.cout &&
          g.size(2) == d.Ho && g.size(3) == d.Wo,
      "grad_output must have shape (", plan.switches.size(0), ", ", d.cout, ", ", d.Ho, ", ",
      d.Wo, "), got ", grad_output.sizes());
  const auto dt = g.scalar_type();
  TORCH_CHECK_VALUE(
      dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
      "grad_output must be float32, float64, float16 or bfloat16, got ", dt);
  TORCH_CHECK(
      g.device() == plan.switches.device(), "grad_output is on ", g.device(),
      " but switches are on ", plan.switches.device());
  return g;
}

WeightStrides weight_strides(const at::Tensor& weight) {
  return WeightStrides{weight.stride(0), weight.stride(1), weight.stride(2), weight.stride(3)};
}

}  // namespace deconvkernels
