// Pooled -> unpooled through the switches for any geometry (the 2x2 stride-2 kernels have
// their own): the max-pool backward (`sum`) and the unpool forward (the last window in raster
// order wins). Included by pool_kernels_impl.h inside its per-ISA namespace.
//
// A task owns whole planes (NCHW) or a run of channels of one image (NHWC), zeroes them, and
// walks their pooled values in raster order, each to where its switch points: every unpooled
// position then holds the last value that names it, or the sum of them added in raster order
// from +0, exactly what the shared gather body (switch_scatter_at, which the CUDA kernels run)
// computes, and deterministic, since no two tasks touch one position. Before, the CPU ran
// that gather body too, looking for the windows over each unpooled position and testing their
// switches: one thread, 4x512x14x14 3x3/2 padding 1 float32 NCHW unpool 7085 us, PyTorch's
// 459 us.
//
// Each switch is checked on the way (a tap of its window, naming a position inside the
// input): a bad one sets a.bad_switch. That, and the three modes compiled apart, took the
// unpool above from 526 us (after a separate pass over the switches) to 290 us.
#pragma once

namespace scatter_generic {

// Each switch's row and column offsets from its window's origin; switches past the window
// get offsets no row or column check passes.
struct SwitchOffsets {
  int64_t dy[256], dx[256];
  explicit SwitchOffsets(const PoolGeom& g) {
    constexpr int64_t kFar = int64_t{1} << 40;
    for (int64_t k = 0; k < 256; ++k) {
      const bool inside = k < g.kh * g.kw;
      dy[k] = inside ? (k / g.kw) * g.dh : -kFar;
      dx[k] = inside ? (k % g.kw) * g.dw : -kFar;
    }
  }
};

// kLast: the unpool (the last value wins). kSum: the pool backward, summed in T;
// kSumInFloat: 16-bit types, summed in float and rounded once at the end. kSumOfOne: the
// pool backward without overlap, where a position gets at most one value: v + 0 stored at
// once (the +0 turns -0 into +0 as a sum from +0 does), no float scratch for 16-bit types
// (one thread, 4x256x56x56 3x3/3 bfloat16 channels_last: 1748 -> 687 us, PyTorch 877).
enum class Mode { kLast, kSum, kSumInFloat, kSumOfOne };

// How many strides a window reaches past its own first row / column: windows (oh + dr,
// ow + dc) with dr <= rows, |dc| <= cols are the only others that can share a position
// with window (oh, ow) (none of them without overlap: windows_overlap).
struct Reach {
  int64_t rows, cols;
  explicit Reach(const PoolGeom& g)
      : rows((g.kh - 1) * g.dh / g.sh), cols((g.kw - 1) * g.dw / g.sw) {}
};

// d updated with v as kMode says (Dst: T, or float for kSumInFloat).
template <Mode kMode, typename Dst, typename T>
inline void update(Dst& d, T v) {
  using acc_t = typename AccType<T>::type;
  if constexpr (kMode == Mode::kLast) {
    d = v;
  } else if constexpr (kMode == Mode::kSumOfOne) {
    d = static_cast<Dst>(static_cast<acc_t>(v) + acc_t(0));
  } else {
    d += static_cast<Dst>(v);
  }
}

// A switch's (dy, dx) offsets from its window's origin for windows of up to 32 taps, as
// 32-entry tables two permutes read (permutex2var: the switch's low five bits pick the
// entry; a switch past the window is flagged by its caller's check against the last tap).
struct SwitchTables {
  static constexpr int64_t kMaxTaps = 32;
  alignas(64) int32_t dy[kMaxTaps] = {};
  alignas(64) int32_t dx[kMaxTaps] = {};
  SwitchTables(const PoolGeom& g, const SwitchOffsets& off) {
    const int64_t taps = std::min(g.kh * g.kw, kMaxTaps);
    for (int64_t k = 0; k < taps; ++k) {
      dy[k] = static_cast<int32_t>(off.dy[k]);
      dx[k] = static_cast<int32_t>(off.dx[k]);
    }
  }
#if defined(CPU_CAPABILITY_AVX512)
  // The row and column offsets of 16 switches k (as int32 lanes).
  std::pair<__m512i, __m512i> of(__m512i k) const {
    return {_mm512_permutex2var_epi32(_mm512_load_si512(dy), k, _mm512_load_si512(dy + 16)),
            _mm512_permutex2var_epi32(_mm512_load_si512(dx), k, _mm512_load_si512(dx + 16))};
  }
#endif
};

// The flat targets ih * W + iw of consecutive windows of a plane (raster order, across rows),
// 16 windows a step: each window's origin plus its switch's (dy, dx), looked up in 32-entry
// tables by permutes, and every switch checked (inside its window, target inside the input)
// on the way. Each lane carries its window's origin (h0, w0) and moves on by 16 windows (a
// column step, and a row step wherever that passes the row's end). The NCHW scatter below
// then walks the windows as "load a target, add", and the NCHW gather
// (pool_gather_generic.h) compares targets of later windows. Before, each value's address
// waited on two table loads of its own (SwitchOffsets), and the scatter ran at 0.6-0.9x
// PyTorch's on 3x3 pools, whose loop reads ready int64 indices; a row at a time (7a9a3fa),
// maps of short rows kept a row's few windows a vector (4x512x14x14 3x3/2 padding 1: 7 of
// 16 lanes) and gained nothing there.
// Used for windows of up to 32 taps and maps under 2^31 elements (int32 targets); the rest
// take the checked element-at-a-time path, as do chunks with a bad switch. AVX-512 only: an
// AVX2 form (8 lanes, a 16-entry table as two permutes and a blend, the row tail assembled
// byte by byte) was slower than the table loads on 3x3 stride-2 maps (4x512x14x14 float32
// pool backward 246 -> 325 us, 28x28 607 -> 706) and faster only on 3x3 stride 1 at 14x14.
class FlatTargets {
 public:
  static constexpr int64_t kPad = 16;  // out holds n + kPad

