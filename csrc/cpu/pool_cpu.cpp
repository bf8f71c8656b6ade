// CPU launchers of the pooling ops: plan (checks, outputs), make the inputs contiguous in
// the output's memory format, validate switches, and call the per-ISA kernel table.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>

#include "../kernels/pool_kernels.h"
#include "../pool_args.h"
#include "pool_kernels.h"
#include "scalar_kind.h"
#include "streaming_stores.h"
#include "switch_checks.h"

namespace deconvkernels {

using at::Tensor;

namespace {

// The largest switch. A dense tensor, NCHW or channels_last, is scanned as the flat run of
// bytes it is, by a loop the compiler vectorises, in parallel over 256 KiB chunks. torch's
// max() of a channels_last tensor copies it to NCHW first (4x512x7x7 switches: 36 us, against
// 3 us for NCHW), and even on a flat tensor its dispatch and set-up cost more than this
// scan of DeconvNet's small maps.
int64_t max_switch(const Tensor& switches) {
  if (!switches.is_non_overlapping_and_dense()) {
    return switches.max().item<int64_t>();
  }
  const uint8_t* s = switches.const_data_ptr<uint8_t>();
  return at::parallel_reduce(
      0, switches.numel(), int64_t{1} << 18, uint8_t{0},
      [&](int64_t begin, int64_t end, uint8_t largest) {
        for (int64_t i = begin; i < end; ++i) largest = std::max(largest, s[i]);
        return largest;
      },
      [](uint8_t a, uint8_t b) { return std::max(a, b); });
}

}  // namespace

// Every switch must name a position inside its window and inside the input. When no
// window reaches past the input, that is just "every switch < kh * kw"; otherwise each
// switch's position is checked with the shared body.
void validate_switches_cpu(const Tensor& switches4, const PoolGeom& g) {
  if (switches4.numel() == 0) return;
  if (windows_inside_input(g)) {
    TORCH_CHECK(max_switch(switches4) < g.kh * g.kw, kBadSwitchMessage);
    return;
  }
  const Strides4 st = strides_of(switches4);
  const int64_t C = switches4.size(1);
  const uint8_t* s = switches4.const_data_ptr<uint8_t>();
  std::atomic<bool> bad{false};
  const int64_t planes = switches4.size(0) * C;
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const uint8_t* sp = s + (p / C) * st.n + (p % C) * st.c;
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          if (switch_to_index_at(g, oh, ow, sp[oh * st.h + ow * st.w]) < 0) bad = true;
        }
      }
    }
  });
  TORCH_CHECK(!bad.load(), kBadSwitchMessage);
}

