// The max-pool forward for any geometry (the 2x2 stride-2 kernels have their own), with
// at::vec, included by pool_kernels_impl.h inside its per-ISA namespace (Lanes, max_update,
// grain_for come from there).
//
//  * NHWC: each output pixel's window taps that lie inside the input are listed once; then
//    channels go in blocks of four vectors with the running maxima in registers, every tap
//    one contiguous read a vector. Before, the block loop checked each vector's channel count
//    and each tap's bounds inside the tap loop and kept the maxima on the stack. One thread,
//    4x512x28x28 3x3/2 channels_last: float32 883 -> 351 us, bfloat16 1200 -> 438 us
//    (PyTorch's 528 and 592).
//  * NCHW: vectors run along a pooled row (a tap is a load at stride 1, a load of pairs and
//    a deinterleave at stride 2, a gather at larger strides); the window columns at the
//    row's ends that reach into the padding and rows of fewer than 4 inside columns go one
//    window at a time (ListedWindows, else the scalar max_pool_window). Before, every window was scalar, as in PyTorch's NCHW kernel
//    (4x512x28x28 3x3/2 float32: 12.8 -> 1.38 ms, PyTorch 12.0 ms).
//  * NCHW maps of short rows (fewer than 32 pooled columns): blocks of four vectors of planes
//    abreast, through a pixel-major scratch, pooled as NHWC pixels
//    (max_pool_nchw_abreast). One thread, 4x512x14x14 3x3/2 padding 1 float32, AVX-512: 995
//    -> 253 us (channels-last 87, PyTorch's NCHW 3031); AVX2 992 -> 425. 16-bit types go
//    through float there (at::vec), so a NaN maximum comes out quiet, as from F.max_pool2d,
//    which canonicalises them; so did this path's row form at strides 1 and 2.
// Both keep PyTorch's order and rule (window raster order, take when greater or NaN).
#pragma once

