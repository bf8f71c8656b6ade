// CPU pooling kernels, vectorised with at::vec. Included once per ISA by
// csrc/cpu/isa/pool_kernels_<isa>.cpp, which define CPU_CAPABILITY (and are compiled with
// that ISA's flags), so Vectorized<T> is 4, 8 or 16 floats wide in the respective copy.
//
// Layouts and paths:
//  * NCHW, 2x2 stride-2 windows inside the input (DeconvNet's pools): rows are walked with
//    full-width vectors; the two columns of each window are split with deinterleave2 and
//    merged back with interleave2. One read of the input, one write of each output.
//  * NHWC, any other geometry: vectors run along channels, which are contiguous
//    (pool_forward_generic.h).
//  * NCHW, any other geometry: vectors along pooled rows for strides 1 and 2, the shared
//    scalar body of csrc/kernels/pool_kernels.h elsewhere (pool_forward_generic.h).
//  * The scatter (pool backward, unpool) of any other geometry walks the pooled values
//    of a plane or of an image's run of channels in raster order (pool_scatter_generic.h);
//    so does the gather (unpool backward) of NCHW and of overlapping NHWC windows
//    (pool_gather_generic.h).
//  * AVX-512 builds: the forward of 2x2 stride-2 pools in float / bfloat16 / half, and the
//    per-row (NCHW) and per-pixel (NHWC) steps of the scatter of such pools, run the
//    intrinsics of pool_kernels_avx512.h instead (why: see there).
//  * AVX2 builds: such pools' forward (float32, bfloat16) and scatter steps run the
//    intrinsics of pool_kernels_avx2.h.
// Work is split over (plane, row) or (pixel) items so a small N * C still uses every core.
#pragma once

#ifndef CPU_CAPABILITY
#error "pool_kernels_impl.h is compiled per ISA: define CPU_CAPABILITY"
#endif

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#include "../kernels/pool_kernels.h"
#include "../pool_args.h"
#include "pool_kernels.h"

namespace deconvkernels::cpu::CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// Items per parallel task so that each task does at least ~16k element visits.
int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, work_per_item));
}

// Software prefetch for the NCHW 2x2 row walks (for_each_pooled_row_2x2), which read their
// input once, front to back, two rows at a time: before a pooled row, ask for the lines
// kReadAheadBytes past its input. The hardware prefetchers alone left the bfloat16 kernel
// short of a copy's bandwidth on maps that stream from L3. Measured interleaved in one
// process (min of 30 rounds, Xeon family 6 model 207, randn), us, without -> with: AVX-512
// bfloat16 4x64x224x224 1 thread 1359 -> 1218, 2 threads 693 -> 629; float32 4x64x224x224
// 1 thread 2436 -> 2331 (2 threads alike), 4x128x112x112 2 threads 652 -> 602; AVX2 float32
// 4x128x112x112 696 -> 603, 4x256x56x56 407 -> 357 (bfloat16 alike). 1 to 4 KiB ahead
// measured alike. Not kept: a step's share ahead in the flat and row-step walks (float32
// 28x28 and 56x56, one thread, 9-14% slower) and a pixel's ahead in the channels-last walk
// (bfloat16 1-3% slower).
// The address is a hint only: past the end of the buffer (a task's last rows) a prefetch
// does not fault, and it is formed as an integer. always_inline: GCC 12 found this
// function free of side effects and dropped the calls (no prefetch left in the object).
constexpr int64_t kReadAheadBytes = 2048;
__attribute__((always_inline)) inline void read_ahead(const void* p, int64_t bytes) {
  uintptr_t line = reinterpret_cast<uintptr_t>(p) + kReadAheadBytes;
  for (const uintptr_t end = line + bytes; line < end; line += 64) {
    __builtin_prefetch(reinterpret_cast<const void*>(line), /*rw=*/0, /*locality=*/3);
  }
}