  FlatTargets(const PoolGeom& g, const SwitchOffsets& off) : g_(g), tables_(g, off) {
#if defined(CPU_CAPABILITY_AVX512)
    enabled_ = usable(g);
#endif
  }

  bool enabled() const { return enabled_; }

  // Whether an AVX-512 build makes the targets of g's windows (up to 32 taps, int32 targets).
  static bool usable(const PoolGeom& g) {
    return g.kh * g.kw <= SwitchTables::kMaxTaps && g.H * g.W < (int64_t{1} << 31) &&
           g.OH * g.OW < (int64_t{1} << 31) && g.OW * g.sw + g.W + g.pw < (int64_t{1} << 31);
  }

  // Targets of windows [w, w + n) of the plane whose switches are sp into out[0, n). False if
  // a switch lies outside its window or points outside the input.
  bool windows(const uint8_t* sp, int64_t w, int64_t n, int32_t* out) const {
#if defined(CPU_CAPABILITY_AVX512)
    const __m512i H = _mm512_set1_epi32(static_cast<int32_t>(g_.H));
    const __m512i W = _mm512_set1_epi32(static_cast<int32_t>(g_.W));
    const __m512i last_tap = _mm512_set1_epi32(static_cast<int32_t>(g_.kh * g_.kw - 1));
    const __m512i row_end = _mm512_set1_epi32(static_cast<int32_t>(g_.OW * g_.sw - g_.pw));
    const __m512i row_back = _mm512_set1_epi32(static_cast<int32_t>(g_.OW * g_.sw));
    const __m512i down = _mm512_set1_epi32(static_cast<int32_t>(g_.sh));
    const __m512i step = _mm512_set1_epi32(static_cast<int32_t>(16 * g_.sw));
    const int64_t wraps = (16 + g_.OW - 1) / g_.OW;  // row ends one step can pass
    // Lane l starts at window w + l: window w's column plus l columns, wrapped into the
    // rows below as the steps do (lanes set from a buffer stalled on store forwarding, and
    // the call runs once a plane).
    const int64_t oh = w / g_.OW, ow = w % g_.OW;
    __m512i h0 = _mm512_set1_epi32(static_cast<int32_t>(oh * g_.sh - g_.ph));
    __m512i w0 = _mm512_add_epi32(
        _mm512_set1_epi32(static_cast<int32_t>(ow * g_.sw - g_.pw)),
        _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                           _mm512_set1_epi32(static_cast<int32_t>(g_.sw))));
    const auto wrap = [&] {
      for (int64_t r = 0; r < wraps; ++r) {
        const __mmask16 past = _mm512_cmpge_epi32_mask(w0, row_end);
        w0 = _mm512_mask_sub_epi32(w0, past, w0, row_back);
        h0 = _mm512_mask_add_epi32(h0, past, h0, down);
      }
    };
    wrap();
    __mmask16 bad = 0;
    for (int64_t i = 0; i < n; i += 16) {
      const int64_t m = std::min<int64_t>(16, n - i);
      const auto lanes = static_cast<__mmask16>((uint32_t{1} << m) - 1);
      const __m512i k = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(lanes, sp + w + i));
      const auto [dy, dx] = tables_.of(k);
      const __m512i ih = _mm512_add_epi32(h0, dy);
      const __m512i iw = _mm512_add_epi32(w0, dx);
      bad |= _mm512_mask_cmpgt_epu32_mask(lanes, k, last_tap) |
             _mm512_mask_cmpge_epu32_mask(lanes, ih, H) |
             _mm512_mask_cmpge_epu32_mask(lanes, iw, W);
      _mm512_storeu_si512(out + i, _mm512_add_epi32(_mm512_mullo_epi32(ih, W), iw));
      w0 = _mm512_add_epi32(w0, step);
      wrap();
    }
    return bad == 0;
#else
    (void)sp, (void)w, (void)n, (void)out;
    return false;
#endif
  }

 private:
  PoolGeom g_;
  bool enabled_ = false;
  SwitchTables tables_;
};