namespace {

at::MemoryFormat format_of(const PoolPlan& p) {
  return p.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

void check_cpu(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor here, got ", t.device());
}

cpu::PoolKernelArgs args_of(const PoolPlan& p, const Tensor& in, const Tensor& out) {
  cpu::PoolKernelArgs a{};
  a.dtype = cpu::scalar_kind(in.scalar_type());
  a.channels_last = p.channels_last;
  a.N = out.size(0);
  a.C = out.size(1);
  a.g = p.g;
  a.in = in.const_data_ptr();
  a.out = out.mutable_data_ptr();
  return a;
}

std::tuple<Tensor, Tensor> max_pool2d_with_switches_cpu(
    const Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  check_cpu(x, "x");
  PoolPlan p = plan_max_pool(x, kernel_size, stride, padding, dilation, ceil_mode);
  if (p.out.numel() > 0) {
    const Tensor in = p.in.contiguous(format_of(p));
    cpu::PoolKernelArgs a = args_of(p, in, p.out);
    a.out_switches = p.out_switches.mutable_data_ptr<uint8_t>();
    a.stream_outputs =
        cpu::streaming_stores_pay(in.nbytes() + p.out.nbytes() + p.out_switches.nbytes());
    cpu::pool_kernels().max_pool_forward(a);
  }
  return {unbatch_like(p.out, p.original), unbatch_like(p.out_switches, p.original)};
}

Tensor scatter_cpu(PoolPlan p, bool sum) {
  if (p.out.numel() == 0) return unbatch_like(p.out, p.original);
  // The 2x2 kernels trust the switches; the others check each one as they scatter it.
  if (cpu::is_2x2_stride2_inside(p.g)) validate_switches_cpu(p.switches, p.g);
  const Tensor values = p.in.contiguous(format_of(p));
  const Tensor switches = p.switches.contiguous(format_of(p));
  cpu::PoolKernelArgs a = args_of(p, values, p.out);
  a.switches = switches.const_data_ptr<uint8_t>();
  std::atomic<bool> bad{false};
  a.bad_switch = &bad;
  cpu::pool_kernels().switch_scatter(a, sum);
  TORCH_CHECK(!bad.load(), kBadSwitchMessage);
  return unbatch_like(p.out, p.original);
}

Tensor max_pool2d_with_switches_backward_cpu(
    const Tensor& grad_y, const Tensor& switches, c10::SymIntArrayRef input_size,
    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation) {
  check_cpu(grad_y, "grad_y");
  return scatter_cpu(
      plan_scatter(
          grad_y, switches, input_size, kernel_size, stride, padding, dilation, "grad_y",
          "input_size"),
      /*sum=*/true);
}

Tensor max_unpool2d_with_switches_cpu(
    const Tensor& y, const Tensor& switches, c10::SymIntArrayRef output_size,
    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation) {
  check_cpu(y, "y");
  return scatter_cpu(
      plan_scatter(
          y, switches, output_size, kernel_size, stride, padding, dilation, "y", "output_size"),
      /*sum=*/false);
}

Tensor max_unpool2d_with_switches_backward_cpu(
    const Tensor& grad_output, const Tensor& switches, at::IntArrayRef kernel_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_cpu(grad_output, "grad_output");
  PoolPlan p = plan_gather(grad_output, switches, kernel_size, stride, padding, dilation);
  if (p.out.numel() == 0) return unbatch_like(p.out, p.original);
  const Tensor src = p.in.contiguous(format_of(p));
  const Tensor sw = p.switches.contiguous(format_of(p));
  cpu::PoolKernelArgs a = args_of(p, src, p.out);
  a.switches = sw.const_data_ptr<uint8_t>();
  std::atomic<bool> bad{false};
  a.bad_switch = &bad;  // the gathers check each switch as they read through it
  cpu::pool_kernels().switch_gather(a, /*only_if_last=*/windows_overlap(p.g));
  TORCH_CHECK(!bad.load(), kBadSwitchMessage);
  return unbatch_like(p.out, p.original);
}

// switches <-> indices: elementwise over the shared bodies, any strides.
template <bool kToIndices>
Tensor convert_cpu(
    const Tensor& in, c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_cpu(in, kToIndices ? "switches" : "indices");
  PoolPlan p =
      plan_convert(in, input_size, kernel_size, stride, padding, dilation, kToIndices);
  const PoolGeom g = p.g;
  const Strides4 is = strides_of(p.in), os = strides_of(p.out);
  const int64_t C = p.out.size(1), total = p.out.numel();
  std::atomic<bool> bad{false};
  using In = std::conditional_t<kToIndices, uint8_t, int64_t>;
  using Out = std::conditional_t<kToIndices, int64_t, uint8_t>;
  const In* src = p.in.template const_data_ptr<In>();
  Out* dst = p.out.template mutable_data_ptr<Out>();
  at::parallel_for(0, total, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const Coord4 o = unravel(i, C, g.OH, g.OW, p.channels_last);
      const int64_t v = src[offset_of(is, o.n, o.c, o.h, o.w)];
      const int64_t r =
          kToIndices ? switch_to_index_at(g, o.h, o.w, v) : index_to_switch_at(g, o.h, o.w, v);
      if (r < 0) bad = true;
      dst[offset_of(os, o.n, o.c, o.h, o.w)] = static_cast<Out>(r < 0 ? 0 : r);
    }
  });
  TORCH_CHECK(!bad.load(), kToIndices ? kBadSwitchMessage : kBadIndexMessage);
  return unbatch_like(p.out, p.original);
}

}  // namespace

TORCH_LIBRARY_IMPL(deconvkernels, CPU, m) {
  m.impl("max_pool2d_with_switches", &max_pool2d_with_switches_cpu);
  m.impl("max_pool2d_with_switches_backward", &max_pool2d_with_switches_backward_cpu);
  m.impl("max_unpool2d_with_switches", &max_unpool2d_with_switches_cpu);
  m.impl("max_unpool2d_with_switches_backward", &max_unpool2d_with_switches_backward_cpu);
  m.impl("switches_to_indices", &convert_cpu<true>);
  m.impl("indices_to_switches", &convert_cpu<false>);
}

}  // namespace deconvkernels