// Load / store Vectorized<acc>::size() elements of T (or the first n, for row tails) as
// one vector of the accumulation type; switches likewise from / to uint8. Partial loads
// and stores are masked on AVX-512; lanes past n are never stored.
template <typename T>
struct Lanes {
  using acc_t = typename AccType<T>::type;
  using Vec = Vectorized<acc_t>;
  static constexpr int64_t kSize = Vec::size();

  static Vec splat(int64_t v) {
    return Vec(static_cast<acc_t>(v));
  }
  static Vec load(const T* p, int64_t n = kSize) {
    if constexpr (std::is_same_v<T, acc_t>) {
      return Vec::loadu(p, n);
    } else if (n == kSize) {
      Vec out;
      at::vec::load_to_float<T>(p, out);
      return out;
    } else {
      return std::get<0>(at::vec::convert_to_float<T>(Vectorized<T>::loadu(p, n)));
    }
  }
  static void store(T* p, const Vec& v, int64_t n = kSize) {
    if constexpr (std::is_same_v<T, acc_t>) {
      v.store(p, n);
    } else {
      at::vec::convert_from_float<T>(v, v).store(p, n);
    }
  }
  // Whether whole vectors of float switches widen from / narrow to bytes by intrinsics
  // (AVX2, AVX-512): at::vec's count-taking uint8 load and its conversions go through
  // buffers, and element by element the switches of a pixel of 16-32 channels cost as much
  // as a 3x3 window's taps (pool_forward_generic.h's store_outputs).
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  static constexpr bool kVectorSwitches = std::is_same_v<acc_t, float>;
#else
  static constexpr bool kVectorSwitches = false;
#endif
  static Vec load_switches(const uint8_t* p, int64_t n = kSize) {
    if constexpr (kVectorSwitches) {
      if (n == kSize) {
#if defined(CPU_CAPABILITY_AVX512)
        return _mm512_cvtepi32_ps(
            _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#elif defined(CPU_CAPABILITY_AVX2)
        return _mm256_cvtepi32_ps(
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#endif
      }
    }
    return at::vec::convert<acc_t>(Vectorized<uint8_t>::loadu(p, static_cast<uint8_t>(n)));
  }
  // (switches are whole numbers 0..254: truncation and rounding agree)
  static void store_switches(uint8_t* p, const Vec& v, int64_t n = kSize) {
    if constexpr (kVectorSwitches) {
      if (n == kSize) {
#if defined(CPU_CAPABILITY_AVX512)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                         _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(__m512(v))));
        return;
#elif defined(CPU_CAPABILITY_AVX2)
        const __m256i i = _mm256_cvttps_epi32(__m256(v));
        const __m128i w =
            _mm_packus_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packus_epi16(w, w));
        return;
#endif
      }
    }
    at::vec::convert<uint8_t>(v).store(p, n);
  }
  // Deinterleave 2n consecutive elements into (even, odd) lanes: a window row's columns.
  static std::pair<Vec, Vec> load_pairs(const T* p, int64_t n) {
    const int64_t lo = std::min<int64_t>(2 * n, kSize);
    return at::vec::deinterleave2(load(p, lo), load(p + kSize, 2 * n - lo));
  }
};

// Running max update with PyTorch's rule: take v when v > max or v is NaN.
template <typename Vec>
inline void max_update(Vec& best, Vec& best_k, const Vec& v, const Vec& k) {
  const Vec take = (v > best) | v.isnan();
  best = Vec::blendv(best, v, take);
  best_k = Vec::blendv(best_k, k, take);
}

// (outer, inner) of a flat item index, counted along a parallel range instead of divided
// out per item: a 64-bit division per row or pixel cost as much as a short row (14x14 to
// 56x56 maps). next() returns whether inner wrapped.
struct CountedIndex {
  int64_t outer, inner;
  int64_t size;
  CountedIndex(int64_t flat, int64_t size) : outer(flat / size), inner(flat % size), size(size) {}
  bool next() {
    if (++inner < size) return false;
    inner = 0;
    ++outer;
    return true;
  }
};

// Channels-last tasks of (image, run of channels): whole images while there are enough of
// them for the threads, else runs of at least 16 channels so that one image still spreads
// over the threads. Item i is image n(i), channels [c0(i), c0(i) + count(i)).
struct ChannelRuns {
  int64_t C, run, runs;
  ChannelRuns(int64_t N, int64_t C) : C(C) {
    const int64_t split = std::max<int64_t>(1, (at::get_num_threads() + N - 1) / N);
    run = std::max<int64_t>(16, (C + split - 1) / split);
    runs = (C + run - 1) / run;
  }
  int64_t items(int64_t N) const { return N * runs; }
  int64_t n(int64_t i) const { return i / runs; }
  int64_t c0(int64_t i) const { return (i % runs) * run; }
  int64_t count(int64_t i) const { return std::min(run, C - c0(i)); }
};

// The raw bits of a T, as an unsigned integer that may alias it.
template <int kBytes>
struct RawBitsOf;
template <>
struct RawBitsOf<2> {
  typedef uint16_t __attribute__((may_alias)) type;
};
template <>
struct RawBitsOf<4> {
  typedef uint32_t __attribute__((may_alias)) type;
};
template <>
struct RawBitsOf<8> {
  typedef uint64_t __attribute__((may_alias)) type;
};

// NCHW, 2x2 stride-2 windows inside the output: a pooled row to both of its output rows,
// the DEFAULT level's kernel (and double's at every level; the AVX2 kernel's rows at the
// end of a buffer): both rows zeroed by memset,
// then each value stored where its switch says, on raw bits. (at::vec's form before, values
// widened to float, switches converted to float lanes, both rows blended and interleaved,
// ran the unpool at 0.11x PyTorch's scalar loop at the DEFAULT level, 2-core Xeon, both
// forced to DEFAULT; a select per output element, vectorised by the compiler to SSE2, at
// 0.38x.)
template <typename T>
void scatter_row_pair_plain(const T* vr, const uint8_t* sr, T* out0, T* out1, int64_t OW) {
  using U = typename RawBitsOf<sizeof(T)>::type;
  const U* v = reinterpret_cast<const U*>(vr);
  U* const rows[2] = {reinterpret_cast<U*>(out0), reinterpret_cast<U*>(out1)};
  std::memset(out0, 0, 2 * OW * sizeof(T));
  std::memset(out1, 0, 2 * OW * sizeof(T));
  for (int64_t i = 0; i < OW; ++i) {
    const unsigned k = sr[i];
    rows[k >> 1][2 * i + (k & 1)] = v[i];
  }
}

// NHWC: the C channels of one pooled pixel to the four pixels of its window (dst[k] for
// switch k), as scatter_row_pair_plain.
template <typename T>
void scatter_pixel_plain(const T* vp, const uint8_t* sp, T* const dst[4], int64_t C) {
  using U = typename RawBitsOf<sizeof(T)>::type;
  const U* v = reinterpret_cast<const U*>(vp);
  U* const out[4] = {reinterpret_cast<U*>(dst[0]), reinterpret_cast<U*>(dst[1]),
                     reinterpret_cast<U*>(dst[2]), reinterpret_cast<U*>(dst[3])};
  for (int k = 0; k < 4; ++k) std::memset(dst[k], 0, C * sizeof(T));
  for (int64_t c = 0; c < C; ++c) out[sp[c]][c] = v[c];
}

// The walks of the 2x2 stride-2 pool forward, shared by the AVX2 and AVX-512 kernels, in
// parallel with enough items a task (grain_for). NCHW: f(r, r0, rows_after) for each pooled
// row r (counted over all planes), r0 its windows' top input row (the bottom one is r0 + W),
// rows_after the rows its task walks after r (kernels that let a row's last vector spill into
// the next row, which the same task overwrites later, need it).
// NHWC: f(i, p00, p10) for each output pixel i, p00 / p10 its window's top-left input
// pixel and the one below. done() ends each task (kernels that stream fence there). Each
// task runs a copy of the NCHW f: a mutable lambda's captures are that task's own.
template <typename T, typename F, typename Done>
void for_each_pooled_row_2x2(const PoolKernelArgs& a, F&& f, Done&& done) {
  const PoolGeom g = a.g;
  const T* x = static_cast<const T*>(a.in);
  at::parallel_for(0, a.N * a.C * g.OH, grain_for(g.OW * 4), [&](int64_t begin, int64_t end) {
    auto task = f;  // a copy a task, so a mutable f keeps state of its own there
    CountedIndex row(begin, g.OH);  // (plane, oh)
    for (int64_t r = begin; r < end; ++r, row.next()) {
      const T* r0 = x + row.outer * g.H * g.W + 2 * row.inner * g.W;
      read_ahead(r0, 2 * g.W * sizeof(T));
      task(r, r0, end - r - 1);
    }
    done();
  });
}

template <typename T, typename F, typename Done>
void for_each_pixel_2x2(const PoolKernelArgs& a, F&& f, Done&& done) {
  const PoolGeom g = a.g;
  const int64_t C = a.C;
  const T* x = static_cast<const T*>(a.in);
  at::parallel_for(0, a.N * g.OH * g.OW, grain_for(C * 4), [&](int64_t begin, int64_t end) {
    CountedIndex pixel(begin, g.OW);        // (n * OH + oh, ow)
    CountedIndex image(pixel.outer, g.OH);  // (n, oh): advances when pixel wraps
    for (int64_t i = begin; i < end; ++i, pixel.next() && image.next()) {
      const T* p00 = x + ((image.outer * g.H + 2 * image.inner) * g.W + 2 * pixel.inner) * C;
      f(i, p00, p00 + g.W * C);
    }
    done();
  });
}

#if defined(CPU_CAPABILITY_AVX512)
#include "pool_kernels_avx512.h"
#endif
#if defined(CPU_CAPABILITY_AVX2)
#include "pool_kernels_avx2.h"
#endif
#include "pool_forward_generic.h"
#include "pool_scatter_generic.h"
#include "pool_gather_generic.h"

// ------------------------------------------------------------------ max pool forward

template <typename T>
void max_pool_nchw(const PoolKernelArgs& a) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (avx512_pool::kSupported<T>) {
    if (is_2x2_stride2_inside(a.g)) return avx512_pool::max_pool_nchw_2x2<T>(a);
  }
#endif
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (avx2_pool::kForwardSupported<T>) {
    if (is_2x2_stride2_inside(a.g)) return avx2_pool::max_pool_nchw_2x2<T>(a);
  }
#endif
  if (!is_2x2_stride2_inside(a.g)) return pool_generic::max_pool_nchw<T>(a);
  // 2x2 stride 2 at the DEFAULT level and for the types without intrinsics: rows shorter than
  // a vector (14x14 maps) take partial vectors too.
  using L = Lanes<T>;
  using Vec = typename L::Vec;
  constexpr int64_t V = L::kSize;
  const PoolGeom g = a.g;
  const T* x = static_cast<const T*>(a.in);
  T* y = static_cast<T*>(a.out);
  uint8_t* sw = a.out_switches;
  at::parallel_for(0, a.N * a.C * g.OH, grain_for(g.OW * 4), [&](int64_t begin, int64_t end) {
    CountedIndex row(begin, g.OH);  // (plane, oh)
    for (int64_t r = begin; r < end; ++r, row.next()) {
      const T* r0 = x + row.outer * g.H * g.W + 2 * row.inner * g.W;
      const T* r1 = r0 + g.W;
      T* yr = y + r * g.OW;
      uint8_t* sr = sw + r * g.OW;
      for (int64_t ow = 0; ow < g.OW; ow += V) {
        const int64_t n = std::min<int64_t>(V, g.OW - ow);
        auto [a0, a1] = L::load_pairs(r0 + 2 * ow, n);
        auto [b0, b1] = L::load_pairs(r1 + 2 * ow, n);
        Vec best = a0, best_k = L::splat(0);
        max_update(best, best_k, a1, L::splat(1));
        max_update(best, best_k, b0, L::splat(2));
        max_update(best, best_k, b1, L::splat(3));
        L::store(yr + ow, best, n);
        L::store_switches(sr + ow, best_k, n);
      }
    }
  });
}