// One pooled value to the unpooled position (ih, iw) of its switch, if it lies inside the
// H x W map; `at` maps the position to the element (or accumulator) to update.
template <Mode kMode, typename T, typename Acc, typename At>
inline bool put(const PoolGeom& g, int64_t ih, int64_t iw, T v, Acc* dst, At at) {
  if (static_cast<uint64_t>(ih) >= static_cast<uint64_t>(g.H) ||
      static_cast<uint64_t>(iw) >= static_cast<uint64_t>(g.W)) {
    return false;
  }
  update<kMode>(dst[at(ih * g.W + iw)], v);
  return true;
}

// kSumInFloat's float sums rounded into T, n of them in a row. float16 a vector at a time
// (at::vec's rounding; element by element, c10's conversion is a call GCC leaves scalar);
// bfloat16 element by element (c10's conversion, whose NaN is 0x7FC0 as F's backward gives;
// at::vec's conversion plus a pass setting NaN lanes to 0x7FC0 measured 5-10% slower on
// 28x28 maps). Run over whole planes, or ring rows (channels_last with every channel in the
// task), rather than a pixel's channels at a time. One thread, us, before -> after
// (PyTorch): 8x3x224x224 3x3/2 padding 1 bfloat16 channels_last 1929-3051 -> 788-1140
// (691-977); 4x64x112x112 3x3/2 padding 1 float16 NCHW 2427-2735 -> 1405-1460 (1297-1459);
// bfloat16 4x512x28x28 559-698 -> 566-587.
template <typename T, typename Acc>
inline void round_sums(const Acc* s, T* d, int64_t n) {
  int64_t i = 0;
  if constexpr (std::is_same_v<T, c10::Half> && std::is_same_v<Acc, float>) {
    using L = Lanes<T>;
    constexpr int64_t V = L::kSize;
    for (; i + V <= n; i += V) L::store(d + i, L::Vec::loadu(s + i));
  }
  for (; i < n; ++i) d[i] = static_cast<T>(s[i]);
}

template <typename T>
Mode mode_of(const PoolGeom& g, bool sum) {
  if (!sum) return Mode::kLast;
  if (!windows_overlap(g)) return Mode::kSumOfOne;
  return std::is_same_v<T, typename AccType<T>::type> ? Mode::kSum : Mode::kSumInFloat;
}

