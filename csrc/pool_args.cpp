#include "pool_args.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace deconvkernels {

const char* const kBadSwitchMessage =
    "switches: a switch lies outside its pooling window (value >= kernel_h * kernel_w) or "
    "points into the padding or past the input's edge";
const char* const kBadIndexMessage = "indices: an index lies outside its pooling window";

void check_pair(at::IntArrayRef v, const char* name) {
  TORCH_CHECK_VALUE(v.size() == 2, name, " must have 2 elements (h, w), got ", v.size());
}

void check_pair_bound(at::IntArrayRef v, const char* name) {
  TORCH_CHECK_VALUE(
      v[0] <= kMaxExtent && v[1] <= kMaxExtent, name, " must be at most ", kMaxExtent, ", got ",
      v);
}

void check_extent(int64_t h, int64_t w, const char* name) {
  TORCH_CHECK_VALUE(
      h <= kMaxExtent && w <= kMaxExtent, name, " must be at most ", kMaxExtent,
      " in each spatial dimension, got (", h, ", ", w, ")");
}

void check_floating(const at::Tensor& t, const char* name) {
  const auto dt = t.scalar_type();
  TORCH_CHECK_VALUE(
      dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16, name,
      " must be float32, float64, float16 or bfloat16, got ", dt);
  TORCH_CHECK_VALUE(
      t.dim() == 3 || t.dim() == 4, name, " must be 3-D (C, H, W) or 4-D (N, C, H, W), got ",
      t.dim(), "-D");
  TORCH_CHECK_VALUE(
      t.layout() == at::kStrided, name, " must be a dense (strided) tensor, got ", t.layout());
}

