// Max pooling with switches, unpooling and their backward passes: the per-element work,
// written once. The CPU kernels call these bodies for the general case (and at vector
// tails); the CUDA kernels below are thin grid-stride loops over them, and the CPU
// emulator runs those same kernels in the tests.
//
// Every backward is a gather: each output element is computed by one thread from the
// windows that can reach it, in a fixed (raster) order. No atomics, same bits every run.
#pragma once

#include "common.h"

namespace deconvkernels {
DK_ISA_NAMESPACE_BEGIN

// ------------------------------------------------------------------ element bodies

// One pooling window: max with PyTorch's semantics (`val > max || isnan(val)` in raster
// order, so ties keep the first maximum and the last NaN wins) and its window offset.
// KH, KW > 0: the kernel size is known at compile time (it must equal g.kh, g.kw), so the
// GPU unrolls the taps; 0: read from g.
template <typename T, int KH = 0, int KW = 0>
DK_HD_INLINE void max_pool_window(
    const T* plane, int64_t stride_h, int64_t stride_w, const PoolGeom& g, int64_t oh,
    int64_t ow, T* out, uint8_t* switch_out) {
  using acc_t = typename AccType<T>::type;
  const int64_t kh = KH > 0 ? KH : g.kh;
  const int64_t kw = KW > 0 ? KW : g.kw;
  const int64_t h0 = oh * g.sh - g.ph;
  const int64_t w0 = ow * g.sw - g.pw;
  acc_t best = acc_t(0);
  T best_raw = T(0);
  int64_t best_k = -1;
  for (int64_t ky = 0; ky < kh; ++ky) {
    const int64_t ih = h0 + ky * g.dh;
    if (ih < 0 || ih >= g.H) continue;
    for (int64_t kx = 0; kx < kw; ++kx) {
      const int64_t iw = w0 + kx * g.dw;
      if (iw < 0 || iw >= g.W) continue;
      const T raw = plane[ih * stride_h + iw * stride_w];
      const acc_t v = static_cast<acc_t>(raw);
      if (best_k < 0 || v > best || is_nan(v)) {
        best = v;
        best_raw = raw;
        best_k = ky * kw + kx;
      }
    }
  }
  // PyTorch's pooling-shape rules guarantee every window holds an input element.
  *out = best_raw;
  *switch_out = static_cast<uint8_t>(best_k < 0 ? 0 : best_k);
}

// Unpooled position (ih, iw): the value the windows covering it put there through their
// switches, visited in raster order. kSum: their sum (the max-pool backward); otherwise
// the last one's value (the unpool forward: the last window in raster order wins).
template <typename T, bool kSum>
DK_HD_INLINE T switch_scatter_at(
    const T* values, int64_t v_sh, int64_t v_sw, const uint8_t* switches, int64_t s_sh,
    int64_t s_sw, const PoolGeom& g, int64_t ih, int64_t iw) {
  using acc_t = typename AccType<T>::type;
  int64_t oh_lo, oh_hi, ow_lo, ow_hi;
  windows_covering(ih, g.kh, g.sh, g.ph, g.dh, g.OH, &oh_lo, &oh_hi);
  windows_covering(iw, g.kw, g.sw, g.pw, g.dw, g.OW, &ow_lo, &ow_hi);
  acc_t sum = acc_t(0);
  T last = T(0);
  for (int64_t oh = oh_lo; oh <= oh_hi; ++oh) {
    const int64_t ry = ih + g.ph - oh * g.sh;
    if (ry % g.dh != 0) continue;
    const int64_t ky = ry / g.dh;
    for (int64_t ow = ow_lo; ow <= ow_hi; ++ow) {
      const int64_t rx = iw + g.pw - ow * g.sw;
      if (rx % g.dw != 0) continue;
      if (switches[oh * s_sh + ow * s_sw] == ky * g.kw + rx / g.dw) {
        const T v = values[oh * v_sh + ow * v_sw];
        if (kSum) {
          sum += static_cast<acc_t>(v);
        } else {
          last = v;
        }
      }
    }
  }
  return kSum ? static_cast<T>(sum) : last;
}

// The input position the pooled value (oh, ow) went to, if it survived the unpool: with
// `only_if_last` (overlapping windows), a position that a later window (raster order)
// also names belongs to that later window. False for an invalid switch as well (the
// launchers reject those before).
DK_HD_INLINE bool unpooled_position(
    const uint8_t* switches, int64_t s_sh, int64_t s_sw, const PoolGeom& g, int64_t oh,
    int64_t ow, bool only_if_last, int64_t* ih, int64_t* iw) {
  if (!switch_position(g, oh, ow, switches[oh * s_sh + ow * s_sw], ih, iw)) return false;
  if (!only_if_last) return true;
  int64_t oh_lo, oh_hi, ow_lo, ow_hi;
  windows_covering(*ih, g.kh, g.sh, g.ph, g.dh, g.OH, &oh_lo, &oh_hi);
  windows_covering(*iw, g.kw, g.sw, g.pw, g.dw, g.OW, &ow_lo, &ow_hi);
  for (int64_t oh2 = oh; oh2 <= oh_hi; ++oh2) {
    const int64_t ry = *ih + g.ph - oh2 * g.sh;
    if (ry % g.dh != 0) continue;
    for (int64_t ow2 = (oh2 == oh ? ow + 1 : ow_lo); ow2 <= ow_hi; ++ow2) {
      const int64_t rx = *iw + g.pw - ow2 * g.sw;
      if (rx % g.dw != 0) continue;
      if (switches[oh2 * s_sh + ow2 * s_sw] == (ry / g.dh) * g.kw + rx / g.dw) return false;
    }
  }
  return true;
}

// Pooled position (oh, ow): the unpooled tensor's value at the position its switch names
// (the unpool backward, and the adjoint of the max-pool backward); zero where the value
// did not survive the unpool (see unpooled_position).
template <typename T>
DK_HD_INLINE T switch_gather_at(
    const T* src, int64_t src_sh, int64_t src_sw, const uint8_t* switches, int64_t s_sh,
    int64_t s_sw, const PoolGeom& g, int64_t oh, int64_t ow, bool only_if_last) {
  int64_t ih, iw;
  if (!unpooled_position(switches, s_sh, s_sw, g, oh, ow, only_if_last, &ih, &iw)) return T(0);
  return src[ih * src_sh + iw * src_sw];
}

// Flat index h * W + w of the position a switch names, or -1 when it names none.
DK_HD_INLINE int64_t switch_to_index_at(const PoolGeom& g, int64_t oh, int64_t ow, int64_t sw) {
  int64_t ih, iw;
  return switch_position(g, oh, ow, sw, &ih, &iw) ? ih * g.W + iw : -1;
}

// Window offset of a flat index inside window (oh, ow), or -1 when it lies outside.
DK_HD_INLINE int64_t index_to_switch_at(const PoolGeom& g, int64_t oh, int64_t ow, int64_t idx) {
  if (idx < 0 || idx >= g.H * g.W) return -1;
  const int64_t ry = idx / g.W - (oh * g.sh - g.ph);
  const int64_t rx = idx % g.W - (ow * g.sw - g.pw);
  if (ry < 0 || rx < 0 || ry % g.dh != 0 || rx % g.dw != 0) return -1;
  const int64_t ky = ry / g.dh, kx = rx / g.dw;
  if (ky >= g.kh || kx >= g.kw) return -1;
  return ky * g.kw + kx;
}

// -------------------------------------------------------- CUDA kernels (grid-stride)
// Each kernel is a struct with an `Args` POD and `run(ThreadCoord, Args)`; the launch
// wrapper (csrc/cuda/launch.cuh) or the emulator (csrc/cpu/cuda_emulator.h) calls run.
// Threads walk output elements in the output's memory order, so writes coalesce.

// K > 0: a K x K window (the launcher picks K = 2 for DeconvNet's pools); 0: any.
template <typename T, int K = 0>
struct MaxPoolForwardKernel {
  struct Args {
    const T* x;
    T* y;
    uint8_t* switches;  // same shape and strides as y
    Strides4 xs, ys;
    int64_t C;
    PoolGeom g;
    bool channels_last;
    int64_t total;  // N * C * OH * OW
    FastUnravel un;  // usable: element numbers fit fast_unravel
  };
  static DK_HD void run(const ThreadCoord& t, const Args& a) {
    for (int64_t i = t.global_x(); i < a.total; i += t.stride_x()) {
      const Coord4 o = unravel_with(i, a.un, a.C, a.g.OH, a.g.OW, a.channels_last);
      const int64_t yo = offset_of(a.ys, o.n, o.c, o.h, o.w);
      max_pool_window<T, K, K>(
          a.x + o.n * a.xs.n + o.c * a.xs.c, a.xs.h, a.xs.w, a.g, o.h, o.w, a.y + yo,
          a.switches + yo);
    }
  }
};

// What the two switch scatters below read and write: pooled values and their switches,
// and the unpooled tensor.
template <typename T>
struct ScatterOperands {
  const T* values;
  const uint8_t* switches;
  T* out;
  Strides4 vs, ss, os;
  int64_t C;
  PoolGeom g;
  bool channels_last;
};

// Pooled values -> unpooled tensor through the switches: the max-pool backward (kSum)
// and the unpool forward (last window wins).
template <typename T, bool kSum>
struct SwitchScatterKernel {
  struct Args : ScatterOperands<T> {
    int64_t total;  // N * C * H * W
  };
  static DK_HD void run(const ThreadCoord& t, const Args& a) {
    for (int64_t i = t.global_x(); i < a.total; i += t.stride_x()) {
      const Coord4 o = unravel(i, a.C, a.g.H, a.g.W, a.channels_last);
      a.out[offset_of(a.os, o.n, o.c, o.h, o.w)] = switch_scatter_at<T, kSum>(
          a.values + o.n * a.vs.n + o.c * a.vs.c, a.vs.h, a.vs.w,
          a.switches + o.n * a.ss.n + o.c * a.ss.c, a.ss.h, a.ss.w, a.g, o.h, o.w);
    }
  }
};

// The same for windows that do not overlap (stride >= the dilated window), one thread per
// window instead of one per unpooled element: each unpooled position lies in at most one
// window, so the window's thread alone writes it (its value at the switch's tap, zeros
// at the others) and no position needs to search for its windows. The launcher zeroes the
// output first if some positions lie in no window. kSum writes 0 + value, as the sum over
// one window does (so a -0 gradient becomes +0, as in F.max_pool2d's backward). Also
// validates: a switch that names no in-bounds tap of its window sets *bad (its window is
// written as zeros).
template <typename T, bool kSum, int K = 0>
struct SwitchScatterWindowsKernel {
  struct Args : ScatterOperands<T> {
    int64_t total;  // N * C * OH * OW
    FastUnravel un;  // usable: element numbers fit fast_unravel
    int32_t* bad;
  };
  static DK_HD void run(const ThreadCoord& t, const Args& a) {
    using acc_t = typename AccType<T>::type;
    const int64_t kh = K > 0 ? K : a.g.kh;
    const int64_t kw = K > 0 ? K : a.g.kw;
    for (int64_t i = t.global_x(); i < a.total; i += t.stride_x()) {
      const Coord4 o = unravel_with(i, a.un, a.C, a.g.OH, a.g.OW, a.channels_last);
      const int64_t sw = a.switches[offset_of(a.ss, o.n, o.c, o.h, o.w)];
      const T raw = a.values[offset_of(a.vs, o.n, o.c, o.h, o.w)];
      const T v = kSum ? static_cast<T>(acc_t(0) + static_cast<acc_t>(raw)) : raw;
      T* plane = a.out + o.n * a.os.n + o.c * a.os.c;
      const int64_t h0 = o.h * a.g.sh - a.g.ph;
      const int64_t w0 = o.w * a.g.sw - a.g.pw;
      bool named = false;
      DK_UNROLL
      for (int64_t ky = 0; ky < kh; ++ky) {
        const int64_t ih = h0 + ky * a.g.dh;
        if (ih < 0 || ih >= a.g.H) continue;
        DK_UNROLL
        for (int64_t kx = 0; kx < kw; ++kx) {
          const int64_t iw = w0 + kx * a.g.dw;
          if (iw < 0 || iw >= a.g.W) continue;
          const bool hit = sw == ky * kw + kx;
          named = named || hit;
          plane[ih * a.os.h + iw * a.os.w] = hit ? v : T(0);
        }
      }
      if (!named) *a.bad = 1;
    }
  }
};

// Unpooled tensor -> pooled values through the switches: the unpool backward.
template <typename T>
struct SwitchGatherKernel {
  struct Args {
    const T* src;
    const uint8_t* switches;
    T* out;
    Strides4 srcs, ss, os;
    int64_t C;
    PoolGeom g;
    bool channels_last;
    bool only_if_last;
    int64_t total;  // N * C * OH * OW
    FastUnravel un;  // usable: element numbers fit fast_unravel
  };
  static DK_HD void run(const ThreadCoord& t, const Args& a) {
    for (int64_t i = t.global_x(); i < a.total; i += t.stride_x()) {
      const Coord4 o = unravel_with(i, a.un, a.C, a.g.OH, a.g.OW, a.channels_last);
      a.out[offset_of(a.os, o.n, o.c, o.h, o.w)] = switch_gather_at<T>(
          a.src + o.n * a.srcs.n + o.c * a.srcs.c, a.srcs.h, a.srcs.w,
          a.switches + o.n * a.ss.n + o.c * a.ss.c, a.ss.h, a.ss.w, a.g, o.h, o.w,
          a.only_if_last);
    }
  }
};

// Switches <-> flat indices, and the switch validation. Each writes 1 to *bad when an
// element is invalid (every writer writes the same value, so the race is benign).
struct SwitchesToIndicesKernel {
  struct Args {
    const uint8_t* switches;
    int64_t* indices;
    Strides4 ss, is;
    int64_t C;
    PoolGeom g;
    bool channels_last;
    int64_t total;
    int32_t* bad;
  };
  static DK_HD void run(const ThreadCoord& t, const Args& a) {
    for (int64_t i = t.global_x(); i < a.total; i += t.stride_x()) {
      const Coord4 o = unravel(i, a.C, a.g.OH, a.g.OW, a.channels_last);
      const int64_t idx =
          switch_to_index_at(a.g, o.h, o.w, a.switches[offset_of(a.ss, o.n, o.c, o.h, o.w)]);
      if (idx < 0) *a.bad = 1;
      a.indices[offset_of(a.is, o.n, o.c, o.h, o.w)] = idx < 0 ? 0 : idx;
    }
  }
};

struct IndicesToSwitchesKernel {
  struct Args {
    const int64_t* indices;
    uint8_t* switches;
    Strides4 is, ss;
    int64_t C;
    PoolGeom g;
    bool channels_last;
    int64_t total;
    int32_t* bad;
  };
  static DK_HD void run(const ThreadCoord& t, const Args& a) {
    for (int64_t i = t.global_x(); i < a.total; i += t.stride_x()) {
      const Coord4 o = unravel(i, a.C, a.g.OH, a.g.OW, a.channels_last);
      const int64_t sw =
          index_to_switch_at(a.g, o.h, o.w, a.indices[offset_of(a.is, o.n, o.c, o.h, o.w)]);
      if (sw < 0) *a.bad = 1;
      a.switches[offset_of(a.ss, o.n, o.c, o.h, o.w)] = static_cast<uint8_t>(sw < 0 ? 0 : sw);
    }
  }
};

struct ValidateSwitchesKernel {
  struct Args {
    const uint8_t* switches;
    Strides4 ss;
    int64_t C;
    PoolGeom g;
    bool channels_last;
    int64_t total;
    int32_t* bad;
  };
  static DK_HD void run(const ThreadCoord& t, const Args& a) {
    for (int64_t i = t.global_x(); i < a.total; i += t.stride_x()) {
      const Coord4 o = unravel(i, a.C, a.g.OH, a.g.OW, a.channels_last);
      if (switch_to_index_at(a.g, o.h, o.w, a.switches[offset_of(a.ss, o.n, o.c, o.h, o.w)]) < 0)
        *a.bad = 1;
    }
  }
};

DK_ISA_NAMESPACE_END
}  // namespace deconvkernels