template <Mode kMode, typename T>
void scatter_nchw_as(const PoolKernelArgs& a) {
  using acc_t = typename AccType<T>::type;
  using Dst = std::conditional_t<kMode == Mode::kSumInFloat, acc_t, T>;
  const PoolGeom g = a.g;
  const SwitchOffsets off(g);
  const T* v = static_cast<const T*>(a.in);
  T* out = static_cast<T*>(a.out);
  const uint8_t* sw = a.switches;
  const int64_t HW = g.H * g.W, OHW = g.OH * g.OW;
  const FlatTargets targets(g, off);
  // Targets are made for a chunk of windows before any of them is walked: read back right
  // after their vector stores, they waited on those stores (store forwarding from a 64-byte
  // store to 4-byte loads; 3x3 stride 1, 4x512x14x14: 597 us a row at a time, 442 so).
  constexpr int64_t kChunk = 4096;
  at::parallel_for(0, a.N * a.C, grain_for(HW + OHW), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(kMode == Mode::kSumInFloat ? HW : 0);
    std::vector<int32_t> t(targets.enabled() ? kChunk + FlatTargets::kPad : 0);
    bool bad = false;
    for (int64_t plane = begin; plane < end; ++plane) {
      T* o = out + plane * HW;
      const T* vp = v + plane * OHW;
      const uint8_t* sp = sw + plane * OHW;
      Dst* dst;
      if constexpr (kMode == Mode::kSumInFloat) {
        std::fill(scratch.begin(), scratch.end(), acc_t(0));
        dst = scratch.data();
      } else {
        std::memset(static_cast<void*>(o), 0, HW * sizeof(T));  // +0 in every float type
        dst = o;
      }
      // Windows [i0, i1) element by element, each switch checked (a bad one is skipped and
      // flagged).
      const auto checked = [&](int64_t i0, int64_t i1) {
        int64_t oh = i0 / g.OW, ow = i0 % g.OW;
        for (int64_t i = i0; i < i1; ++i) {
          const uint8_t k = sp[i];
          bad |= !put<kMode>(g, oh * g.sh - g.ph + off.dy[k], ow * g.sw - g.pw + off.dx[k],
                             vp[i], dst, [](int64_t p) { return p; });
          if (++ow == g.OW) ow = 0, ++oh;
        }
      };
      for (int64_t i0 = 0; i0 < OHW; i0 += kChunk) {
        const int64_t n = std::min(kChunk, OHW - i0);
        if (!targets.enabled() || !targets.windows(sp, i0, n, t.data())) {
          checked(i0, i0 + n);
          continue;
        }
        const T* vc = vp + i0;
        for (int64_t i = 0; i < n; ++i) update<kMode>(dst[t[i]], vc[i]);
      }
      if constexpr (kMode == Mode::kSumInFloat) round_sums(scratch.data(), o, HW);
    }
    if (bad) a.bad_switch->store(true, std::memory_order_relaxed);
  });
}

#if defined(CPU_CAPABILITY_AVX512)
// The channels of one window inside the input a vector at a time, tap by tap (AVX-512): each
// tap's lanes are those whose switch names it (a byte compare into a mask), and its
// position's vector is loaded, updated in those lanes only (a masked add or move; the rest
// keep their bits) and stored whole, so every position is updated by the same windows in the
// same order as channel by channel. Taps with no lane still cost their load and store. For
// Dst float or double (kEnabled): every mode of float32 / float64, kSumInFloat of 16-bit types
// (their kLast and kSumOfOne write T, and stay channel by channel). The largest switch seen
// is kept for the caller's check (a switch past the window matches no tap and is dropped, as
// channel by channel). Two threads, us, before (79d875e: channel by channel, or by_pixels)
// -> after (PyTorch): pool backward float32 4x64x56x56 3x3/1 padding 1 435 -> 276 (378),
// 4x256x56x56 3x3/3 543 -> 465 (555), 4x32x56x56 3x3/2 padding 1 70 -> 61 (57); unpool
// forward 4x64x56x56 3x3/1 padding 1 346 -> 287 (499), 3x3/2 within 5%; 16-bit types with
// the ring below: see there. An AVX2 form (at::vec: float compares, and-masks, 8 lanes) was
// slower than channel by channel on every overlapping map tried (4x64x56x56 3x3/1 pool
// backward 408 -> 565, unpool 355 -> 568; bfloat16 4x64x112x112 3x3/2 657 -> 855).
template <Mode kMode, typename T, typename Dst>
class TapScatter {
  using L = Lanes<T>;
  using Vec = typename L::Vec;

 public:
  static constexpr int64_t V = L::kSize;
  static constexpr bool kEnabled = std::is_same_v<Dst, typename AccType<T>::type>;

