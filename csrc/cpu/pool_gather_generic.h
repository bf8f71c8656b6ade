// Unpooled -> pooled through the switches (the unpool backward): each pooled position reads
// the unpooled gradient where its switch points. Where windows overlap, a position that a
// later window (raster order) also names belonged to that window in the unpool forward, so
// the earlier ones read 0 there (`only_if_last`). Included by pool_kernels_impl.h inside its
// per-ISA namespace, after pool_scatter_generic.h (SwitchOffsets).
//
// A task owns whole planes (NCHW) or a run of channels of one image (NHWC). AVX-512 NCHW
// builds compare the targets of later windows (gather_nchw_vectors). Elsewhere, with overlap, a
// first pass writes each named position's owner, the last window naming it, into a scratch
// map (positions nobody names are never read), and the second reads a position only where
// its window owns it; before, each window searched the later windows over its position
// through the shared body (switch_gather_at): one thread, 4x512x14x14 3x3/2 padding 1 float32
// NCHW 2638 us, against 80 us for torch.gather of the same gradient at PyTorch's indices.
// Without overlap, one pass; the NCHW 2x2 kernel's at::vec form (switches widened to float
// lanes and compared per tap) took 316 us there. Values are copied as they are, and each
// switch is checked as in the scatter (a.bad_switch).
#pragma once