namespace pool_generic {

constexpr int kMaxTaps = 255;  // a window's elements (check_window_size)

// B vectors of maxima and their switch offsets (as floats) to n (<= B * V) outputs.
template <typename T, int B>
inline void store_outputs(const typename Lanes<T>::Vec (&best)[B],
                          const typename Lanes<T>::Vec (&k)[B], T* y, uint8_t* sw,
                          int64_t n) {
  using L = Lanes<T>;
  using acc_t = typename L::acc_t;
  constexpr int64_t V = L::kSize;
  alignas(64) acc_t kbuf[B * V];
  if (n == B * V) {
    if constexpr (std::is_same_v<T, acc_t>) {
      for (int b = 0; b < B; ++b) best[b].store(y + b * V);
    } else if constexpr (B % 2 == 0) {  // a Vectorized<T> holds two float vectors' worth
      for (int b = 0; b < B; b += 2)
        at::vec::convert_from_float<T>(best[b], best[b + 1]).store(y + b * V);
    } else {
      for (int b = 0; b < B; ++b) L::store(y + b * V, best[b]);
    }
    if constexpr (L::kVectorSwitches) {
      for (int b = 0; b < B; ++b) L::store_switches(sw + b * V, k[b]);
    } else {
      for (int b = 0; b < B; ++b) k[b].store(kbuf + b * V);
      for (int64_t i = 0; i < B * V; ++i) sw[i] = static_cast<uint8_t>(kbuf[i]);
    }
    return;
  }
  for (int b = 0; b < B; ++b) k[b].store(kbuf + b * V);
  T ybuf[B * V];
  for (int b = 0; b < B; ++b) L::store(ybuf + b * V, best[b]);
  for (int64_t i = 0; i < n; ++i) {
    y[i] = ybuf[i];
    sw[i] = static_cast<uint8_t>(kbuf[i]);
  }
}

// The first n (< V) elements at p as a vector (zeros past them), copied element by element
// into a local buffer: for the last vectors of the input buffer only, since the vector load
// of a buffer just filled element by element stalls on store forwarding (pool_channel_tail).
template <typename T>
inline typename Lanes<T>::Vec load_first(const T* p, int64_t n) {
  T buf[Lanes<T>::kSize] = {};
  for (int64_t i = 0; i < n; ++i) buf[i] = p[i];
  return Lanes<T>::load(buf);
}

// The taps of one window that lie inside the input, in window order: each one's offset in
// elements from the image's start (NHWC, `pixel_stride` = C), and its switch.
struct InsideTaps {
  int count = 0;
  int64_t offset[kMaxTaps];
  uint8_t code[kMaxTaps];
};

// f(pixel, code) for each tap of window (oh, ow) that lies inside the input, in window
// order: pixel = ih * W + iw, code = ky * kw + kx (the switch). Shared by the per-pixel taps
// of the NHWC forward and the tap tables of the NCHW one.
template <typename F>
inline void for_each_inside_tap(const PoolGeom& g, int64_t oh, int64_t ow, F&& f) {
  const int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
  for (int64_t ky = 0; ky < g.kh; ++ky) {
    const int64_t ih = h0 + ky * g.dh;
    if (ih < 0 || ih >= g.H) continue;
    for (int64_t kx = 0; kx < g.kw; ++kx) {
      const int64_t iw = w0 + kx * g.dw;
      if (iw < 0 || iw >= g.W) continue;
      f(ih * g.W + iw, static_cast<uint8_t>(ky * g.kw + kx));
    }
  }
}

inline void list_taps(const PoolGeom& g, int64_t oh, int64_t ow, int64_t pixel_stride,
                      InsideTaps& t) {
  t.count = 0;
  for_each_inside_tap(g, oh, ow, [&](int64_t pixel, uint8_t code) {
    t.offset[t.count] = pixel * pixel_stride;
    t.code[t.count] = code;
    ++t.count;
  });
}

// B full vectors of channels of one pixel from its taps (t.count >= 1: every window holds an
// input element).
template <typename T, int B>
inline void pool_channels(const T* x, const InsideTaps& t, T* y, uint8_t* sw) {
  using L = Lanes<T>;
  using Vec = typename L::Vec;
  constexpr int64_t V = L::kSize;
  Vec best[B], k[B];
  const T* p = x + t.offset[0];
  for (int b = 0; b < B; ++b) {
    best[b] = L::load(p + b * V);
    k[b] = L::splat(t.code[0]);
  }
  for (int i = 1; i < t.count; ++i) {
    const T* q = x + t.offset[i];
    const Vec kv = L::splat(t.code[i]);
    for (int b = 0; b < B; ++b) max_update(best[b], k[b], L::load(q + b * V), kv);
  }
  store_outputs<T, B>(best, k, y, sw, B * V);
}

// The last n (< V) channels of one pixel, as pool_channels. Whole vectors where the input
// buffer goes on for them (`whole`: the lanes past n hold the next pixel's channels and go
// nowhere); else through a buffer filled element by element, which stalls on store
// forwarding at every tap (1x3x224x224 3x3/2 float32 channels_last, one thread: 460 us
// whole, 1390 us all through the buffer; one channel at a time, branching on each compare,
// 1480 us).
template <typename T>
inline void pool_channel_tail(const T* x, const InsideTaps& t, T* y, uint8_t* sw, int64_t n,
                              bool whole) {
  using L = Lanes<T>;
  using Vec = typename L::Vec;
  const auto load = [&](const T* p) { return whole ? L::load(p) : load_first(p, n); };
  Vec best[1] = {load(x + t.offset[0])}, k[1] = {L::splat(t.code[0])};
  for (int i = 1; i < t.count; ++i)
    max_update(best[0], k[0], load(x + t.offset[i]), L::splat(t.code[i]));
  store_outputs<T, 1>(best, k, y, sw, n);
}

template <typename T>
void max_pool_nhwc(const PoolKernelArgs& a) {
  constexpr int kBlock = 4;
  constexpr int64_t V = Lanes<T>::kSize;
  const PoolGeom g = a.g;
  const int64_t C = a.C;
  const T* x = static_cast<const T*>(a.in);
  const T* x_end = x + a.N * g.H * g.W * C;
  T* y = static_cast<T*>(a.out);
  uint8_t* sw = a.out_switches;
  // A window inside the input has the taps of a whole window from its origin, listed once
  // (per pixel, the listing cost as much as the loads of 32 float32 channels: one thread,
  // 8x32x56x56 3x3/2 padding 1 float32 573 us, PyTorch's 458).
  InsideTaps whole_window;
  for (int64_t ky = 0; ky < g.kh; ++ky) {
    for (int64_t kx = 0; kx < g.kw; ++kx) {
      whole_window.offset[whole_window.count] = (ky * g.dh * g.W + kx * g.dw) * C;
      whole_window.code[whole_window.count++] = static_cast<uint8_t>(ky * g.kw + kx);
    }
  }
  const int64_t reach_h = (g.kh - 1) * g.dh, reach_w = (g.kw - 1) * g.dw;
  at::parallel_for(0, a.N * g.OH * g.OW, grain_for(C * g.kh * g.kw), [&](int64_t begin,
                                                                         int64_t end) {
    InsideTaps listed;
    CountedIndex pixel(begin, g.OW);        // (n * OH + oh, ow)
    CountedIndex image(pixel.outer, g.OH);  // (n, oh)
    for (int64_t i = begin; i < end; ++i, pixel.next() && image.next()) {
      const int64_t h0 = image.inner * g.sh - g.ph, w0 = pixel.inner * g.sw - g.pw;
      const T* xn = x + image.outer * g.H * g.W * C;
      const InsideTaps* t = &whole_window;
      if (h0 >= 0 && h0 + reach_h < g.H && w0 >= 0 && w0 + reach_w < g.W) {
        xn += (h0 * g.W + w0) * C;
      } else {
        list_taps(g, image.inner, pixel.inner, C, listed);
        t = &listed;
      }
      const InsideTaps& taps = *t;
      T* yo = y + i * C;
      uint8_t* so = sw + i * C;
      int64_t c = 0;
      for (; c + kBlock * V <= C; c += kBlock * V)
        pool_channels<T, kBlock>(xn + c, taps, yo + c, so + c);
      // two or three vectors left: one pass, their chains side by side
      if (C - c >= 3 * V) {
        pool_channels<T, 3>(xn + c, taps, yo + c, so + c);
        c += 3 * V;
      } else if (C - c >= 2 * V) {
        pool_channels<T, 2>(xn + c, taps, yo + c, so + c);
        c += 2 * V;
      }
      for (; c + V <= C; c += V) pool_channels<T, 1>(xn + c, taps, yo + c, so + c);
      if (c < C) {  // (the last tap is the furthest)
        const bool whole = xn + c + taps.offset[taps.count - 1] + V <= x_end;
        pool_channel_tail(xn + c, taps, yo + c, so + c, C - c, whole);
      }
    }
  });
}

// The columns [lo, hi) of pooled rows whose windows lie inside the input horizontally.
inline std::pair<int64_t, int64_t> inside_columns(const PoolGeom& g) {
  const int64_t lo = (g.pw + g.sw - 1) / g.sw;
  const int64_t last = g.W - 1 - (g.kw - 1) * g.dw + g.pw;  // the largest inside ow * sw
  const int64_t hi = last < 0 ? 0 : std::min<int64_t>(g.OW, last / g.sw + 1);
  return {std::min(lo, hi), hi};
}

// The n (<= V) values at the window column kx of n pooled columns from p (their first
// window's column), stride 1 or 2. Reads nothing past the last value it returns, unless
// `whole` (the buffer goes on for a full vector or two).
template <typename T, int64_t kStride>
inline typename Lanes<T>::Vec column_taps(const T* p, int64_t n, bool whole) {
  using L = Lanes<T>;
  constexpr int64_t V = L::kSize;
  if constexpr (kStride == 1) {
    return whole ? L::load(p) : load_first(p, n);
  } else {
    if (whole) return at::vec::deinterleave2(L::load(p), L::load(p + V)).first;
    const int64_t m = 2 * n - 1;  // p[0], p[2], ..., p[2 n - 2]
    const int64_t lo = std::min<int64_t>(m, V);
    return at::vec::deinterleave2(load_first(p, lo), load_first(p + V, m - lo)).first;
  }
}

// The n (<= V) values p[0], p[s], ..., p[(n - 1) s] as a vector (zeros past them): the
// window column kx of n pooled columns for strides of 3 and more, one masked gather on AVX2
// and AVX-512, element by element elsewhere. Before, such rows went a window at a time
// through max_pool_window, as PyTorch's NCHW kernel does (one thread, 4x256x56x56 3x3/3
// float32: 11.9 ms, PyTorch 13.4). A 16-bit gather reads 32-bit words with the value in the
// low half, i.e. one element past the last tap: where that one lies at or past `end`, the
// vector is assembled element by element.
template <typename T>
class StridedTaps {
 public:
  using L = Lanes<T>;
  using Vec = typename L::Vec;
  static constexpr int64_t V = L::kSize;
  // Without gathers (the default build) the element-by-element vectors ran slower than
  // max_pool_window (4x256x56x56 3x3/3 float32: 20.7 ms against 11.9), so those rows stay
  // a window at a time there.
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  static constexpr bool kGathers = true;
#else
  static constexpr bool kGathers = false;
#endif