  // Channels [0, c) of the window, c a multiple of V; returns c. d points at the window's
  // origin, rel[k] the offset of tap k from it.
  int64_t run(const T* vi, const uint8_t* si, Dst* d, const int64_t* rel, int64_t taps,
              int64_t nc) {
    int64_t c = 0;
    for (; c + V <= nc; c += V) {
      const Vec val = L::load(vi + c);
      const __m128i ks = V == 16 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(si + c))
                                 : _mm_loadl_epi64(reinterpret_cast<const __m128i*>(si + c));
      largest_ = _mm_max_epu8(largest_, ks);
      for (int64_t k = 0; k < taps; ++k) {
        const __mmask16 hit = _mm_cmpeq_epi8_mask(ks, _mm_set1_epi8(static_cast<char>(k)));
        Dst* p = d + rel[k] + c;
        if constexpr (std::is_same_v<Dst, float>) {
          const __m512 cur = _mm512_loadu_ps(p), x = val;
          _mm512_storeu_ps(p, kMode == Mode::kLast ? _mm512_mask_mov_ps(cur, hit, x)
                                                   : _mm512_mask_add_ps(cur, hit, cur, x));
        } else {
          const __m512d cur = _mm512_loadu_pd(p), x = val;
          const auto h = static_cast<__mmask8>(hit);
          _mm512_storeu_pd(p, kMode == Mode::kLast ? _mm512_mask_mov_pd(cur, h, x)
                                                   : _mm512_mask_add_pd(cur, h, cur, x));
        }
      }
    }
    return c;
  }

  // The largest switch the vectors held (0 if none).
  int64_t largest() const {
    alignas(16) uint8_t b[16];
    _mm_store_si128(reinterpret_cast<__m128i*>(b), largest_);
    return *std::max_element(b, b + 16);
  }

 private:
  __m128i largest_ = _mm_setzero_si128();
};
#endif