template <typename T>
void max_pool_nhwc(const PoolKernelArgs& a) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (avx512_pool::kSupported<T>) {
    if (is_2x2_stride2_inside(a.g)) return avx512_pool::max_pool_nhwc_2x2<T>(a);
  }
#endif
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (avx2_pool::kForwardSupported<T>) {
    if (is_2x2_stride2_inside(a.g)) return avx2_pool::max_pool_nhwc_2x2<T>(a);
  }
#endif
  pool_generic::max_pool_nhwc<T>(a);
}

// ---------------------------------------------------- scatter: pooled -> unpooled

// Both output rows of a pooled row (see avx512_pool::scatter_row_pair_2x2).
// `readable`: the values and switch bytes that may be read from vr / sr on (the rest of the
// buffers; the AVX2 kernel reads past a short row where it can).
// `room`: the elements the task writes after out1's row (the AVX2 kernel lets a short row's
// last vector spill there).
template <typename T>
void scatter_row_pair_2x2(const T* vr, const uint8_t* sr, T* out0, T* out1, int64_t OW,
                          int64_t readable, int64_t room) {
  (void)readable;
  (void)room;
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (avx512_pool::kSupported<T>) {
    return avx512_pool::scatter_row_pair_2x2(vr, sr, out0, out1, OW);
  }
#endif
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (avx2_pool::kSupported<T>) {
    return avx2_pool::scatter_row_pair_2x2(vr, sr, out0, out1, OW, readable, room);
  }
#endif
  scatter_row_pair_plain(vr, sr, out0, out1, OW);
}