  explicit StridedTaps(int64_t s) : s_(s) {
    for (int64_t j = 0; j < 16; ++j) index_[j] = static_cast<int32_t>(j * s);
  }

  Vec load(const T* p, int64_t n, const T* end) const {
#if defined(CPU_CAPABILITY_AVX512)
    const __m512i index = _mm512_load_si512(index_);
    const auto mask = static_cast<__mmask16>((uint32_t{1} << n) - 1);
    if constexpr (std::is_same_v<T, float>) {
      return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mask, index, p, 4);
    } else if constexpr (std::is_same_v<T, double>) {
      return _mm512_mask_i32gather_pd(_mm512_setzero_pd(), static_cast<__mmask8>(mask),
                                      _mm512_castsi512_si256(index), p, 8);
    } else if constexpr (sizeof(T) == 2) {
      if (p + (n - 1) * s_ + 1 < end) {
        const __m512i w = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), mask, index, p, 2);
        if constexpr (std::is_same_v<T, at::BFloat16>) {
          return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
        } else {
          return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(w));
        }
      }
    }
#elif defined(CPU_CAPABILITY_AVX2)
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i index = _mm256_load_si256(reinterpret_cast<const __m256i*>(index_));
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(n)), iota);
    if constexpr (std::is_same_v<T, float>) {
      return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), p, index, _mm256_castsi256_ps(mask),
                                      4);
    } else if constexpr (std::is_same_v<T, double>) {
      const __m256i mask64 = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n),
                                                _mm256_setr_epi64x(0, 1, 2, 3));
      return _mm256_mask_i32gather_pd(_mm256_setzero_pd(), p, _mm256_castsi256_si128(index),
                                      _mm256_castsi256_pd(mask64), 8);
    } else if constexpr (sizeof(T) == 2) {
      if (p + (n - 1) * s_ + 1 < end) {
        const __m256i w = _mm256_mask_i32gather_epi32(
            _mm256_setzero_si256(), reinterpret_cast<const int*>(p), index, mask, 2);
        if constexpr (std::is_same_v<T, at::BFloat16>) {
          return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
        } else {
          const __m256i low = _mm256_and_si256(w, _mm256_set1_epi32(0xFFFF));
          return _mm256_cvtph_ps(_mm_packus_epi32(_mm256_castsi256_si128(low),
                                                  _mm256_extracti128_si256(low, 1)));
        }
      }
    }