template <Mode kMode, typename T>
void scatter_nhwc_as(const PoolKernelArgs& a) {
  using acc_t = typename AccType<T>::type;
  using Dst = std::conditional_t<kMode == Mode::kSumInFloat, acc_t, T>;
  // kSumInFloat adds into float rows, a ring of the input rows that one window row reaches:
  // a row is rounded into the output and zeroed once no later window reaches it, so the
  // float sums stay in cache. Before, a float scratch of the whole image or run of channels
  // was zeroed (a fifth of the time), added into and rounded, out of cache. Two threads, us,
  // before (79d875e) -> after (PyTorch), bfloat16: 4x64x112x112 3x3/2 padding 1 1040 -> 523
  // (791; float16 1115 -> 527), 4x256x56x56 663 -> 560 (815), 4x64x56x56 3x3/1 448 -> 267
  // (667), 4x128x56x56 3x3/2 356 -> 254 (380), 8x3x224x224 3x3/2 padding 1 462 -> 325 (334);
  // AVX2 (by_pixels before, channel by channel now): 4x64x112x112 1068 -> 652 (795),
  // 4x64x56x56 3x3/1 637 -> 430 (680), 4x512x28x28 3x3/2 padding 1 457 -> 362 (432). The
  // other modes write the output itself (a ring and a copy out measured 10-25% slower
  // for them).
  constexpr bool kRing = kMode == Mode::kSumInFloat;
  const PoolGeom g = a.g;
  const SwitchOffsets off(g);
  const int64_t C = a.C, W = g.W;
  const T* v = static_cast<const T*>(a.in);
  T* out = static_cast<T*>(a.out);
  const uint8_t* sw = a.switches;
  const int64_t HW = g.H * W, OHW = g.OH * g.OW;
  const int64_t taps = g.kh * g.kw;
  const int64_t reach_h = (g.kh - 1) * g.dh, reach_w = (g.kw - 1) * g.dw;
  const int64_t ring_rows = std::max<int64_t>(1, std::min(reach_h + 1, g.H));
  // Tasks of (image, run of channels): a whole image is zeroed by one memset, a run of
  // channels a pixel at a time.
  const ChannelRuns tasks(a.N, C);
  const int64_t run = tasks.run;
  at::parallel_for(0, tasks.items(a.N), grain_for((HW + OHW) * run), [&](int64_t begin,
                                                                           int64_t end) {
    std::vector<Dst> ring(kRing ? ring_rows * W * run : 0, Dst(0));
    // The offsets in dst of the rows a window row reaches ([h0, h0 + reach_h]), and of each
    // tap from a window's first pixel (rel: windows inside the input, whose switches need
    // only be checked against the window's size).
    std::vector<int64_t> row_at(reach_h + 1);
    int64_t rel[256];
    bool bad = false;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = tasks.n(item), c0 = tasks.c0(item), nc = tasks.count(item);
      T* o = out + n * HW * C + c0;
      const T* vn = v + n * OHW * C + c0;
      const uint8_t* sn = sw + n * OHW * C + c0;
      Dst* dst;
      int64_t pixel;  // the elements from one pixel to the next in dst
      if constexpr (kRing) {
        dst = ring.data();
        pixel = nc;
      } else {
        if (nc == C) {
          std::memset(static_cast<void*>(o), 0, HW * C * sizeof(T));  // +0 in every float type
        } else {
          for (int64_t p = 0; p < HW; ++p)
            std::memset(static_cast<void*>(o + p * C), 0, nc * sizeof(T));
        }
        dst = o;
        pixel = C;
      }
      const int64_t row = W * pixel;
      int64_t done = 0;  // ring: input rows [0, done) rounded into the output
      const auto round_rows_before = [&](int64_t ih_end) {
        for (; done < ih_end; ++done) {
          Dst* r = dst + (done % ring_rows) * row;
          T* to = o + done * W * C;
          if (nc == C) {
            round_sums(r, to, row);
          } else {
            for (int64_t p = 0; p < W; ++p) round_sums(r + p * nc, to + p * C, nc);
          }
          std::memset(static_cast<void*>(r), 0, row * sizeof(Dst));
        }
      };
#if defined(CPU_CAPABILITY_AVX512)
      TapScatter<kMode, T, Dst> tap_vectors;
#endif
      for (int64_t oh = 0, i = 0; oh < g.OH; ++oh) {
        const int64_t h0 = oh * g.sh - g.ph;
        if constexpr (kRing) round_rows_before(std::min(h0, g.H));
        for (int64_t j = 0; j <= reach_h; ++j) {
          const int64_t ih = h0 + j;
          row_at[j] = ih < 0 ? 0 : kRing ? (ih % ring_rows) * row : ih * row;
        }
        const bool rows_inside = h0 >= 0 && h0 + reach_h < g.H;
        if (rows_inside) {
          for (int64_t k = 0; k < taps; ++k) rel[k] = row_at[off.dy[k]] + off.dx[k] * pixel;
        }
        for (int64_t ow = 0, w0 = -g.pw; ow < g.OW; ++ow, ++i, w0 += g.sw) {
          const T* vi = vn + i * C;
          const uint8_t* si = sn + i * C;
          if (rows_inside && w0 >= 0 && w0 + reach_w < W) {
            Dst* d = dst + w0 * pixel;
            int64_t c = 0;
#if defined(CPU_CAPABILITY_AVX512)
            if constexpr (TapScatter<kMode, T, Dst>::kEnabled) {
              c = tap_vectors.run(vi, si, d, rel, taps, nc);
            }
#endif
            for (; c < nc; ++c) {
              const uint8_t k = si[c];
              if (k >= taps) {
                bad = true;
                continue;
              }
              update<kMode>(d[rel[k] + c], vi[c]);
            }
            continue;
          }
          for (int64_t c = 0; c < nc; ++c) {
            const uint8_t k = si[c];
            const int64_t ih = h0 + off.dy[k], iw = w0 + off.dx[k];
            if (static_cast<uint64_t>(ih) >= static_cast<uint64_t>(g.H) ||
                static_cast<uint64_t>(iw) >= static_cast<uint64_t>(W)) {
              bad = true;  // (a switch past its window has offsets no check passes)
              continue;
            }
            update<kMode>(dst[row_at[off.dy[k]] + iw * pixel + c], vi[c]);
          }
        }
      }
      if constexpr (kRing) round_rows_before(g.H);
#if defined(CPU_CAPABILITY_AVX512)
      bad |= tap_vectors.largest() >= taps;
#endif
    }
    if (bad) a.bad_switch->store(true, std::memory_order_relaxed);
  });
}

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// The windows over each input row (or column) of a pool, in window order: for row i, the
// pairs (window row, tap row) first[i] .. first[i + 1] - 1.
struct Covering {
  std::vector<int64_t> first, window, tap;
  Covering(int64_t n_in, int64_t k, int64_t s, int64_t p, int64_t d, int64_t n_out) {
    for (int64_t i = 0; i < n_in; ++i) {
      first.push_back(static_cast<int64_t>(window.size()));
      int64_t lo, hi;
      windows_covering(i, k, s, p, d, n_out, &lo, &hi);
      for (int64_t o = lo; o <= hi; ++o) {
        const int64_t at = i + p - o * s;
        if (at % d == 0 && at / d < k) {
          window.push_back(o);
          tap.push_back(at / d);
        }
      }
    }
    first.push_back(static_cast<int64_t>(window.size()));
  }
};