// NCHW, 2x2 stride-2 windows inside the output: a pooled row at a time, both of its output
// rows at once; then zeros for the odd last column and row that no window covers.
template <typename T>
void scatter_nchw_2x2(const PoolKernelArgs& a) {
  const PoolGeom g = a.g;
  const T* v = static_cast<const T*>(a.in);
  T* out = static_cast<T*>(a.out);
  const uint8_t* sw = a.switches;
  const int64_t pooled_rows = a.N * a.C * g.OH;
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (avx512_pool::kSupported<T>) {
    if (avx512_pool::short_rows_by_permutes<T>(g.H, g.W, g.OH, g.OW)) {
      return avx512_pool::scatter_short_rows_2x2(v, sw, out, pooled_rows, g.OW);
    }
  }
#endif
  at::parallel_for(0, pooled_rows, grain_for(2 * g.W), [&](int64_t begin, int64_t end) {
    CountedIndex row(begin, g.OH);  // (plane, oh)
    for (int64_t r = begin; r < end; ++r, row.next()) {
      T* const plane = out + row.outer * g.H * g.W;
      T* const o0 = plane + 2 * row.inner * g.W;
      T* const o1 = o0 + g.W;
      scatter_row_pair_2x2(v + r * g.OW, sw + r * g.OW, o0, o1, g.OW, (pooled_rows - r) * g.OW,
                           (end - r - 1) * 2 * g.W);
      if (2 * g.OW < g.W) {
        std::fill(o0 + 2 * g.OW, o0 + g.W, T(0));
        std::fill(o1 + 2 * g.OW, o1 + g.W, T(0));
      }
      if (row.inner == g.OH - 1 && 2 * g.OH < g.H) {
        std::fill(plane + 2 * g.OH * g.W, plane + g.H * g.W, T(0));
      }
    }
  });
}