#endif
    T buf[V] = {};
    for (int64_t j = 0; j < n; ++j) buf[j] = p[j * s_];
    return L::load(buf);
  }

 private:
  int64_t s_;
  alignas(64) int32_t index_[16];
};

// Pooled columns [ow, ow + n) of one row, n <= 2 V, all inside horizontally; rows[] the
// input rows of the window inside the input (ky of each in codes[]). kStride 0: the stride
// is g.sw (3 or more), the taps gathered by `strided`.
template <typename T, int64_t kStride>
inline void pool_columns(const T* const* rows, const int64_t* kys, int nrows, const PoolGeom& g,
                         int64_t ow, int64_t n, const T* end, const StridedTaps<T>& strided,
                         T* y, uint8_t* sw) {
  using L = Lanes<T>;
  using Vec = typename L::Vec;
  constexpr int64_t V = L::kSize;
  const int64_t stride = kStride > 0 ? kStride : g.sw;
  const int64_t w0 = ow * stride - g.pw;
  const int64_t n0 = std::min<int64_t>(n, V), n1 = n - n0;
  Vec best[2], k[2];
  bool first = true;
  for (int r = 0; r < nrows; ++r) {
    for (int64_t kx = 0; kx < g.kw; ++kx) {
      const T* p = rows[r] + w0 + kx * g.dw;
      const Vec kv = L::splat(kys[r] * g.kw + kx);
      Vec v0, v1;
      if constexpr (kStride == 0) {
        v0 = strided.load(p, n0, end);
        v1 = n1 > 0 ? strided.load(p + stride * V, n1, end) : v0;
      } else {
        v0 = column_taps<T, kStride>(p, n0, p + kStride * V <= end);
        v1 = n1 > 0 ? column_taps<T, kStride>(p + kStride * V, n1, p + 2 * kStride * V <= end)
                    : v0;
      }
      if (first) {
        best[0] = v0, best[1] = v1, k[0] = kv, k[1] = kv;
        first = false;
      } else {
        max_update(best[0], k[0], v0, kv);
        max_update(best[1], k[1], v1, kv);
      }
    }
  }
  store_outputs<T, 2>(best, k, y, sw, n);
}