namespace gather_generic {

using scatter_generic::SwitchOffsets;

// v where keep, else +0, without a branch: whether a window still owns its position is as good
// as random with overlap, and GCC turned `keep ? v : T(0)` into a jump (one thread,
// 4x512x28x28 3x3/1 padding 1 float32 NCHW: half the time of the gather went to mispredicts).
template <typename T>
inline T value_or_zero(bool keep, T v) {
  using Bits = std::conditional_t<sizeof(T) == 2, uint16_t,
                                  std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>;
  static_assert(sizeof(T) == sizeof(Bits), "value_or_zero: 2-, 4- or 8-byte types");
  Bits b;
  std::memcpy(&b, &v, sizeof b);
  b &= static_cast<Bits>(Bits(0) - static_cast<Bits>(keep));
  std::memcpy(&v, &b, sizeof b);
  return v;
}

// The element a switch of window (h0, w0) names in an H x W map, or -1 where it is bad.
// (SwitchOffsets puts switches past the window far outside.)
inline int64_t named_position(const PoolGeom& g, const SwitchOffsets& off, int64_t h0,
                              int64_t w0, uint8_t k) {
  const int64_t ih = h0 + off.dy[k], iw = w0 + off.dx[k];
  const bool inside = static_cast<uint64_t>(ih) < static_cast<uint64_t>(g.H) &&
      static_cast<uint64_t>(iw) < static_cast<uint64_t>(g.W);
  return inside ? ih * g.W + iw : -1;
}

// Each switch's position relative to its window's origin in an H x W map; switches past
// the window get one far below 0.
struct RelativePositions {
  int64_t rel[256];
  RelativePositions(const PoolGeom& g, const SwitchOffsets& off) {
    for (int64_t k = 0; k < 256; ++k) rel[k] = off.dy[k] * g.W + off.dx[k];
  }
};

// Calls f(i, position) for the pooled positions i of one plane / run, in raster order, with
// the position its switch names (-1 or below: a bad switch); switch(i) reads the switch of i.
// A window inside the map needs no bounds checks: its origin plus the switch's offset.
template <typename Switch, typename F>
inline void for_each_named(const PoolGeom& g, const SwitchOffsets& off,
                           const RelativePositions& rp, Switch sw, F f) {
  const int64_t reach_h = (g.kh - 1) * g.dh, reach_w = (g.kw - 1) * g.dw;
  for (int64_t oh = 0, i = 0; oh < g.OH; ++oh) {
    const int64_t h0 = oh * g.sh - g.ph;
    const bool rows_inside = h0 >= 0 && h0 + reach_h < g.H;
    for (int64_t ow = 0, w0 = -g.pw; ow < g.OW; ++ow, ++i, w0 += g.sw) {
      if (rows_inside && w0 >= 0 && w0 + reach_w < g.W) {
        f(i, h0 * g.W + w0 + rp.rel[sw(i)]);
      } else {
        f(i, named_position(g, off, h0, w0, sw(i)));
      }
    }
  }
}

// One NCHW plane, a window at a time: s the plane's gradient, sp its switches, o its
// pooled gradient; owner a scratch of H * W (with overlap).
template <typename T, bool kOnlyIfLast>
inline void gather_plane(const PoolGeom& g, const SwitchOffsets& off, const RelativePositions& rp,
                         const T* s, const uint8_t* sp, T* o, int32_t* owner, bool& bad) {
  const auto switch_of = [&](int64_t i) { return sp[i]; };
  if constexpr (kOnlyIfLast) {
    for_each_named(g, off, rp, switch_of, [&](int64_t i, int64_t pos) {
      if (pos >= 0) owner[pos] = static_cast<int32_t>(i);
    });
  }
  for_each_named(g, off, rp, switch_of, [&](int64_t i, int64_t pos) {
    bad |= pos < 0;
    const int64_t at = pos < 0 ? 0 : pos;
    const bool reads = (pos >= 0) & (!kOnlyIfLast || owner[at] == i);
    o[i] = value_or_zero(reads, s[at]);
  });
}

template <typename T, bool kOnlyIfLast>
void gather_nchw_as(const PoolKernelArgs& a) {
  const PoolGeom g = a.g;
  const SwitchOffsets off(g);
  const RelativePositions rp(g, off);
  const T* src = static_cast<const T*>(a.in);
  T* out = static_cast<T*>(a.out);
  const uint8_t* sw = a.switches;
  const int64_t HW = g.H * g.W, OHW = g.OH * g.OW;
  at::parallel_for(0, a.N * a.C, grain_for(2 * OHW), [&](int64_t begin, int64_t end) {
    std::vector<int32_t> owner(kOnlyIfLast ? HW : 0);
    bool bad = false;
    for (int64_t plane = begin; plane < end; ++plane) {
      gather_plane<T, kOnlyIfLast>(g, off, rp, src + plane * HW, sw + plane * OHW,
                                   out + plane * OHW, owner.data(), bad);
    }
    if (bad) a.bad_switch->store(true, std::memory_order_relaxed);
  });
}

// The flat window offsets (dr * OW + dc > 0) of the later windows that may share a position
// with a window: none without overlap.
inline std::vector<int64_t> later_windows(const PoolGeom& g, bool overlap) {
  std::vector<int64_t> offs;
  if (!overlap) return offs;
  const scatter_generic::Reach reach(g);
  for (int64_t dr = 0; dr <= reach.rows; ++dr) {
    for (int64_t dc = -reach.cols; dc <= reach.cols; ++dc) {
      if (dr * g.OW + dc > 0) offs.push_back(dr * g.OW + dc);
    }
  }
  std::sort(offs.begin(), offs.end());
  offs.erase(std::unique(offs.begin(), offs.end()), offs.end());
  return offs;
}

// o[l] = s[t[l]] for the n lanes l whose bit is set in keep, +0 for the others (the kept
// values of the target-compare gathers, read a lane at a time); with a stride, o[l * stride]
// = s[t[l] * stride] (one channel of channels-last maps).
template <typename T>
inline void read_kept(const T* s, const int32_t* t, uint32_t keep, int64_t n, T* o,
                      int64_t stride = 1) {
  for (int64_t l = 0; l < n; ++l) {
    o[l * stride] = value_or_zero(((keep >> l) & 1) != 0, s[int64_t{t[l]} * stride]);
  }
}

#if defined(CPU_CAPABILITY_AVX512)
// NCHW, AVX-512, windows of up to 32 taps: 16 windows a step in raster order, across rows.
// Their flat targets come from scatter_generic::FlatTargets (switches checked there); a
// window keeps its value unless a later window names the same position, and the later
// windows that can share a position with window (oh, ow) are (oh + dr, ow + dc) for dr in
// [0, R], |dc| <= C (R, C: how many strides a window reaches past its first), so "lost" is a
// few compares of target vectors at fixed flat offsets (an offset that wraps into another
// row still names a later window: a match there is as true). The values are then read a
// lane at a time: a masked vector gather (16-bit values as 32-bit words) was no faster here,
// and slower on the small maps (8x32x17x23 5x5/2). Before, the owner map (gather_nchw_as):
// one thread, float32, us, min of two runs each: 4x512x14x14 3x3/2 padding 1 340 -> 150,
// 3x3/1 padding 1 1208 -> 495, 4x256x56x56 3x3/1 padding 1 8717 -> 3457, 4x64x112x112 2x2/2
// dilation 2 2244 -> 927; torch.gather of the same gradient at PyTorch's indices (which
// gives every window the value, last or not) 110, 371, 2831, 819.
//
// gather_compared_plane: the windows of one plane so, sp its OHW switches, s its gradient
// (position p at s[p * stride]), o its pooled gradient (window i at o[i * stride]; stride
// C: one channel of a channels-last map, gather_nhwc_planes); t a scratch of
// kComparedChunk + later.back() + 32 targets. False at a bad switch (a switch past its
// window or naming the padding), with o partly written.
constexpr int64_t kComparedChunk = 4096;  // windows whose targets are made before any is used

template <typename T>
__attribute__((always_inline)) inline bool gather_compared_plane(
    const scatter_generic::FlatTargets& targets, const std::vector<int64_t>& later, int64_t OHW,
    const uint8_t* sp, const T* s, T* o, int64_t stride, int32_t* t) {
  const int64_t farthest = later.empty() ? 0 : later.back();
  for (int64_t w0 = 0; w0 < OHW; w0 += kComparedChunk) {
    const int64_t windows = std::min(kComparedChunk, OHW - w0);
    // with the later windows the last of them compares with
    const int64_t made = std::min(OHW - w0, windows + farthest);
    if (!targets.windows(sp, w0, made, t)) return false;
    // past the plane's last window: names nothing (up to what the last step reads)
    std::fill(t + made, t + std::max(made, windows + farthest + 16), -1);
    T* oc = o + w0 * stride;
    for (int64_t j = 0; j < windows; j += 16) {
      const __m512i tj = _mm512_loadu_si512(t + j);
      __mmask16 lost = 0;
      for (const int64_t d : later) {
        lost |= _mm512_cmpeq_epi32_mask(tj, _mm512_loadu_si512(t + j + d));
      }
      read_kept(s, t + j, static_cast<uint32_t>(~lost), std::min<int64_t>(16, windows - j),
                oc + j * stride, stride);
    }
  }
  return true;
}

template <typename T>
void gather_nchw_vectors(const PoolKernelArgs& a, bool overlap) {
  const PoolGeom g = a.g;
  const SwitchOffsets off(g);
  const RelativePositions rp(g, off);
  const scatter_generic::FlatTargets targets(g, off);
  const std::vector<int64_t> later = later_windows(g, overlap);
  const int64_t farthest = later.empty() ? 0 : later.back();
  const T* src = static_cast<const T*>(a.in);
  T* out = static_cast<T*>(a.out);
  const uint8_t* sw = a.switches;
  const int64_t HW = g.H * g.W, OHW = g.OH * g.OW;
  at::parallel_for(0, a.N * a.C, grain_for(2 * OHW), [&](int64_t begin, int64_t end) {
    std::vector<int32_t> t(kComparedChunk + farthest + 2 * 16);
    std::vector<int32_t> owner;
    bool bad = false;
    for (int64_t plane = begin; plane < end; ++plane) {
      const T* s = src + plane * HW;
      const uint8_t* sp = sw + plane * OHW;
      T* o = out + plane * OHW;
      if (!gather_compared_plane(targets, later, OHW, sp, s, o, 1, t.data())) {
        // a bad switch: the plane again, a window at a time, to flag it
        owner.resize(overlap ? HW : 0);
        overlap ? gather_plane<T, true>(g, off, rp, s, sp, o, owner.data(), bad)
                : gather_plane<T, false>(g, off, rp, s, sp, o, owner.data(), bad);
      }
    }
    if (bad) a.bad_switch->store(true, std::memory_order_relaxed);
  });
}
#endif

#if defined(CPU_CAPABILITY_AVX2)
// NCHW with overlap, AVX2: gather_nchw_vectors' compares, 8 windows a step, on targets made
// a window at a time (for_each_named; the AVX-512 form's permutes of 32-entry tables have no
// cheap 8-lane twin), the whole plane's first. Before, the owner map: one
// thread, AVX2 build on the Xeon, float32 / bfloat16, us, min of two alternating runs
// (torch.gather): 4x512x14x14 3x3/2 padding 1 314 -> 231 / 297 -> 214 (106 / 122);
// 3x3/1 padding 1 1121 -> 974 / 1104 -> 979 (361 / 508); 4x512x28x28 3x3/2 padding 1 1098 ->
// 861 / 1119 -> 840 (424 / 532); 4x256x56x56 3x3/1 padding 1 8099 -> 7093 / 8232 -> 7187;
// 4x64x112x112 2x2/2 dilation 2 2101 -> 1532 / 1982 -> 1426 (799 / 1016); but 5x5/1 padding
// 2 (40 later windows) 1143 -> 1474, so at most 12 (compared_pays).
inline bool compared_pays(const PoolGeom& g) {
  const scatter_generic::Reach r(g);  // later windows: r.rows * (2 r.cols + 1) + r.cols
  return r.rows * (2 * r.cols + 1) + r.cols <= 12 && g.OH * g.OW <= (int64_t{1} << 20) &&
         g.H * g.W < (int64_t{1} << 31);
}

template <typename T>
void gather_nchw_compared(const PoolKernelArgs& a) {
  using IVec = Vectorized<int32_t>;
  constexpr int64_t V = IVec::size();
  const PoolGeom g = a.g;
  const SwitchOffsets off(g);
  const RelativePositions rp(g, off);
  const std::vector<int64_t> later = later_windows(g, true);
  const int64_t farthest = later.empty() ? 0 : later.back();
  const T* src = static_cast<const T*>(a.in);
  T* out = static_cast<T*>(a.out);
  const uint8_t* sw = a.switches;
  const int64_t HW = g.H * g.W, OHW = g.OH * g.OW;
  at::parallel_for(0, a.N * a.C, grain_for(2 * OHW), [&](int64_t begin, int64_t end) {
    std::vector<int32_t> t(OHW + farthest + 2 * V);
    std::vector<int32_t> owner;
    bool bad = false;
    for (int64_t plane = begin; plane < end; ++plane) {
      const T* s = src + plane * HW;
      const uint8_t* sp = sw + plane * OHW;
      T* o = out + plane * OHW;
      bool ok = true;
      for_each_named(g, off, rp, [&](int64_t i) { return sp[i]; }, [&](int64_t i, int64_t pos) {
        ok &= pos >= 0;
        t[i] = static_cast<int32_t>(pos);
      });
      if (!ok) {  // a bad switch: the owner map, to flag it
        owner.resize(HW);
        gather_plane<T, true>(g, off, rp, s, sp, o, owner.data(), bad);
        continue;
      }
      std::fill(t.begin() + OHW, t.end(), -1);  // past the last window: names nothing
      const int32_t* tp = t.data();
      for (int64_t j = 0; j < OHW; j += V) {
        const IVec mine = IVec::loadu(tp + j);
        IVec lost(0);
        for (const int64_t d : later) lost = lost | (mine == IVec::loadu(tp + j + d));
        const int lost_lanes = _mm256_movemask_ps(_mm256_castsi256_ps(__m256i(lost)));
        read_kept(s, tp + j, ~static_cast<uint32_t>(lost_lanes), std::min<int64_t>(V, OHW - j),
                  o + j);
      }
    }
    if (bad) a.bad_switch->store(true, std::memory_order_relaxed);
  });
}
#endif

// Channels [c0, c0 + nc) of one NHWC image, a window at a time (s, sn, o: the image's
// gradient, switches and pooled gradient from channel c0; owner a scratch of H * W * nc).
template <typename T, bool kOnlyIfLast>
inline void gather_nhwc_channels(const PoolGeom& g, const SwitchOffsets& off,
                                 const RelativePositions& rp, int64_t C, int64_t nc,
                                 const T* s, const uint8_t* sn, T* o, int32_t* owner,
                                 bool& bad) {
  const int64_t reach_h = (g.kh - 1) * g.dh, reach_w = (g.kw - 1) * g.dw;
  // Pixel by pixel, the channels of each in turn (each pass reads the maps in order).
  const auto each = [&](auto f) {
    for (int64_t oh = 0, i = 0; oh < g.OH; ++oh) {
      const int64_t h0 = oh * g.sh - g.ph;
      const bool rows_inside = h0 >= 0 && h0 + reach_h < g.H;
      for (int64_t ow = 0, w0 = -g.pw; ow < g.OW; ++ow, ++i, w0 += g.sw) {
        const uint8_t* si = sn + i * C;
        if (rows_inside && w0 >= 0 && w0 + reach_w < g.W) {
          const int64_t origin = h0 * g.W + w0;
          for (int64_t c = 0; c < nc; ++c) f(i, c, origin + rp.rel[si[c]]);
        } else {
          for (int64_t c = 0; c < nc; ++c) f(i, c, named_position(g, off, h0, w0, si[c]));
        }
      }
    }
  };
  if constexpr (kOnlyIfLast) {
    each([&](int64_t i, int64_t c, int64_t pos) {
      if (pos >= 0) owner[pos * nc + c] = static_cast<int32_t>(i);
    });
  }
  each([&](int64_t i, int64_t c, int64_t pos) {
    bad |= pos < 0;
    const int64_t at = pos < 0 ? 0 : pos;
    const bool reads = (pos >= 0) & (!kOnlyIfLast || owner[at * nc + c] == i);
    o[i * C + c] = value_or_zero(reads, s[at * C + c]);
  });
}

template <typename T, bool kOnlyIfLast>
void gather_nhwc_as(const PoolKernelArgs& a) {
  const PoolGeom g = a.g;
  const SwitchOffsets off(g);
  const RelativePositions rp(g, off);
  const int64_t C = a.C;
  const T* src = static_cast<const T*>(a.in);
  T* out = static_cast<T*>(a.out);
  const uint8_t* sw = a.switches;
  const int64_t HW = g.H * g.W, OHW = g.OH * g.OW;
  const ChannelRuns tasks(a.N, C);
  const int64_t run = tasks.run;
  at::parallel_for(0, tasks.items(a.N), grain_for(2 * OHW * run), [&](int64_t begin,
                                                                        int64_t end) {
    std::vector<int32_t> owner(kOnlyIfLast ? HW * run : 0);
    bool bad = false;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = tasks.n(item), c0 = tasks.c0(item);
      gather_nhwc_channels<T, kOnlyIfLast>(g, off, rp, C, tasks.count(item),
                                           src + n * HW * C + c0, sw + n * OHW * C + c0,
                                           out + n * OHW * C + c0, owner.data(), bad);
    }
    if (bad) a.bad_switch->store(true, std::memory_order_relaxed);
  });
}

