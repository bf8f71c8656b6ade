// Fused unpool + transposed convolution: the general kernels, written once.
//
//   out = conv_transpose2d(max_unpool2d(y, switches), weight, bias)
//
// The unpooled map U is never stored: wherever these kernels need U(ci, ih, iw) they ask
// the switches (switch_scatter_at: the value of the last window pointing there, or 0).
// Every kernel is a gather (one thread owns each output element and sums in a fixed
// order), so results are deterministic without atomics. They visit the same taps as a
// dense transposed convolution of U, so they are correct for every pool and deconvolution
// geometry; the fast kernels for DeconvNet's case (2x2/2 pool, stride-1 odd kernels) walk
// only the pooled values instead and live beside the CPU launchers.
#pragma once

#include "pool_kernels.h"

namespace deconvkernels {

// The transposed convolution's geometry. Input (the unpooled map) is (H, W) = pool.H/W.
struct DeconvGeom {
  int64_t kh, kw;   // weight's spatial size
  int64_t sh, sw;   // stride
  int64_t ph, pw;   // padding
  int64_t dh, dw;   // dilation
  int64_t Ho, Wo;   // output size
  int64_t groups;
  int64_t cin, cout;                // channels in total
  int64_t cin_group, cout_group;    // per group
};

// Element strides of the weight (C_in, C_out / groups, kh, kw).
struct WeightStrides {
  int64_t ci, co, a, b;
};

DK_ISA_NAMESPACE_BEGIN

// Output coordinate that input position i reaches through kernel tap a, or -1.
DK_HD_INLINE int64_t deconv_target(int64_t i, int64_t a, int64_t s, int64_t p, int64_t d,
                                   int64_t out) {
  const int64_t z = i * s - p + a * d;
  return z >= 0 && z < out ? z : -1;
}

// Input coordinate that reaches output coordinate z through tap a, or -1.
DK_HD_INLINE int64_t deconv_source(int64_t z, int64_t a, int64_t s, int64_t p, int64_t d,
                                   int64_t in) {
  const int64_t t = z + p - a * d;
  if (t < 0 || t % s != 0) return -1;
  const int64_t i = t / s;
  return i < in ? i : -1;
}

// out[n, co, zh, zw] = bias[co] + sum over the group's ci and the taps of U * weight.
template <typename T>
struct UnpoolDeconvForwardKernel {
  struct Args {
    const T* y;
    const uint8_t* switches;
    const T* weight;
    const T* bias;  // may be null
    T* out;
    Strides4 ys, ss, os;
    WeightStrides ws;
    PoolGeom pool;
    DeconvGeom dc;
    bool channels_last;
    int64_t total;
  };
  static DK_HD void run(const ThreadCoord& t, const Args& a) {
    using acc_t = typename AccType<T>::type;
    const DeconvGeom& d = a.dc;
    for (int64_t i = t.global_x(); i < a.total; i += t.stride_x()) {
      const Coord4 o = unravel(i, d.cout, d.Ho, d.Wo, a.channels_last);
      const int64_t grp = o.c / d.cout_group, co_g = o.c % d.cout_group;
      acc_t acc = a.bias != nullptr ? static_cast<acc_t>(a.bias[o.c]) : acc_t(0);
      for (int64_t cl = 0; cl < d.cin_group; ++cl) {
        const int64_t ci = grp * d.cin_group + cl;
        const T* yp = a.y + o.n * a.ys.n + ci * a.ys.c;
        const uint8_t* sp = a.switches + o.n * a.ss.n + ci * a.ss.c;
        const T* wp = a.weight + ci * a.ws.ci + co_g * a.ws.co;
        for (int64_t ka = 0; ka < d.kh; ++ka) {
          const int64_t ih = deconv_source(o.h, ka, d.sh, d.ph, d.dh, a.pool.H);
          if (ih < 0) continue;
          for (int64_t kb = 0; kb < d.kw; ++kb) {
            const int64_t iw = deconv_source(o.w, kb, d.sw, d.pw, d.dw, a.pool.W);
            if (iw < 0) continue;
            const T u = switch_scatter_at<T, false>(
                yp, a.ys.h, a.ys.w, sp, a.ss.h, a.ss.w, a.pool, ih, iw);
            acc += static_cast<acc_t>(u) * static_cast<acc_t>(wp[ka * a.ws.a + kb * a.ws.b]);
          }
        }
      }
      a.out[offset_of(a.os, o.n, o.c, o.h, o.w)] = static_cast<T>(acc);
    }
  }
};

// grad_y[n, ci, oh, ow]: the transposed convolution's input gradient at the one position
// the pooled value went to (zero if it lost that position to a later window).
template <typename T>
struct UnpoolDeconvGradYKernel {
  struct Args {
    const T* grad_out;
    const uint8_t* switches;
    const T* weight;
    T* grad_y;
    Strides4 gs, ss, ys;
    WeightStrides ws;
    PoolGeom pool;
    DeconvGeom dc;
    bool only_if_last;
    bool channels_last;
    int64_t total;
  };
  static DK_HD void run(const ThreadCoord& t, const Args& a) {
    using acc_t = typename AccType<T>::type;
    const DeconvGeom& d = a.dc;
    for (int64_t i = t.global_x(); i < a.total; i += t.stride_x()) {
      const Coord4 o = unravel(i, d.cin, a.pool.OH, a.pool.OW, a.channels_last);
      acc_t acc = acc_t(0);
      int64_t ih, iw;
      if (unpooled_position(
              a.switches + o.n * a.ss.n + o.c * a.ss.c, a.ss.h, a.ss.w, a.pool, o.h, o.w,
              a.only_if_last, &ih, &iw)) {
        const int64_t grp = o.c / d.cin_group;
        for (int64_t co_g = 0; co_g < d.cout_group; ++co_g) {
          const T* gp = a.grad_out + o.n * a.gs.n + (grp * d.cout_group + co_g) * a.gs.c;
          const T* wp = a.weight + o.c * a.ws.ci + co_g * a.ws.co;
          for (int64_t ka = 0; ka < d.kh; ++ka) {
            const int64_t zh = deconv_target(ih, ka, d.sh, d.ph, d.dh, d.Ho);
            if (zh < 0) continue;
            for (int64_t kb = 0; kb < d.kw; ++kb) {
              const int64_t zw = deconv_target(iw, kb, d.sw, d.pw, d.dw, d.Wo);
              if (zw < 0) continue;
              acc += static_cast<acc_t>(gp[zh * a.gs.h + zw * a.gs.w]) *
                  static_cast<acc_t>(wp[ka * a.ws.a + kb * a.ws.b]);
            }
          }
        }
      }
      a.grad_y[offset_of(a.ys, o.n, o.c, o.h, o.w)] = static_cast<T>(acc);
    }
  }
};

// grad_weight[ci, co_g, ka, kb]: sum over the batch and the surviving pooled values of
// y * grad_out at the position the tap carries them to. One thread per weight element,
// batch-major raster order: a fixed reduction order.
template <typename T>
struct UnpoolDeconvGradWeightKernel {
  struct Args {
    const T* grad_out;
    const T* y;
    const uint8_t* switches;
    T* grad_weight;  // contiguous (C_in, C_out / groups, kh, kw)
    Strides4 gs, ys, ss;
    PoolGeom pool;
    DeconvGeom dc;
    int64_t batch;
    bool only_if_last;
    int64_t total;
  };
  static DK_HD void run(const ThreadCoord& t, const Args& a) {
    using acc_t = typename AccType<T>::type;
    const DeconvGeom& d = a.dc;
    for (int64_t i = t.global_x(); i < a.total; i += t.stride_x()) {
      const int64_t kb = i % d.kw, ka = (i / d.kw) % d.kh;
      const int64_t co_g = (i / (d.kw * d.kh)) % d.cout_group;
      const int64_t ci = i / (d.kw * d.kh * d.cout_group);
      const int64_t co = (ci / d.cin_group) * d.cout_group + co_g;
      acc_t acc = acc_t(0);
      for (int64_t n = 0; n < a.batch; ++n) {
        const T* yp = a.y + n * a.ys.n + ci * a.ys.c;
        const uint8_t* sp = a.switches + n * a.ss.n + ci * a.ss.c;
        const T* gp = a.grad_out + n * a.gs.n + co * a.gs.c;
        for (int64_t oh = 0; oh < a.pool.OH; ++oh) {
          for (int64_t ow = 0; ow < a.pool.OW; ++ow) {
            int64_t ih, iw;
            if (!unpooled_position(sp, a.ss.h, a.ss.w, a.pool, oh, ow, a.only_if_last, &ih, &iw))
              continue;
            const int64_t zh = deconv_target(ih, ka, d.sh, d.ph, d.dh, d.Ho);
            const int64_t zw = deconv_target(iw, kb, d.sw, d.pw, d.dw, d.Wo);
            if (zh < 0 || zw < 0) continue;
            acc += static_cast<acc_t>(yp[oh * a.ys.h + ow * a.ys.w]) *
                static_cast<acc_t>(gp[zh * a.gs.h + zw * a.gs.w]);
          }
        }
      }
      a.grad_weight[i] = static_cast<T>(acc);
    }
  }
};

// grad_bias[co]: the sum of grad_out over batch and space, in raster order.
template <typename T>
struct DeconvGradBiasKernel {
  struct Args {
    const T* grad_out;
    T* grad_bias;
    Strides4 gs;
    int64_t batch, Ho, Wo;
    int64_t total;  // C_out
  };
  static DK_HD void run(const ThreadCoord& t, const Args& a) {
    using acc_t = typename AccType<T>::type;
    for (int64_t co = t.global_x(); co < a.total; co += t.stride_x()) {
      acc_t acc = acc_t(0);
      for (int64_t n = 0; n < a.batch; ++n)
        for (int64_t h = 0; h < a.Ho; ++h)
          for (int64_t w = 0; w < a.Wo; ++w)
            acc += static_cast<acc_t>(a.grad_out[offset_of(a.gs, n, co, h, w)]);
      a.grad_bias[co] = static_cast<T>(acc);
    }
  }
};

DK_ISA_NAMESPACE_END
}  // namespace deconvkernels