template <typename T>
void scatter_nchw(const PoolKernelArgs& a, bool sum) {
  // Without overlap each position has at most one window, so sum == last.
  if (is_2x2_stride2_inside(a.g)) return scatter_nchw_2x2<T>(a);
  scatter_generic::scatter_nchw<T>(a, sum);
}

// NHWC, 2x2 stride-2 windows inside the input: walk pooled pixels and write each one's
// 2x2 output block (every value once, switch compares along channels); then zero the
// odd last row / column that no window covers. The per-pixel step is scatter_pixel_plain
// here and intrinsics on AVX2 / AVX-512.
template <typename T>
void scatter_nhwc_2x2(const PoolKernelArgs& a) {
  const PoolGeom g = a.g;
  const int64_t C = a.C;
  const T* v = static_cast<const T*>(a.in);
  T* out = static_cast<T*>(a.out);
  const uint8_t* sw = a.switches;
  const int64_t rows = a.N * g.OH;  // one task item: a pooled row and its two output rows
  at::parallel_for(0, rows, grain_for(g.OW * C * 4), [&](int64_t begin, int64_t end) {
    CountedIndex row(begin, g.OH);  // (n, oh)
    for (int64_t r = begin; r < end; ++r, row.next()) {
      T* o0 = out + ((row.outer * g.H + 2 * row.inner) * g.W) * C;
      T* o1 = o0 + g.W * C;
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        const int64_t pooled = (r * g.OW + ow) * C;
        T* p00 = o0 + 2 * ow * C;
        T* p10 = o1 + 2 * ow * C;
        T* const dst[4] = {p00, p00 + C, p10, p10 + C};
#if defined(CPU_CAPABILITY_AVX512)
        if constexpr (avx512_pool::kSupported<T>) {
          avx512_pool::scatter_pixel_2x2(v + pooled, sw + pooled, dst, C);
          continue;
        }
#endif
#if defined(CPU_CAPABILITY_AVX2)
        if constexpr (avx2_pool::kSupported<T>) {
          avx2_pool::scatter_pixel_2x2(v + pooled, sw + pooled, dst, C);
          continue;
        }
#endif
        scatter_pixel_plain(v + pooled, sw + pooled, dst, C);
      }
      if (g.W > 2 * g.OW) {  // odd width: the last column of both rows
        std::fill(o0 + 2 * g.OW * C, o0 + g.W * C, T(0));
        std::fill(o1 + 2 * g.OW * C, o1 + g.W * C, T(0));
      }
    }
  });
  if (g.H > 2 * g.OH) {  // odd height: the last row of every image
    for (int64_t n = 0; n < a.N; ++n) {
      T* row = out + ((n * g.H + 2 * g.OH) * g.W) * C;
      std::fill(row, row + (g.H - 2 * g.OH) * g.W * C, T(0));
    }
  }
}

