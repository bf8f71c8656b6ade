// Argument checks and output allocation shared by the CPU, CUDA and emulated launchers of
// the pooling ops: one place decides shapes, memory formats and error messages, so every
// device agrees (and the fake kernels in deconvkernels/ops.py mirror exactly this).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymIntArrayRef.h>

#include <utility>

#include "kernels/common.h"

namespace deconvkernels {

// The largest stride, padding, dilation, deconvolution kernel side and spatial extent the ops
// take (2^31 - 1). With every such value below 2^31 (and pool kernel sides below 256), the
// products the geometry forms ((OH - 1) * stride, dilation * (kernel - 1), ...) stay far from
// int64's range: unbounded values wrapped around, passed the checks and sent the kernels
// past their buffers.
constexpr int64_t kMaxExtent = (int64_t(1) << 31) - 1;

// Argument checks that name the argument, shared by every op.
void check_pair(at::IntArrayRef v, const char* name);
// 0 <= each of v's two values <= kMaxExtent (signs are checked apart, with their own words).
void check_pair_bound(at::IntArrayRef v, const char* name);
// A spatial extent (a tensor's H or W) of at most kMaxExtent.
void check_extent(int64_t h, int64_t w, const char* name);
// A dense 3-D (C, H, W) or 4-D (N, C, H, W) float32/float64/float16/bfloat16 tensor.
void check_floating(const at::Tensor& t, const char* name);
// t has dtype `dtype` and the shape and device of `like` (a pooled tensor's companion).
void check_pooled_companion(
    const at::Tensor& t, const at::Tensor& like, at::ScalarType dtype, const char* name,
    const char* like_name);
// A positive (H, W) from a 2-element size argument.
std::pair<int64_t, int64_t> spatial_size(c10::SymIntArrayRef size, const char* name);

// Checked pooling geometry; (H, W) and (OH, OW) are filled in by the plan functions.
PoolGeom pool_geometry(
    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation);

// (H, W) must be a size some pool with g's geometry (floor or ceil mode) maps to (OH, OW).
void check_unpooled_size(const PoolGeom& g, const char* name);

// PyTorch's pooling_output_shape for one dimension.
int64_t pooled_size(int64_t size, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode);

// True when no window reaches into the padding or past the input: then every switch
// below kh * kw names a valid position.
bool windows_inside_input(const PoolGeom& g);

// True when two windows can share an input position.
bool windows_overlap(const PoolGeom& g);

Strides4 strides_of(const at::Tensor& t4);

// A 3-D (C, H, W) tensor viewed as a batch of one; 4-D passes through.
at::Tensor as_batched(const at::Tensor& t);
// Undo as_batched on an output when the input was 3-D.
at::Tensor unbatch_like(const at::Tensor& out4, const at::Tensor& original);

// Ask for transparent huge pages for a large CPU tensor about to be written.
void advise_huge_pages(const at::Tensor& t);

// Empty (N, C, h, w) tensor in the memory format of the 4-D tensor ref4 (large CPU ones
// on huge pages, see advise_huge_pages).
at::Tensor empty_like_format(
    const at::Tensor& ref4, int64_t h, int64_t w, at::ScalarType dtype);
// The same with c channels.
at::Tensor empty_like_format(
    const at::Tensor& ref4, int64_t c, int64_t h, int64_t w, at::ScalarType dtype);

// The plan of one launch: batched inputs, allocated outputs, checked geometry.
struct PoolPlan {
  at::Tensor in;        // 4-D primary input (x, values, or the unpooled gradient)
  at::Tensor switches;  // 4-D uint8 (empty for the max-pool forward)
  at::Tensor out;       // 4-D primary output
  at::Tensor out_switches;  // 4-D uint8, max-pool forward only
  PoolGeom g;
  bool channels_last;   // the outputs' memory format
  at::Tensor original;  // the caller's primary input (3-D or 4-D) for unbatching
};

PoolPlan plan_max_pool(
    const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode);

// Pooled values + switches -> unpooled (H, W): the unpool forward and the pool backward.
// `what` names the values argument ("y" or "grad_y") and `size_name` the size argument.
PoolPlan plan_scatter(
    const at::Tensor& values, const at::Tensor& switches, c10::SymIntArrayRef size,
    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, const char* what, const char* size_name);

// Unpooled gradient + switches -> pooled: the unpool backward.
PoolPlan plan_gather(
    const at::Tensor& grad_out, const at::Tensor& switches, at::IntArrayRef kernel_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation);

// switches <-> indices: `in` is the switches or the indices, `out` the other.
PoolPlan plan_convert(
    const at::Tensor& in, c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    bool to_indices);

// Error text for a switch outside its window (shared by every device).
extern const char* const kBadSwitchMessage;
extern const char* const kBadIndexMessage;

}  // namespace deconvkernels