// The NHWC pool backward as a gather (AVX2, AVX-512; float32 and float64): each input pixel
// sums, over the windows that hold it in window order, the pooled gradient of the channels
// whose switch names it, vectors along the channels (where it beats the scatter:
// by_pixels_pays). The same terms are added in the same order from +0 as the scatter's (a
// lane that does not match adds +0, which leaves any sum from +0 as it is). A switch naming
// no input pixel would be dropped unseen, so the switches are checked first (a.bad_switch).
template <typename T>
void scatter_nhwc_by_pixels(const PoolKernelArgs& a) {
  static_assert(std::is_same_v<T, typename AccType<T>::type>);
  using L = Lanes<T>;
  using Vec = typename L::Vec;
  constexpr int64_t V = L::kSize;
  constexpr int kBlock = 4;
  const PoolGeom g = a.g;
  const SwitchOffsets off(g);
  const int64_t C = a.C, OHW = g.OH * g.OW;
  const int64_t taps = g.kh * g.kw;
  const int64_t reach_h = (g.kh - 1) * g.dh, reach_w = (g.kw - 1) * g.dw;
  const T* v = static_cast<const T*>(a.in);
  T* out = static_cast<T*>(a.out);
  const uint8_t* sw = a.switches;
  // Every switch a tap of its window inside the input: windows inside, by the largest
  // switch; the others switch by switch.
  at::parallel_for(0, a.N * OHW, grain_for(C), [&](int64_t begin, int64_t end) {
    bool bad = false;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t oh = (i / g.OW) % g.OH, ow = i % g.OW;
      const int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
      const uint8_t* si = sw + i * C;
      if (h0 >= 0 && h0 + reach_h < g.H && w0 >= 0 && w0 + reach_w < g.W) {
        uint8_t largest = 0;
        for (int64_t c = 0; c < C; ++c) largest = std::max(largest, si[c]);
        bad |= largest >= taps;
      } else {
        for (int64_t c = 0; c < C; ++c) {
          const int64_t ih = h0 + off.dy[si[c]], iw = w0 + off.dx[si[c]];
          bad |= static_cast<uint64_t>(ih) >= static_cast<uint64_t>(g.H) ||
                 static_cast<uint64_t>(iw) >= static_cast<uint64_t>(g.W);
        }
      }
    }
    if (bad) a.bad_switch->store(true, std::memory_order_relaxed);
  });
  const Covering rows(g.H, g.kh, g.sh, g.ph, g.dh, g.OH);
  const Covering cols(g.W, g.kw, g.sw, g.pw, g.dw, g.OW);
  at::parallel_for(0, a.N * g.H, grain_for(g.W * C * 2), [&](int64_t begin, int64_t end) {
    std::vector<int64_t> at_window(taps);
    std::vector<Vec> codes(taps);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / g.H, ih = r % g.H;
      const T* vn = v + n * OHW * C;
      const uint8_t* sn = sw + n * OHW * C;
      for (int64_t iw = 0; iw < g.W; ++iw) {
        // the windows over (ih, iw), window order, and the switch that names it in each
        int64_t m = 0;
        for (int64_t x = rows.first[ih]; x < rows.first[ih + 1]; ++x) {
          for (int64_t y = cols.first[iw]; y < cols.first[iw + 1]; ++y) {
            at_window[m] = (rows.window[x] * g.OW + cols.window[y]) * C;
            codes[m++] = L::splat(rows.tap[x] * g.kw + cols.tap[y]);
          }
        }
        T* o = out + (r * g.W + iw) * C;
        const auto block = [&](auto blocks, int64_t c) {
          constexpr int B = decltype(blocks)::value;
          Vec acc[B];
          for (int b = 0; b < B; ++b) acc[b] = Vec(0);
          for (int64_t j = 0; j < m; ++j) {
            const T* pv = vn + at_window[j] + c;
            const uint8_t* ps = sn + at_window[j] + c;
            for (int b = 0; b < B; ++b) {
              const Vec hit = L::load_switches(ps + b * V) == codes[j];
              acc[b] = acc[b] + Vec::blendv(Vec(0), L::load(pv + b * V), hit);
            }
          }
          for (int b = 0; b < B; ++b) L::store(o + c + b * V, acc[b]);
        };
        int64_t c = 0;
        for (; c + kBlock * V <= C; c += kBlock * V) {
          block(std::integral_constant<int, kBlock>{}, c);
        }
        for (; c + V <= C; c += V) block(std::integral_constant<int, 1>{}, c);
        if (c < C) {  // the last channels, element-sized loads
          const int64_t nc = C - c;
          Vec acc(0);
          for (int64_t j = 0; j < m; ++j) {
            const Vec hit = L::load_switches(sn + at_window[j] + c, nc) == codes[j];
            acc = acc + Vec::blendv(Vec(0), L::load(vn + at_window[j] + c, nc), hit);
          }
          L::store(o + c, acc, nc);
        }
      }
    }
  });
}
#endif

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// Whether scatter_nhwc_by_pixels beats the scatter (whose windows inside the input go a
// vector of channels at a time, TapScatter): float32 / float64 with overlapping windows, at
// most 4 over a pixel, and at least 8 vectors of channels, where the gather's one write of
// each input pixel beats the scatter's zeroing and adds in an output out of cache. Two
// threads, us, by pixels / the scatter (PyTorch), float32: 3x3/2 padding 1 4x128x112x112
// 1134 / 1622 (1992), 4x256x56x56 535 / 603 (815), 4x512x28x28 273 / 389 (468), 4x512x14x14
// 73 / 94 (109); but 4x64x28x28 52 / 39 (36), 4x128x56x56 299 / 290 (371), 4x64x112x112
// 545-767 / 556-673 over eight runs (766-880); 3x3 stride 1 (9 windows a pixel) 4x64x56x56
// 582 / 392 (556), 5x5/2 4x128x56x56 496 / 400 (397). 16-bit types: their scatter adds into
// a ring of float rows in cache, and the gather measured slower or the same: bfloat16
// 4x256x56x56 3x3/2 padding 1 693 / 531 (849), 4x256x56x56 3x3/1 1882 / 1359 (3235),
// 4x512x28x28 339 / 336 (449). AVX2 (the scatter channel by channel): 4x64x56x56 3x3/1
// float32 479 / 408 (401); 3x3/2 maps within 5%.
template <typename T>
bool by_pixels_pays(const PoolKernelArgs& a) {
  const Reach reach(a.g);  // (windows over a pixel: at most (rows + 1) x (cols + 1))
  return windows_overlap(a.g) && (reach.rows + 1) * (reach.cols + 1) <= 4 &&
         a.C >= 8 * Lanes<T>::kSize;
}
#endif