// The inside taps of the windows of maps that go one window at a time (NCHW: no vector
// columns), listed once for all planes, so each window is a run of loads and branch-free
// selects. Not `usable` otherwise, or when the list would be long (then max_pool_window,
// which finds the taps itself). Maps of a few pixels are all such windows: one thread, 4x64x8x8 3x3/2
// float32 66 -> 44 us (PyTorch 37).
struct ListedWindows {
  static constexpr int64_t kMaxListed = int64_t{1} << 16;
  std::vector<int64_t> first;  // window oh * OW + ow -> its first tap in offset / code
  std::vector<int64_t> offset;
  std::vector<uint8_t> code;
  bool usable = false;
  ListedWindows(const PoolGeom& g, int64_t lo, int64_t hi) {
    // Only maps with no vector columns: the padded end columns of a long row ran slower
    // listed (1x3x224x224 3x3/2 padding 1: 166 -> 191 us).
    const int64_t windows = g.OH * (lo + g.OW - hi);
    if (hi > lo || windows * g.kh * g.kw > kMaxListed) return;
    first.resize(g.OH * g.OW + 1);
    for (int64_t oh = 0; oh < g.OH; ++oh) {
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        first[oh * g.OW + ow] = static_cast<int64_t>(offset.size());
        if (ow >= lo && ow < hi) continue;
        for_each_inside_tap(g, oh, ow, [&](int64_t pixel, uint8_t k) {
          offset.push_back(pixel);
          code.push_back(k);
        });
      }
    }
    first.back() = static_cast<int64_t>(offset.size());
    usable = true;
  }
};

// Window oh, ow of one plane from its listed taps (PyTorch's rule, as max_pool_window).
template <typename T>
inline void pool_listed(const T* plane, const ListedWindows& lw, int64_t window, T* y,
                        uint8_t* sw) {
  using acc_t = typename Lanes<T>::acc_t;
  const int64_t* off = lw.offset.data();
  const uint8_t* code = lw.code.data();
  const int64_t t0 = lw.first[window], t1 = lw.first[window + 1];
  T raw = plane[off[t0]];
  acc_t best = static_cast<acc_t>(raw);
  uint8_t k = code[t0];
  for (int64_t t = t0 + 1; t < t1; ++t) {
    const T r = plane[off[t]];
    const acc_t v = static_cast<acc_t>(r);
    const bool take = (v > best) | (v != v);
    best = take ? v : best;
    raw = take ? r : raw;
    k = take ? code[t] : k;
  }
  *y = raw;
  *sw = k;
}

// One window of one plane that goes one at a time.
template <typename T>
inline void pool_one(const T* plane, const PoolGeom& g, const ListedWindows& lw, int64_t oh,
                     int64_t ow, T* y, uint8_t* sw) {
  if (lw.usable) return pool_listed(plane, lw, oh * g.OW + ow, y, sw);
  max_pool_window(plane, g.W, int64_t(1), g, oh, ow, y, sw);
}