void check_pooled_companion(
    const at::Tensor& t, const at::Tensor& like, at::ScalarType dtype, const char* name,
    const char* like_name) {
  TORCH_CHECK_VALUE(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(
      t.sizes() == like.sizes(), name, " must have the shape of ", like_name, " ", like.sizes(),
      ", got ", t.sizes());
  TORCH_CHECK(
      t.device() == like.device(), name, " is on ", t.device(), " but ", like_name, " is on ",
      like.device());
}

std::pair<int64_t, int64_t> spatial_size(c10::SymIntArrayRef size, const char* name) {
  TORCH_CHECK_VALUE(size.size() == 2, name, " must have 2 elements (H, W), got ", size.size());
  const int64_t h = size[0].guard_int(__FILE__, __LINE__);
  const int64_t w = size[1].guard_int(__FILE__, __LINE__);
  TORCH_CHECK_VALUE(h >= 1 && w >= 1, name, " must be positive, got (", h, ", ", w, ")");
  check_extent(h, w, name);
  return {h, w};
}

namespace {

// Some window along one dimension covers only padding (dilation skipping the input).
bool window_without_input(int64_t size, int64_t out, int64_t k, int64_t s, int64_t p, int64_t d) {
  for (int64_t o = 0; o < out; ++o) {
    bool any = false;
    for (int64_t j = 0; j < k && !any; ++j) {
      const int64_t i = o * s - p + j * d;
      any = i >= 0 && i < size;
    }
    if (!any) return true;
  }
  return false;
}

// Whether the kernels walk NHWC: the input's layout, which the outputs were made in
// (empty_like_format). Not the output's: a 1x1 output is contiguous either way, and deciding
// by it copied a channels_last input to NCHW and pooled it there (4x512x2x2 bfloat16 to
// 1x1, one thread: 17 us against 4 us for 4x512x4x4).
bool is_channels_last(const at::Tensor& in4) {
  return in4.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

}  // namespace

// (H, W) must be a size some pool with this geometry (floor or ceil mode) maps to (OH, OW).
void check_unpooled_size(const PoolGeom& g, const char* name) {
  const bool ok_h = pooled_size(g.H, g.kh, g.sh, g.ph, g.dh, false) == g.OH ||
      pooled_size(g.H, g.kh, g.sh, g.ph, g.dh, true) == g.OH;
  const bool ok_w = pooled_size(g.W, g.kw, g.sw, g.pw, g.dw, false) == g.OW ||
      pooled_size(g.W, g.kw, g.sw, g.pw, g.dw, true) == g.OW;
  TORCH_CHECK_VALUE(
      ok_h && ok_w, name, " (", g.H, ", ", g.W, ") cannot have been pooled to (", g.OH, ", ",
      g.OW, ") with kernel_size (", g.kh, ", ", g.kw, "), stride (", g.sh, ", ", g.sw,
      "), padding (", g.ph, ", ", g.pw, "), dilation (", g.dh, ", ", g.dw, ")");
}

// Outputs are allocated contiguous in NCHW or in NHWC; when both describe the memory
// (C == 1, or H == W == 1) the NCHW walk is used.
PoolGeom pool_geometry(
    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation) {
  check_pair(kernel_size, "kernel_size");
  check_pair(stride, "stride");
  check_pair(padding, "padding");
  check_pair(dilation, "dilation");
  PoolGeom g{};
  g.kh = kernel_size[0];
  g.kw = kernel_size[1];
  g.sh = stride[0];
  g.sw = stride[1];
  g.ph = padding[0];
  g.pw = padding[1];
  g.dh = dilation[0];
  g.dw = dilation[1];
  TORCH_CHECK_VALUE(g.kh > 0 && g.kw > 0, "kernel_size must be positive, got ", kernel_size);
  TORCH_CHECK_VALUE(g.sh > 0 && g.sw > 0, "stride must be positive, got ", stride);
  TORCH_CHECK_VALUE(g.dh > 0 && g.dw > 0, "dilation must be positive, got ", dilation);
  TORCH_CHECK_VALUE(g.ph >= 0 && g.pw >= 0, "padding must be non-negative, got ", padding);
  // Bounds first, so that no product below can wrap around (kMaxExtent).
  TORCH_CHECK_VALUE(
      g.kh <= 255 && g.kw <= 255, "kernel_size ", kernel_size,
      " has a window of more than 255 elements; uint8 switches hold at most 255");
  check_pair_bound(stride, "stride");
  check_pair_bound(dilation, "dilation");
  TORCH_CHECK_VALUE(
      g.ph <= g.kh / 2 && g.pw <= g.kw / 2,
      "padding must be at most half of kernel_size, got padding ", padding,
      " for kernel_size ", kernel_size);
  TORCH_CHECK_VALUE(
      g.kh * g.kw <= 255, "kernel_size ", kernel_size, " has a window of ", g.kh * g.kw,
      " elements; uint8 switches hold at most 255");
  return g;
}

int64_t pooled_size(int64_t size, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode) {
  const int64_t span = size + 2 * p - d * (k - 1) - 1 + (ceil_mode ? s - 1 : 0);
  // Floor division (span may be negative for inputs smaller than the window).
  int64_t out = (span >= 0 ? span / s : -((-span + s - 1) / s)) + 1;
  if (ceil_mode && (out - 1) * s >= size + p) --out;
  return out;
}

bool windows_inside_input(const PoolGeom& g) {
  return g.ph == 0 && g.pw == 0 && (g.OH - 1) * g.sh + (g.kh - 1) * g.dh < g.H &&
      (g.OW - 1) * g.sw + (g.kw - 1) * g.dw < g.W;
}

bool windows_overlap(const PoolGeom& g) {
  return g.sh < (g.kh - 1) * g.dh + 1 || g.sw < (g.kw - 1) * g.dw + 1;
}

Strides4 strides_of(const at::Tensor& t4) {
  return Strides4{t4.stride(0), t4.stride(1), t4.stride(2), t4.stride(3)};
}

at::Tensor as_batched(const at::Tensor& t) {
  return t.dim() == 3 ? t.unsqueeze(0) : t;
}

at::Tensor unbatch_like(const at::Tensor& out4, const at::Tensor& original) {
  return original.dim() == 3 ? out4.squeeze(0) : out4;
}

// Large CPU outputs are written once, right after allocation, so first-touch page faults
// are a large part of their cost (a fresh 50 MB tensor takes 12k faults of 4 KiB). Where
// transparent huge pages are in "madvise" mode, asking for them on the 2 MiB-aligned
// interior cuts that by about three here (PyTorch does the same under
// THP_MEM_ALLOC_ENABLE=1). DECONVKERNELS_HUGE_PAGES=0 turns it off.
void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool enabled = [] {
    const char* v = std::getenv("DECONVKERNELS_HUGE_PAGES");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (!enabled || !t.is_cpu() || t.nbytes() < 4 * kHuge) return;
  const auto start = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  const uintptr_t begin = (start + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (start + t.nbytes()) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

at::Tensor empty_like_format(
    const at::Tensor& ref4, int64_t c, int64_t h, int64_t w, at::ScalarType dtype) {
  at::Tensor out = at::empty(
      {ref4.size(0), c, h, w},
      ref4.options().dtype(dtype).memory_format(ref4.suggest_memory_format()));
  advise_huge_pages(out);
  return out;
}

at::Tensor empty_like_format(
    const at::Tensor& ref4, int64_t h, int64_t w, at::ScalarType dtype) {
  return empty_like_format(ref4, ref4.size(1), h, w, dtype);
}

PoolPlan plan_max_pool(
    const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  check_floating(x, "x");
  PoolPlan plan;
  plan.g = pool_geometry(kernel_size, stride, padding, dilation);
  plan.original = x;
  plan.in = as_batched(x);
  PoolGeom& g = plan.g;
  g.H = plan.in.size(2);
  g.W = plan.in.size(3);
  check_extent(g.H, g.W, "x");
  g.OH = pooled_size(g.H, g.kh, g.sh, g.ph, g.dh, ceil_mode);
  g.OW = pooled_size(g.W, g.kw, g.sw, g.pw, g.dw, ceil_mode);
  TORCH_CHECK_VALUE(
      g.OH >= 1 && g.OW >= 1, "x of spatial size (", g.H, ", ", g.W,
      ") is too small for kernel_size ", kernel_size, ", padding ", padding, ", dilation ",
      dilation, ": the output would be (", g.OH, ", ", g.OW, ")");
  TORCH_CHECK_VALUE(
      !window_without_input(g.H, g.OH, g.kh, g.sh, g.ph, g.dh) &&
          !window_without_input(g.W, g.OW, g.kw, g.sw, g.pw, g.dw),
      "x of spatial size (", g.H, ", ", g.W, "): with kernel_size ", kernel_size, ", stride ",
      stride, ", padding ", padding, ", dilation ", dilation,
      " a pooling window covers no input element");
  plan.out = empty_like_format(plan.in, g.OH, g.OW, x.scalar_type());
  plan.out_switches = empty_like_format(plan.in, g.OH, g.OW, at::kByte);
  plan.channels_last = is_channels_last(plan.in);
  return plan;
}

PoolPlan plan_scatter(
    const at::Tensor& values, const at::Tensor& switches, c10::SymIntArrayRef size,
    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, const char* what, const char* size_name) {
  check_floating(values, what);
  check_pooled_companion(switches, values, at::kByte, "switches", what);
  PoolPlan plan;
  plan.g = pool_geometry(kernel_size, stride, padding, dilation);
  plan.original = values;
  plan.in = as_batched(values);
  plan.switches = as_batched(switches);
  PoolGeom& g = plan.g;
  std::tie(g.H, g.W) = spatial_size(size, size_name);
  g.OH = plan.in.size(2);
  g.OW = plan.in.size(3);
  check_extent(g.OH, g.OW, what);
  check_unpooled_size(g, size_name);
  plan.out = empty_like_format(plan.in, g.H, g.W, values.scalar_type());
  plan.channels_last = is_channels_last(plan.in);
  return plan;
}

PoolPlan plan_gather(
    const at::Tensor& grad_out, const at::Tensor& switches, at::IntArrayRef kernel_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_floating(grad_out, "grad_output");
  TORCH_CHECK_VALUE(
      switches.scalar_type() == at::kByte, "switches must be uint8, got ",
      switches.scalar_type());
  TORCH_CHECK_VALUE(
      switches.dim() == grad_out.dim() && switches.size(0) == grad_out.size(0) &&
          (grad_out.dim() == 3 || switches.size(1) == grad_out.size(1)),
      "switches ", switches.sizes(), " must match grad_output ", grad_out.sizes(),
      " in every dimension but the last two");
  TORCH_CHECK(
      switches.device() == grad_out.device(), "switches is on ", switches.device(),
      " but grad_output is on ", grad_out.device());
  PoolPlan plan;
  plan.g = pool_geometry(kernel_size, stride, padding, dilation);
  plan.original = grad_out;
  plan.in = as_batched(grad_out);
  plan.switches = as_batched(switches);
  PoolGeom& g = plan.g;
  g.H = plan.in.size(2);
  g.W = plan.in.size(3);
  g.OH = plan.switches.size(2);
  g.OW = plan.switches.size(3);
  check_extent(g.H, g.W, "grad_output");
  check_extent(g.OH, g.OW, "switches");
  check_unpooled_size(g, "grad_output's spatial size");
  plan.out = empty_like_format(plan.in, g.OH, g.OW, grad_out.scalar_type());
  plan.channels_last = is_channels_last(plan.in);
  return plan;
}

PoolPlan plan_convert(
    const at::Tensor& in, c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    bool to_indices) {
  const char* name = to_indices ? "switches" : "indices";
  const auto want = to_indices ? at::kByte : at::kLong;
  TORCH_CHECK_VALUE(
      in.scalar_type() == want, name, " must be ", want, ", got ", in.scalar_type());
  TORCH_CHECK_VALUE(
      in.dim() == 3 || in.dim() == 4, name, " must be 3-D or 4-D, got ", in.dim(), "-D");
  PoolPlan plan;
  plan.g = pool_geometry(kernel_size, stride, padding, dilation);
  plan.original = in;
  plan.in = as_batched(in);
  PoolGeom& g = plan.g;
  std::tie(g.H, g.W) = spatial_size(input_size, "input_size");
  g.OH = plan.in.size(2);
  g.OW = plan.in.size(3);
  check_extent(g.OH, g.OW, name);
  check_unpooled_size(g, "input_size");
  plan.out = empty_like_format(plan.in, g.OH, g.OW, to_indices ? at::kLong : at::kByte);
  plan.channels_last = is_channels_last(plan.in);
  return plan;
}

}  // namespace deconvkernels