template <typename T>
void scatter_nhwc(const PoolKernelArgs& a, bool sum) {
  if (is_2x2_stride2_inside(a.g)) return scatter_nhwc_2x2<T>(a);
  scatter_generic::scatter_nhwc<T>(a, sum);
}

// ----------------------------------------------------- gather: unpooled -> pooled

template <typename T>
void gather_nchw(const PoolKernelArgs& a, bool only_if_last) {
  gather_generic::gather_nchw<T>(a, only_if_last);
}

// NHWC without overlap (any window holds each position at most once): vectors along the
// channels, a blend a tap; a switch that no tap matched is bad (a.bad_switch). With overlap
// "is a later window pointing here?" differs per channel: gather_generic.
template <typename T>
void gather_nhwc(const PoolKernelArgs& a, bool only_if_last) {
  const PoolGeom g = a.g;
  if (only_if_last && (g.sh < (g.kh - 1) * g.dh + 1 || g.sw < (g.kw - 1) * g.dw + 1)) {
    return gather_generic::gather_nhwc<T>(a, true);
  }
  using L = Lanes<T>;
  using Vec = typename L::Vec;
  constexpr int64_t V = L::kSize;
  const int64_t C = a.C;
  if (C < V) return gather_generic::gather_nhwc_few_channels<T>(a);
  const T* src = static_cast<const T*>(a.in);
  T* out = static_cast<T*>(a.out);
  const uint8_t* sw = a.switches;
  const int64_t pixels = a.N * g.OH * g.OW;
  at::parallel_for(0, pixels, grain_for(C * g.kh * g.kw), [&](int64_t begin, int64_t end) {
    bool bad = false;
    CountedIndex pixel(begin, g.OW);        // (n * OH + oh, ow)
    CountedIndex image(pixel.outer, g.OH);  // (n, oh): advances when pixel wraps
    for (int64_t i = begin; i < end; ++i, pixel.next() && image.next()) {
      const int64_t n = image.outer, oh = image.inner, ow = pixel.inner;
      const T* sn = src + n * g.H * g.W * C;
      T* o = out + i * C;
      const uint8_t* s = sw + i * C;
      const int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
      for (int64_t c = 0; c < C; c += V) {
        const int64_t nc = std::min<int64_t>(V, C - c);
        const Vec sv = L::load_switches(s + c, nc);
        Vec res = L::splat(0), matched = L::splat(0);
        for (int64_t ky = 0; ky < g.kh; ++ky) {
          const int64_t ih = h0 + ky * g.dh;
          if (ih < 0 || ih >= g.H) continue;
          for (int64_t kx = 0; kx < g.kw; ++kx) {
            const int64_t iw = w0 + kx * g.dw;
            if (iw < 0 || iw >= g.W) continue;
            const Vec hit = sv == L::splat(ky * g.kw + kx);
            res = Vec::blendv(res, L::load(sn + (ih * g.W + iw) * C + c, nc), hit);
            matched = matched | hit;
          }
        }
        bad |= (matched.zero_mask() & ((1 << nc) - 1)) != 0;
        L::store(o + c, res, nc);
      }
    }
    if (bad) a.bad_switch->store(true, std::memory_order_relaxed);
  });
}