template <typename T, int64_t kStride>
void pool_row_nchw(const T* plane, const PoolGeom& g, const ListedWindows& lw, int64_t oh,
                   int64_t lo, int64_t hi, const T* end, const StridedTaps<T>& strided, T* y,
                   uint8_t* sw) {
  constexpr int64_t V = Lanes<T>::kSize;
  const T* rows[kMaxTaps];
  int64_t kys[kMaxTaps];
  int nrows = 0;
  for (int64_t ky = 0; ky < g.kh; ++ky) {
    const int64_t ih = oh * g.sh - g.ph + ky * g.dh;
    if (ih < 0 || ih >= g.H) continue;
    rows[nrows] = plane + ih * g.W;
    kys[nrows++] = ky;
  }
  for (int64_t ow = 0; ow < lo; ++ow) pool_one(plane, g, lw, oh, ow, y + ow, sw + ow);
  for (int64_t ow = lo; ow < hi; ow += 2 * V) {
    const int64_t n = std::min<int64_t>(2 * V, hi - ow);
    pool_columns<T, kStride>(rows, kys, nrows, g, ow, n, end, strided, y + ow, sw + ow);
  }
  for (int64_t ow = hi; ow < g.OW; ++ow) pool_one(plane, g, lw, oh, ow, y + ow, sw + ow);
}

// NCHW maps of short rows, V planes abreast: a block of V planes is copied into a
// pixel-major scratch (H W x V, the block as a channels-last image of V channels), pooled
// there as max_pool_nhwc pools a pixel's channels (a tap is one vector load, all lanes
// busy), and each window's V maxima and switches are copied back into the V planes. Along
// rows, a 14x14 map's 3x3/2 windows filled 6 of 16 lanes, their edge columns went one
// window at a time, and the NCHW forward ran 10x slower than the channels-last one (one
// thread, 4x512x14x14 3x3/2 padding 1 float32: 1013 us against 95).
struct AbreastTaps {
  std::vector<int64_t> first;   // window -> its first tap in offset / code
  std::vector<int64_t> offset;  // the tap's pixel, times V (elements of the scratch)
  std::vector<uint8_t> code;
  AbreastTaps(const PoolGeom& g, int64_t V) {
    first.reserve(g.OH * g.OW + 1);
    for (int64_t oh = 0; oh < g.OH; ++oh) {
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        first.push_back(static_cast<int64_t>(offset.size()));
        for_each_inside_tap(g, oh, ow, [&](int64_t pixel, uint8_t k) {
          offset.push_back(pixel * V);
          code.push_back(k);
        });
      }
    }
    first.push_back(static_cast<int64_t>(offset.size()));
  }
};

// Whether max_pool_nchw takes the planes-abreast path: rows of fewer than 32 pooled columns
// (at most two vectors along a row) with a scratch block that stays in L2.
// Planes a block of the planes-abreast path: four vectors a window, as max_pool_nhwc's blocks
// of channels (with one, each window's taps were one chain of compares and blends: 4x512x14x14
// 3x3/2 float32 399 us, against 104 for channels-last).
template <typename T>
constexpr int64_t kAbreastVectors = 4;

// Whether max_pool_nchw takes the planes-abreast path: rows of fewer than 32 pooled columns
// (at most two vectors along a row), enough planes for a block, a scratch block that stays
// in L2.
template <typename T>
bool planes_abreast_pay(const PoolKernelArgs& a) {
  constexpr int64_t P = kAbreastVectors<T> * Lanes<T>::kSize;
  const PoolGeom& g = a.g;
  return g.OW < 32 && a.N * a.C >= P && g.H * g.W * P * int64_t(sizeof(T)) <= (256 << 10);
}

// dst[j][i] = src[i][j] for `rows` (<= 16) rows and `cols` columns, through at::vec's
// vector transposes where this ISA has them for T (AVX-512 float, bfloat16, half), in tiles
// of 16 columns.
template <typename T>
inline void transpose_rows(const T* src, int64_t ld_src, T* dst, int64_t ld_dst, int64_t rows,
                           int64_t cols) {
  for (int64_t j = 0; j < cols; j += 16) {
    const int n = static_cast<int>(std::min<int64_t>(16, cols - j));
    at::vec::transpose_mxn<T>(src + j, ld_src, dst + j * ld_dst, ld_dst, static_cast<int>(rows),
                              n);
  }
}