// NHWC without overlap, fewer channels than a vector (an image's 3): rows of pooled pixels in
// parallel, a pixel's channels one by one through RelativePositions. The vector form
// (gather_nhwc in pool_kernels_impl.h) paid a partial load through a buffer per tap for a
// vector of 3 lanes.
template <typename T>
void gather_nhwc_few_channels(const PoolKernelArgs& a) {
  const PoolGeom g = a.g;
  const SwitchOffsets off(g);
  const RelativePositions rp(g, off);
  const int64_t C = a.C;
  const T* src = static_cast<const T*>(a.in);
  T* out = static_cast<T*>(a.out);
  const uint8_t* sw = a.switches;
  const int64_t reach_h = (g.kh - 1) * g.dh, reach_w = (g.kw - 1) * g.dw;
  at::parallel_for(0, a.N * g.OH, grain_for(g.OW * C * 2), [&](int64_t begin, int64_t end) {
    bool bad = false;
    CountedIndex row(begin, g.OH);  // (n, oh)
    for (int64_t r = begin; r < end; ++r, row.next()) {
      const T* s = src + row.outer * g.H * g.W * C;
      const int64_t h0 = row.inner * g.sh - g.ph;
      const bool rows_inside = h0 >= 0 && h0 + reach_h < g.H;
      const uint8_t* si = sw + r * g.OW * C;
      T* o = out + r * g.OW * C;
      for (int64_t ow = 0, w0 = -g.pw; ow < g.OW; ++ow, w0 += g.sw, si += C, o += C) {
        if (rows_inside && w0 >= 0 && w0 + reach_w < g.W) {
          const int64_t origin = h0 * g.W + w0;
          for (int64_t c = 0; c < C; ++c) {
            const int64_t pos = origin + rp.rel[si[c]];  // far below 0: a switch past the window
            bad |= pos < 0;
            o[c] = s[(pos < 0 ? 0 : pos) * C + c];
          }
        } else {
          for (int64_t c = 0; c < C; ++c) {
            const int64_t pos = named_position(g, off, h0, w0, si[c]);
            bad |= pos < 0;
            o[c] = value_or_zero(pos >= 0, s[(pos < 0 ? 0 : pos) * C + c]);
          }
        }
      }
    }
    if (bad) a.bad_switch->store(true, std::memory_order_relaxed);
  });
}