// --------------------------------------------------------------- dtype dispatch

template <template <typename> class Fn, typename... Args>
void by_dtype(ScalarKind kind, Args&&... args) {
  switch (kind) {
    case ScalarKind::kFloat:
      return Fn<float>::run(args...);
    case ScalarKind::kDouble:
      return Fn<double>::run(args...);
    case ScalarKind::kHalf:
      return Fn<c10::Half>::run(args...);
    case ScalarKind::kBFloat16:
      return Fn<c10::BFloat16>::run(args...);
  }
}

template <typename T>
struct MaxPoolFn {
  static void run(const PoolKernelArgs& a) {
    a.channels_last ? max_pool_nhwc<T>(a) : max_pool_nchw<T>(a);
  }
};
template <typename T>
struct ScatterFn {
  static void run(const PoolKernelArgs& a, bool sum) {
    a.channels_last ? scatter_nhwc<T>(a, sum) : scatter_nchw<T>(a, sum);
  }
};
template <typename T>
struct GatherFn {
  static void run(const PoolKernelArgs& a, bool only_if_last) {
    a.channels_last ? gather_nhwc<T>(a, only_if_last) : gather_nchw<T>(a, only_if_last);
  }
};

void max_pool_forward(const PoolKernelArgs& a) {
  by_dtype<MaxPoolFn>(a.dtype, a);
}
void switch_scatter(const PoolKernelArgs& a, bool sum) {
  by_dtype<ScatterFn>(a.dtype, a, sum);
}
void switch_gather(const PoolKernelArgs& a, bool only_if_last) {
  by_dtype<GatherFn>(a.dtype, a, only_if_last);
}

}  // namespace

const PoolKernelTable& pool_kernel_table() {
  static const PoolKernelTable table{&max_pool_forward, &switch_scatter, &switch_gather};
  return table;
}

}  // namespace deconvkernels::cpu::CPU_CAPABILITY