template <typename T>
void max_pool_nchw_abreast(const PoolKernelArgs& a) {
  using L = Lanes<T>;
  using Vec = typename L::Vec;
  constexpr int kB = static_cast<int>(kAbreastVectors<T>);
  constexpr int64_t V = L::kSize, P = kB * V;
  const PoolGeom g = a.g;
  const int64_t HW = g.H * g.W, OHW = g.OH * g.OW, planes = a.N * a.C;
  const int64_t blocks = (planes + P - 1) / P;
  const T* x = static_cast<const T*>(a.in);
  T* y = static_cast<T*>(a.out);
  uint8_t* sw = a.out_switches;
  const AbreastTaps taps(g, P);
  const int64_t* first = taps.first.data();
  const int64_t* offset = taps.offset.data();
  const uint8_t* code = taps.code.data();
  const int64_t work = P * (HW + static_cast<int64_t>(taps.offset.size()));
  at::parallel_for(0, blocks, grain_for(work), [&](int64_t begin, int64_t end) {
    // (the last block's lanes past its planes keep zeros and go nowhere)
    std::vector<T> in(HW * P, T(0)), out(OHW * P);
    std::vector<uint8_t> out_sw(OHW * P);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t p0 = b * P, n = std::min(P, planes - p0);
      for (int64_t c = 0; c < n; c += 16) {
        transpose_rows(x + (p0 + c) * HW, HW, in.data() + c, P, std::min<int64_t>(16, n - c),
                       HW);
      }
      for (int64_t w = 0; w < OHW; ++w) {
        const int64_t t0 = first[w], t1 = first[w + 1];
        Vec best[kB], k[kB];
        const T* q = in.data() + offset[t0];
        for (int v = 0; v < kB; ++v) {
          best[v] = L::load(q + v * V);
          k[v] = L::splat(code[t0]);
        }
        for (int64_t t = t0 + 1; t < t1; ++t) {
          const T* r = in.data() + offset[t];
          const Vec kv = L::splat(code[t]);
          for (int v = 0; v < kB; ++v) max_update(best[v], k[v], L::load(r + v * V), kv);
        }
        store_outputs<T, kB>(best, k, out.data() + w * P, out_sw.data() + w * P, P);
      }
      for (int64_t w = 0; w < OHW; w += 16) {
        transpose_rows(out.data() + w * P, P, y + p0 * OHW + w, OHW,
                       std::min<int64_t>(16, OHW - w), n);
      }
      for (int64_t c = 0; c < n; ++c) {
        uint8_t* sc = sw + (p0 + c) * OHW;
        for (int64_t w = 0; w < OHW; ++w) sc[w] = out_sw[w * P + c];
      }
    }
  });
}

template <typename T>
void max_pool_nchw(const PoolKernelArgs& a) {
  if (planes_abreast_pay<T>(a)) return max_pool_nchw_abreast<T>(a);
  const PoolGeom g = a.g;
  const T* x = static_cast<const T*>(a.in);
  const T* end = x + a.N * a.C * g.H * g.W;
  T* y = static_cast<T*>(a.out);
  uint8_t* sw = a.out_switches;
  // Vectors along rows with a few inside columns; a window or three a row (maps of a few
  // pixels) cost less one by one.
  auto [lo, hi] = g.sw <= 2 || StridedTaps<T>::kGathers ? inside_columns(g)
                                                         : std::pair<int64_t, int64_t>{0, 0};
  if (hi - lo < 4) lo = hi = 0;
  const ListedWindows lw(g, lo, hi);
  const StridedTaps<T> strided(g.sw);
  at::parallel_for(0, a.N * a.C * g.OH, grain_for(g.OW * g.kh * g.kw), [&](int64_t begin,
                                                                          int64_t stop) {
    CountedIndex row(begin, g.OH);  // (plane, oh)
    for (int64_t r = begin; r < stop; ++r, row.next()) {
      const T* plane = x + row.outer * g.H * g.W;
      T* yr = y + r * g.OW;
      uint8_t* sr = sw + r * g.OW;
      if (g.sw == 1) {
        pool_row_nchw<T, 1>(plane, g, lw, row.inner, lo, hi, end, strided, yr, sr);
      } else if (g.sw == 2) {
        pool_row_nchw<T, 2>(plane, g, lw, row.inner, lo, hi, end, strided, yr, sr);
      } else {
        pool_row_nchw<T, 0>(plane, g, lw, row.inner, lo, hi, end, strided, yr, sr);
      }
    }
  });
}

}  // namespace pool_generic