#if defined(CPU_CAPABILITY_AVX512)
// NHWC with overlap, AVX-512, windows of up to 32 taps: gather_nchw_vectors' compares with
// the channels as lanes. A task is (image, 16 channels); the targets of a chunk of windows
// are made first (16 lanes a window: its origin plus each channel's switch offsets, checked
// as FlatTargets does), then each window's lanes drop their value where a later window's
// lane names the same pixel, and the kept values are read a lane at a time. Before, the
// owner map (gather_nhwc_channels). One thread, channels_last float32, us, min of three
// alternating runs, before -> after (torch.gather at PyTorch's indices): 4x512x14x14 3x3/2
// padding 1 401 -> 155 (190), 4x512x28x28 1542 -> 687 (924), 4x256x56x56 3x3/1 padding 1
// 10791 -> 7187 (15565), 1x3x224x224 3x3/2 padding 1 254 -> 97 (31: three of 16 lanes).
template <typename T>
void gather_nhwc_vectors(const PoolKernelArgs& a) {
  const PoolGeom g = a.g;
  const SwitchOffsets off(g);
  const RelativePositions rp(g, off);
  const std::vector<int64_t> later = later_windows(g, true);
  const int64_t farthest = later.empty() ? 0 : later.back();
  const int64_t C = a.C, HW = g.H * g.W, OHW = g.OH * g.OW;
  const int64_t groups = (C + 15) / 16;
  const T* src = static_cast<const T*>(a.in);
  T* out = static_cast<T*>(a.out);
  const uint8_t* sw = a.switches;
  const int64_t taps = g.kh * g.kw;
  const scatter_generic::SwitchTables tables(g, off);
  constexpr int64_t kChunk = 1024;  // windows (x 16 lanes) whose targets are made first
  at::parallel_for(0, a.N * groups, grain_for(2 * OHW * 16), [&](int64_t begin, int64_t end) {
    const __m512i H = _mm512_set1_epi32(static_cast<int32_t>(g.H));
    const __m512i W = _mm512_set1_epi32(static_cast<int32_t>(g.W));
    const __m512i last_tap = _mm512_set1_epi32(static_cast<int32_t>(taps - 1));
    std::vector<int32_t> t((kChunk + farthest) * 16);
    std::vector<int32_t> owner;
    bool bad = false;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / groups, c0 = (item % groups) * 16;
      const int64_t nc = std::min<int64_t>(16, C - c0);
      const auto lanes = static_cast<__mmask16>((uint32_t{1} << nc) - 1);
      const T* s = src + n * HW * C + c0;
      const uint8_t* sn = sw + n * OHW * C + c0;
      T* o = out + n * OHW * C + c0;
      for (int64_t w0 = 0; w0 < OHW; w0 += kChunk) {
        const int64_t windows = std::min(kChunk, OHW - w0);
        const int64_t made = std::min(OHW - w0, windows + farthest);
        __mmask16 worst = 0;
        for (int64_t i = 0, oh = w0 / g.OW, ow = w0 % g.OW; i < made; ++i) {
          const __m512i k = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(lanes, sn + (w0 + i) * C));
          const auto [dy, dx] = tables.of(k);
          const __m512i ih =
              _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(oh * g.sh - g.ph)), dy);
          const __m512i iw =
              _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(ow * g.sw - g.pw)), dx);
          worst |= _mm512_mask_cmpgt_epu32_mask(lanes, k, last_tap) |
                   _mm512_mask_cmpge_epu32_mask(lanes, ih, H) |
                   _mm512_mask_cmpge_epu32_mask(lanes, iw, W);
          _mm512_storeu_si512(&t[i * 16], _mm512_add_epi32(_mm512_mullo_epi32(ih, W), iw));
          if (++ow == g.OW) ow = 0, ++oh;
        }
        if (worst) {  // a bad switch: these channels again, a window at a time, to flag it
          owner.resize(HW * 16);
          gather_nhwc_channels<T, true>(g, off, rp, C, nc, s, sn, o, owner.data(), bad);
          break;
        }
        // past the image's last window: names nothing
        std::fill(t.begin() + made * 16, t.begin() + (windows + farthest) * 16, -1);
        for (int64_t i = 0; i < windows; ++i) {
          const int32_t* ti = &t[i * 16];
          const __m512i mine = _mm512_loadu_si512(ti);
          __mmask16 lost = 0;
          for (const int64_t d : later) {
            lost |= _mm512_cmpeq_epi32_mask(mine, _mm512_loadu_si512(ti + d * 16));
          }
          const uint32_t keep = static_cast<uint32_t>(~lost);
          T* oi = o + (w0 + i) * C;
          for (int64_t l = 0; l < nc; ++l) {
            oi[l] = value_or_zero(((keep >> l) & 1) != 0, s[ti[l] * C + l]);
          }
        }
      }
    }
    if (bad) a.bad_switch->store(true, std::memory_order_relaxed);
  });
}
#endif