template <typename T>
void scatter_nchw(const PoolKernelArgs& a, bool sum) {
  switch (mode_of<T>(a.g, sum)) {
    case Mode::kLast: return scatter_nchw_as<Mode::kLast, T>(a);
    case Mode::kSum: return scatter_nchw_as<Mode::kSum, T>(a);
    case Mode::kSumInFloat: return scatter_nchw_as<Mode::kSumInFloat, T>(a);
    case Mode::kSumOfOne: return scatter_nchw_as<Mode::kSumOfOne, T>(a);
  }
}

template <typename T>
void scatter_nhwc(const PoolKernelArgs& a, bool sum) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, typename AccType<T>::type>) {
    if (sum && by_pixels_pays<T>(a)) return scatter_nhwc_by_pixels<T>(a);
  }
#endif
  switch (mode_of<T>(a.g, sum)) {
    case Mode::kLast: return scatter_nhwc_as<Mode::kLast, T>(a);
    case Mode::kSum: return scatter_nhwc_as<Mode::kSum, T>(a);
    case Mode::kSumInFloat: return scatter_nhwc_as<Mode::kSumInFloat, T>(a);
    case Mode::kSumOfOne: return scatter_nhwc_as<Mode::kSumOfOne, T>(a);
  }
}

}  // namespace scatter_generic