#if defined(CPU_CAPABILITY_AVX512)
// NHWC with overlap and few channels (an image's 3), AVX-512: a channel at a time as
// gather_nchw_vectors does a plane, on that channel's switches copied out of the pixels into
// a plane of their own (FlatTargets, then the compares with later windows' targets), its kept
// values read and written at the pixels' stride. gather_nhwc_vectors fills 16 lanes with a
// window's channels, 3 of them here. Two threads, us, vectors -> planes (torch.gather at
// PyTorch's indices, which keeps every window's value, last or not), float32: 8x3x224x224
// 3x3/2 padding 1 441 -> 340 (228), bfloat16 383 -> 278 (251); 8x4x112x112 113 -> 97 (51),
// 3x3/1 padding 1 663 -> 395 (194); but 8x6x112x112 3x3/2 133 -> 159, 8x8 158 -> 228, so up
// to 4 channels (8x5: 125 / 123).
template <typename T>
void gather_nhwc_planes(const PoolKernelArgs& a) {
  const PoolGeom g = a.g;
  const SwitchOffsets off(g);
  const scatter_generic::FlatTargets targets(g, off);
  const std::vector<int64_t> later = later_windows(g, true);
  const int64_t farthest = later.empty() ? 0 : later.back();
  const int64_t C = a.C, HW = g.H * g.W, OHW = g.OH * g.OW;
  const T* src = static_cast<const T*>(a.in);
  T* out = static_cast<T*>(a.out);
  const uint8_t* sw = a.switches;
  at::parallel_for(0, a.N * C, grain_for(2 * OHW), [&](int64_t begin, int64_t end) {
    std::vector<int32_t> t(kComparedChunk + farthest + 2 * 16);
    std::vector<uint8_t> plane(OHW);
    bool bad = false;
    for (int64_t item = begin; item < end && !bad; ++item) {
      const int64_t n = item / C, c = item % C;
      const uint8_t* sn = sw + n * OHW * C + c;
      for (int64_t i = 0; i < OHW; ++i) plane[i] = sn[i * C];
      // (a bad switch fails the op: no need to look further)
      bad = !gather_compared_plane(targets, later, OHW, plane.data(), src + n * HW * C + c,
                                   out + n * OHW * C + c, C, t.data());
    }
    if (bad) a.bad_switch->store(true, std::memory_order_relaxed);
  });
}
#endif

// NCHW 2x2 stride 2 inside the input (DeconvNet's pools): a pooled row from its two input
// rows, the switch's high bit picking the row and its low bit the column; nothing else to
// check but switch < 4. (One thread, 4x512x14x14 float32: the plane walk above 209 us, this
// 110 us; torch.gather 82 us; Zen 3.) AVX-512 builds do a row by permutes
// (avx512_pool::gather_row_2x2; Xeon, one thread, 4x64x112x112 float32 1510 -> 680 us,
// bfloat16 1501 -> 414; torch.gather 1270-1420, 1300-1750); AVX2 builds the whole 8-value
// steps of float32 rows (avx2_pool::gather_row_2x2; 4x64x112x112 1052-1107 -> 733-751 us).
template <typename T>
void gather_nchw_2x2(const PoolKernelArgs& a) {
  const PoolGeom g = a.g;
  const T* src = static_cast<const T*>(a.in);
  T* out = static_cast<T*>(a.out);
  const uint8_t* sw = a.switches;
  at::parallel_for(0, a.N * a.C * g.OH, grain_for(4 * g.OW), [&](int64_t begin, int64_t end) {
    uint8_t worst = 0;
    CountedIndex row(begin, g.OH);  // (plane, oh)
    for (int64_t r = begin; r < end; ++r, row.next()) {
      const T* r0 = src + row.outer * g.H * g.W + 2 * row.inner * g.W;
      const T* const rows[2] = {r0, r0 + g.W};
      const uint8_t* s = sw + r * g.OW;
      T* o = out + r * g.OW;
#if defined(CPU_CAPABILITY_AVX512)
      if constexpr (avx512_pool::kSupported<T>) {
        worst |= avx512_pool::gather_row_2x2(rows[0], rows[1], s, o, g.OW);
        continue;
      }
#endif
      int64_t done = 0;
#if defined(CPU_CAPABILITY_AVX2)
      if constexpr (std::is_same_v<T, float>) {
        const auto [or_of_switches, n] = avx2_pool::gather_row_2x2(rows[0], rows[1], s, o, g.OW);
        worst |= or_of_switches;
        done = n;
      }
#endif
      for (int64_t ow = done; ow < g.OW; ++ow) {
        const uint8_t k = s[ow];
        worst |= k;
        o[ow] = rows[(k >> 1) & 1][2 * ow + (k & 1)];
      }
    }
    if (worst > 3) a.bad_switch->store(true, std::memory_order_relaxed);
  });
}

template <typename T>
void gather_nchw(const PoolKernelArgs& a, bool only_if_last) {
  if (is_2x2_stride2_inside(a.g)) return gather_nchw_2x2<T>(a);
#if defined(CPU_CAPABILITY_AVX512)
  if (scatter_generic::FlatTargets::usable(a.g)) return gather_nchw_vectors<T>(a, only_if_last);
#elif defined(CPU_CAPABILITY_AVX2)
  if (only_if_last && compared_pays(a.g)) return gather_nchw_compared<T>(a);
#endif
  only_if_last ? gather_nchw_as<T, true>(a) : gather_nchw_as<T, false>(a);
}

template <typename T>
void gather_nhwc(const PoolKernelArgs& a, bool only_if_last) {
#if defined(CPU_CAPABILITY_AVX512)
  if (only_if_last && scatter_generic::FlatTargets::usable(a.g)) {
    return a.C <= 4 ? gather_nhwc_planes<T>(a) : gather_nhwc_vectors<T>(a);
  }
#endif
  only_if_last ? gather_nhwc_as<T, true>(a) : gather_nhwc_as<T, false>(a);
}

}  // namespace gather_generic
