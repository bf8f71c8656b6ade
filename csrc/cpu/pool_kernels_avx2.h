// AVX2 kernels for DeconvNet's windows (2x2, stride 2, inside the input / output), in
// intrinsics. Included by pool_kernels_impl.h inside its namespace, only in the AVX2 build.
//  * The scatter through the switches (unpool forward, pool backward), NCHW row pairs and
//    NHWC pixels, on raw bits (float, bfloat16, half alike; -0 and NaN payloads go through
//    untouched).
//  * The pool forward in float32 and bfloat16, NCHW rows and NHWC pixels: float32 8 windows
//    a step (Lanes8); bfloat16 16 windows (NCHW) or channels (NHWC) a step on 16-bit
//    integers (bf16x16), Lanes8's widened form its exact redo and its channel tails.
//
// Why not at::vec here: its form (Lanes<T> in pool_kernels_impl.h) widens 16-bit values to
// float even to move them, converts the switch bytes to and from float lanes, blends
// through all-ones vectors, and takes partial vectors through scalar copies. On a machine
// without AVX-512 (2-core Xeon, our kernels forced to AVX2 and PyTorch's to AVX2 too,
// geo-means torch/ours over DeconvNet's five pool shapes, at::vec -> these):
//  * unpool: float32 NCHW 0.69 -> 2.09, bfloat16 NCHW 0.23 -> 2.44 (below PyTorch's scalar
//    loop before). A value vector is ANDed with the four "switch == k" lanes and
//    interleaved into the two output rows: every output element written once.
//  * pool forward: channels_last float32 0.89 -> 1.60, bfloat16 0.79 -> 1.70; NCHW bfloat16
//    8.8 -> 22.0. Comparisons as floats (PyTorch's rule in full), the offsets as int32 lanes
//    packed to bytes by one shuffle and one permute.
#pragma once

#if !defined(CPU_CAPABILITY_AVX2)
#error "pool_kernels_avx2.h is for the AVX2 build only"
#endif

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

namespace avx2_pool {

template <typename T>
inline constexpr bool kSupported = std::is_same_v<T, float> ||
    std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>;

// One 256-bit vector of elements of kBytes bytes, as raw bits, and the switch bytes of its
// lanes widened to the same lane width.
template <int kBytes>
struct Bits;

template <>
struct Bits<4> {
  static constexpr int kLanes = 8;
  static __m256i switches(const uint8_t* s) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(s)));
  }
  static __m256i lanes_equal(__m256i s, int k) {
    return _mm256_cmpeq_epi32(s, _mm256_set1_epi32(k));
  }
  // a0 b0 a1 b1 ...: lanes 0..7 of the pairs, then lanes 8..15.
  static std::pair<__m256i, __m256i> interleave(__m256i a, __m256i b) {
    const __m256i lo = _mm256_unpacklo_epi32(a, b), hi = _mm256_unpackhi_epi32(a, b);
    return {_mm256_permute2x128_si256(lo, hi, 0x20), _mm256_permute2x128_si256(lo, hi, 0x31)};
  }
};

template <>
struct Bits<2> {
  static constexpr int kLanes = 16;
  static __m256i switches(const uint8_t* s) {
    return _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
  }
  static __m256i lanes_equal(__m256i s, int k) {
    return _mm256_cmpeq_epi16(s, _mm256_set1_epi16(static_cast<short>(k)));
  }
  static std::pair<__m256i, __m256i> interleave(__m256i a, __m256i b) {
    const __m256i lo = _mm256_unpacklo_epi16(a, b), hi = _mm256_unpackhi_epi16(a, b);
    return {_mm256_permute2x128_si256(lo, hi, 0x20), _mm256_permute2x128_si256(lo, hi, 0x31)};
  }
};

inline __m256i load_bits(const void* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
inline void store_bits(void* p, __m256i v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
}

// The values of lanes whose switch is k, zeros elsewhere.
template <int kBytes>
inline __m256i where_switch(__m256i v, __m256i s, int k) {
  return _mm256_and_si256(v, Bits<kBytes>::lanes_equal(s, k));
}

// One vector of pooled values `v` (switches `s`) as 2 x kLanes elements of each output row:
// row 0 = (r0[0], r0[1]), row 1 = (r1[0], r1[1]).
template <int kBytes>
struct RowPair {
  __m256i r0[2], r1[2];
  RowPair(__m256i v, __m256i s) {
    using B = Bits<kBytes>;
    std::tie(r0[0], r0[1]) =
        B::interleave(where_switch<kBytes>(v, s, 0), where_switch<kBytes>(v, s, 1));
    std::tie(r1[0], r1[1]) =
        B::interleave(where_switch<kBytes>(v, s, 2), where_switch<kBytes>(v, s, 3));
  }
};

// The first n (0..8) doubleword lanes, as a maskload mask.
inline __m256i first_dwords(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// The first `bytes` (0..16) bytes of v to p, by plain stores of 8, 4, 2 and 1 bytes.
inline void store_prefix(void* p, __m128i v, int64_t bytes) {
  auto* b = static_cast<char*>(p);
  if (bytes == 16) return _mm_storeu_si128(reinterpret_cast<__m128i*>(b), v);
  if (bytes & 8) {
    _mm_storel_epi64(reinterpret_cast<__m128i*>(b), v);
    v = _mm_srli_si128(v, 8);
    b += 8;
  }
  const uint64_t rest = static_cast<uint64_t>(_mm_cvtsi128_si64(v));
  if (bytes & 4) std::memcpy(b, &rest, 4);
  const char* bits = reinterpret_cast<const char*>(&rest);
  if (bytes & 2) std::memcpy(b + (bytes & 4), bits + (bytes & 4), 2);
  if (bytes & 1) b[bytes & 6] = bits[bytes & 6];
}

// The first `bytes` (0..32) bytes of v to p, where the memory past them may not be written:
// a row's last step at the end of a task (see `room` below). Not vpmaskmovd / vmaskmovps:
// AMD's Zen 2 and Zen 3 run a masked store as a long microcoded sequence.
inline void store_prefix(void* p, __m256i v, int64_t bytes) {
  if (bytes == 32) return store_bits(p, v);
  __m128i h = _mm256_castsi256_si128(v);
  if (bytes >= 16) {
    _mm_storeu_si128(static_cast<__m128i*>(p), h);
    h = _mm256_extracti128_si256(v, 1);
    p = static_cast<char*>(p) + 16;
    bytes -= 16;
  }
  store_prefix(p, h, bytes);
}

// Rows whose length is no multiple of a vector (7 and 14 pooled columns at 14x14 and 28x28
// maps: every row) end in a partial step. Its whole vectors are stored where `room`, the
// elements that the task writes after the row's end (its later rows; rows are walked in
// address order), covers what spills past the row: the spill lands where later stores of
// the same task overwrite it, and no other task writes there. Else (a task's last rows)
// store_prefix writes exactly the row. Before, a masked store (vmaskmovps / vpmaskmovd,
// microcoded on Zen 2 / Zen 3) on every row: Zen 3, one thread, us a call, 4x512x14x14
// float32 pool forward 475 -> 143, unpool 383 -> 161; bfloat16 202 -> 123, 394 -> 156.

// A pooled row of OW values to both of its output rows (2 OW elements each). The last
// OW % kLanes values take one more vector: 2 x 2 n elements of it are the row's, the rest
// spill while `room` (elements written after out1's row, see above) allows. It is read whole
// where `readable` (the values, and switch bytes, that may be read from vr / sr on: the
// rest of the buffer) allows: the lanes past the row are the next row's and go nowhere. At
// the buffer's end, scatter_row_pair_plain instead.
template <typename T>
void scatter_row_pair_2x2(const T* vr, const uint8_t* sr, T* out0, T* out1, int64_t OW,
                          int64_t readable, int64_t room) {
  constexpr int kBytes = sizeof(T);
  constexpr int64_t L = Bits<kBytes>::kLanes;
  const int64_t whole = OW - OW % L;  // columns in whole steps
  if (whole < OW) {  // the partial step first (see the spill below)
    const int64_t n = OW - whole;
    T* const o0 = out0 + 2 * whole;
    T* const o1 = out1 + 2 * whole;
    if (readable - whole < L) {  // a vector of values, and L switch bytes, would read past the end
      scatter_row_pair_plain(vr + whole, sr + whole, o0, o1, n);
    } else {
      const RowPair<kBytes> p(load_bits(vr + whole), Bits<kBytes>::switches(sr + whole));
      // out0's spill lands in its odd column and out1, whose columns are all written after
      // this; out1's in the task's later rows.
      if (room >= 2 * (L - n)) {
        store_bits(o0, p.r0[0]);
        store_bits(o0 + L, p.r0[1]);
        store_bits(o1, p.r1[0]);
        store_bits(o1 + L, p.r1[1]);
      } else {
        const int64_t bytes = 2 * n * kBytes;  // of each output row
        const int64_t first = std::min<int64_t>(bytes, 32);
        store_prefix(o0, p.r0[0], first);
        store_prefix(o0 + L, p.r0[1], bytes - first);
        store_prefix(o1, p.r1[0], first);
        store_prefix(o1 + L, p.r1[1], bytes - first);
      }
    }
  }
  for (int64_t ow = 0; ow < whole; ow += L) {
    const RowPair<kBytes> p(load_bits(vr + ow), Bits<kBytes>::switches(sr + ow));
    store_bits(out0 + 2 * ow, p.r0[0]);
    store_bits(out0 + 2 * ow + L, p.r0[1]);
    store_bits(out1 + 2 * ow, p.r1[0]);
    store_bits(out1 + 2 * ow + L, p.r1[1]);
  }
}

// NHWC: the C channels of one pooled pixel to the four pixels of its window (dst[k] for
// switch k).
template <typename T>
void scatter_pixel_2x2(const T* vp, const uint8_t* sp, T* const dst[4], int64_t C) {
  constexpr int kBytes = sizeof(T);
  constexpr int64_t L = Bits<kBytes>::kLanes;
  int64_t c = 0;
  for (; c + L <= C; c += L) {
    const __m256i v = load_bits(vp + c), s = Bits<kBytes>::switches(sp + c);
    for (int k = 0; k < 4; ++k) store_bits(dst[k] + c, where_switch<kBytes>(v, s, k));
  }
  if (c < C) {
    T* const rest[4] = {dst[0] + c, dst[1] + c, dst[2] + c, dst[3] + c};
    scatter_pixel_plain(vp + c, sp + c, rest, C - c);
  }
}


// ------------------------------------------------------------------ pool forward

// 8 lanes of T as floats: float as it is; bfloat16 widened exactly (its bits in the high
// half of a float, zeros below), so the maximum goes back bit for bit, NaN payloads too.
template <typename T>
struct Lanes8;

template <>
struct Lanes8<float> {
  static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
  // (even, odd) columns of the 16 values at p: 8 windows of a row.
  static std::pair<__m256, __m256> load_pairs(const float* p) {
    return split(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8));
  }
  // The first n < 8 windows: masked loads of 2 n values, zeros past them.
  static std::pair<__m256, __m256> load_pairs(const float* p, int64_t n) {
    const __m256 a = _mm256_maskload_ps(p, first_dwords(std::min<int64_t>(2 * n, 8)));
    const __m256 b = _mm256_maskload_ps(p + 8, first_dwords(std::max<int64_t>(2 * n - 8, 0)));
    return split(a, b);
  }
  static void store(float* p, __m256 v, int64_t n) {
    store_prefix(p, _mm256_castps_si256(v), 4 * n);
  }

 private:
  // shuffle_ps works per 128-bit half: a0 a2 b0 b2 | a4 a6 b4 b6; permute4x64 orders it.
  static std::pair<__m256, __m256> split(__m256 a, __m256 b) {
    const auto order = [](__m256 v) {
      return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), 0xD8));
    };
    return {order(_mm256_shuffle_ps(a, b, 0x88)), order(_mm256_shuffle_ps(a, b, 0xDD))};
  }
};

template <>
struct Lanes8<c10::BFloat16> {
  using T = c10::BFloat16;
  static __m256 load(const T* p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  static void store(T* p, __m256 v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), narrow(v));
  }
  // A row's even columns are the low halves of its 32-bit pairs, the odd ones the high.
  static std::pair<__m256, __m256> load_pairs(const T* p) {
    return split(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  // The first n < 8 windows: their 2 n values are n doublewords, one masked load.
  static std::pair<__m256, __m256> load_pairs(const T* p, int64_t n) {
    return split(_mm256_maskload_epi32(reinterpret_cast<const int*>(p), first_dwords(n)));
  }
  static void store(T* p, __m256 v, int64_t n) { store_prefix(p, narrow(v), 2 * n); }

 private:
  // The 8 bfloat16 bit patterns (the high halves of v's lanes), packed.
  static __m128i narrow(__m256 v) {
    const __m256i w = _mm256_srli_epi32(_mm256_castps_si256(v), 16);
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(w, w), 0x08));
  }
  static std::pair<__m256, __m256> split(__m256i both) {
    return {_mm256_castsi256_ps(_mm256_slli_epi32(both, 16)),
            _mm256_castsi256_ps(
                _mm256_and_si256(both, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))))};
  }
};

template <typename T>
inline constexpr bool kForwardSupported =
    std::is_same_v<T, float> || std::is_same_v<T, c10::BFloat16>;

// The running max of 8 windows and the offset of its tap: PyTorch's rule, take v when
// v > max or v is NaN.
struct Best8 {
  __m256 max;
  __m256 k = _mm256_setzero_ps();  // offsets as int32 bits
  explicit Best8(__m256 first) : max(first) {}
  void update(__m256 v, int tap) {
    const __m256 take =
        _mm256_or_ps(_mm256_cmp_ps(v, max, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    max = _mm256_blendv_ps(max, v, take);
    k = _mm256_blendv_ps(k, _mm256_castsi256_ps(_mm256_set1_epi32(tap)), take);
  }
  // The 8 offsets as bytes, in the low 64 bits.
  int64_t switches() const {
    const __m256i bytes = _mm256_shuffle_epi8(
        _mm256_castps_si256(k),
        _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8,
                         12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1));
    const __m256i joined =
        _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1));
    return _mm_cvtsi128_si64(_mm256_castsi256_si128(joined));
  }
};

inline void store_switches8(uint8_t* p, int64_t s) { std::memcpy(p, &s, 8); }

// One pooled row, NCHW: r0 / r1 the window's two input rows. A last partial step (rows of 7
// at 14x14 maps are nothing else) loads whole vectors where the input buffer goes on for
// them (up to `end`: lanes past the row hold the next row's values and spill or go nowhere),
// else through masks; it stores whole vectors while `room` (the outputs the task writes after
// this row) allows, see scatter_row_pair_2x2, else exactly its n outputs.
template <typename T>
void pool_row(const T* r0, const T* r1, T* y, uint8_t* sw, int64_t OW, const T* end,
              int64_t room) {
  using L = Lanes8<T>;
  const auto window_max = [](std::pair<__m256, __m256> a, std::pair<__m256, __m256> b) {
    Best8 best(a.first);
    best.update(a.second, 1);
    best.update(b.first, 2);
    best.update(b.second, 3);
    return best;
  };
  int64_t ow = 0;
  for (; ow + 8 <= OW; ow += 8) {
    const Best8 best = window_max(L::load_pairs(r0 + 2 * ow), L::load_pairs(r1 + 2 * ow));
    L::store(y + ow, best.max);
    store_switches8(sw + ow, best.switches());
  }
  if (ow < OW) {
    const int64_t n = OW - ow;
    const bool whole = r1 + 2 * ow + 16 <= end;  // (r0 < r1)
    const Best8 best = whole ? window_max(L::load_pairs(r0 + 2 * ow), L::load_pairs(r1 + 2 * ow))
                             : window_max(L::load_pairs(r0 + 2 * ow, n),
                                          L::load_pairs(r1 + 2 * ow, n));
    if (room >= 8 - n) {
      L::store(y + ow, best.max);
      store_switches8(sw + ow, best.switches());
    } else {
      L::store(y + ow, best.max, n);
      store_prefix(sw + ow, _mm_cvtsi64_si128(best.switches()), n);
    }
  }
}

// One pooled row of 32+ columns, NCHW, in two passes: the window's top row for a chunk of
// the pooled row first (partial maxima kept on the stack), then its bottom row, so each
// thread reads the input in address order, as the AVX-512 kernel does (see
// pool_row_two_pass there). 2 threads, ms, one pass alternating between the rows every
// 64 bytes -> two passes: 4x64x224x224 float32 1.37-1.48 -> 1.28, bfloat16 0.93-0.95 ->
// 0.88; 4x128x112x112 float32 0.64-0.66 -> 0.63.
template <typename T>
void pool_row_two_pass(const T* r0, const T* r1, T* y, uint8_t* sw, int64_t OW,
                       const T* end, int64_t room) {
  using L = Lanes8<T>;
  constexpr int64_t kChunk = 512;  // pooled columns per pass: 2 KiB of partial maxima
  __m256 top[kChunk / 8], took1[kChunk / 8];
  for (int64_t c0 = 0; c0 < OW; c0 += kChunk) {
    const int64_t c1 = std::min(OW, c0 + kChunk);
    int64_t ow = c0, j = 0;
    for (; ow + 8 <= c1; ow += 8, ++j) {
      const auto [a0, a1] = L::load_pairs(r0 + 2 * ow);
      Best8 best(a0);
      best.update(a1, 1);
      top[j] = best.max;
      took1[j] = best.k;
    }
    for (ow = c0, j = 0; ow + 8 <= c1; ow += 8, ++j) {
      const auto [b0, b1] = L::load_pairs(r1 + 2 * ow);
      Best8 best(top[j]);
      best.k = took1[j];
      best.update(b0, 2);
      best.update(b1, 3);
      L::store(y + ow, best.max);
      store_switches8(sw + ow, best.switches());
    }
    if (ow < c1) {  // (the chunks after this one are written later too)
      pool_row(r0 + 2 * ow, r1 + 2 * ow, y + ow, sw + ow, c1 - ow, end, room + OW - c1);
    }
  }
}

// All C channels of one output pixel, NHWC: taps[k] the window's four input pixels. Blocks
// of 4 x 8 channels, each tap read in address order over the block.
template <typename T>
void pool_pixel(const T* const taps[4], T* y, uint8_t* sw, int64_t C) {
  using L = Lanes8<T>;
  int64_t c = 0;
  for (; c + 32 <= C; c += 32) {
    Best8 best[4] = {Best8(L::load(taps[0] + c)), Best8(L::load(taps[0] + c + 8)),
                     Best8(L::load(taps[0] + c + 16)), Best8(L::load(taps[0] + c + 24))};
    for (int t = 1; t < 4; ++t)
      for (int b = 0; b < 4; ++b) best[b].update(L::load(taps[t] + c + 8 * b), t);
    for (int b = 0; b < 4; ++b) {
      L::store(y + c + 8 * b, best[b].max);
      store_switches8(sw + c + 8 * b, best[b].switches());
    }
  }
  for (; c + 8 <= C; c += 8) {
    Best8 best(L::load(taps[0] + c));
    for (int t = 1; t < 4; ++t) best.update(L::load(taps[t] + c), t);
    L::store(y + c, best.max);
    store_switches8(sw + c, best.switches());
  }
  if (c < C) {
    const int64_t n = C - c;
    T v[4][8] = {}, yo[8];
    uint8_t so[8];
    for (int t = 0; t < 4; ++t)
      for (int64_t i = 0; i < n; ++i) v[t][i] = taps[t][c + i];
    Best8 best(L::load(v[0]));
    for (int t = 1; t < 4; ++t) best.update(L::load(v[t]), t);
    L::store(yo, best.max);
    store_switches8(so, best.switches());
    for (int64_t i = 0; i < n; ++i) {
      y[c + i] = yo[i];
      sw[c + i] = so[i];
    }
  }
}

// ------------------------------------------------ bfloat16 forward on 16-bit integers

// bfloat16 compared as 16-bit integers, 16 windows (NCHW) or 16 channels (NHWC) per
// instruction, where Lanes8 widens 8 to float: as the AVX-512 kernels do with 32 (see
// bf16_key and bf16_raw there), without mask registers. Three levels, each exact where it
// is used and each telling when it is not:
//  * Raw: inputs all +0 or greater and none NaN (every pool of DeconvNet: a ReLU comes
//    first). Their patterns order as the values do, signed or unsigned, and are equal only
//    when the values are: a tap is a signed compare (the lanes that take it: PyTorch takes a
//    value only when it is greater), an unsigned max and a select of the switch. The
//    unsigned max is a window's largest input pattern, so a window that held anything else
//    (-0 is 0x8000, other negatives and NaNs above it) has one above +inf's 0x7F80: the
//    watch keeps the running unsigned max of the window maxima.
//  * Keys: numbers of any sign. key = sign(v) * |v| as int16 (vpsignw of the magnitude:
//    -0 and +0 tie, as floats do), a tap is a compare and a max of keys and two selects
//    (value, switch). A NaN's magnitude lies above +inf's: the watch keeps the running max
//    of the magnitudes.
//  * Exact: a row, pair of rows or pixel whose keys met a NaN is redone by the widened
//    Lanes8 code (PyTorch's rule in full).
// A task starts raw and, from the first block the raw watch flags (redone with keys), goes on
// with keys; a block whose keys met a NaN is redone exactly. randn data pays one block
// twice per task, relu data nothing.
namespace bf16x16 {

using T = c10::BFloat16;

inline __m256i zeros() { return _mm256_setzero_si256(); }

// vpblendvb on a 16-bit compare's lanes (all ones or all zeros). Without the empty asm, GCC 12
// rebuilds the byte mask from the compare with a vpcmpgtb per select.
inline __m256i select16(__m256i if_clear, __m256i if_set, __m256i mask) {
  asm("" : "+x"(mask));
  return _mm256_blendv_epi8(if_clear, if_set, mask);
}

struct RawWatch {
  __m256i umax = zeros();
  bool met() const {  // a lane above 0x7F80, unsigned
    const __m256i limit = _mm256_set1_epi16(0x7F80);
    const __m256i over = _mm256_cmpeq_epi16(_mm256_max_epu16(umax, limit), limit);
    return _mm256_movemask_epi8(over) != -1;
  }
};

struct RawBest {
  __m256i raw, sw = zeros();
  RawBest(__m256i first, RawWatch&) : raw(first) {}
  void update(__m256i v, int tap, RawWatch&) {
    const __m256i take = _mm256_cmpgt_epi16(v, raw);
    raw = _mm256_max_epu16(raw, v);
    sw = select16(sw, _mm256_set1_epi16(static_cast<short>(tap)), take);
  }
  void done(RawWatch& w) const { w.umax = _mm256_max_epu16(w.umax, raw); }
};

struct KeyWatch {
  __m256i mag = zeros();  // the running max of |input| patterns
  bool met() const {
    return _mm256_movemask_epi8(_mm256_cmpgt_epi16(mag, _mm256_set1_epi16(0x7F80))) != 0;
  }
};

struct KeyBest {
  __m256i raw, key, sw = zeros();
  static __m256i key_of(__m256i v, KeyWatch& w) {
    const __m256i mag = _mm256_and_si256(v, _mm256_set1_epi16(0x7FFF));
    w.mag = _mm256_max_epi16(w.mag, mag);
    return _mm256_sign_epi16(mag, v);
  }
  KeyBest(__m256i first, KeyWatch& w) : raw(first), key(key_of(first, w)) {}
  void update(__m256i v, int tap, KeyWatch& w) {
    const __m256i k = key_of(v, w);
    const __m256i take = _mm256_cmpgt_epi16(k, key);
    key = _mm256_max_epi16(key, k);
    raw = select16(raw, v, take);
    sw = select16(sw, _mm256_set1_epi16(static_cast<short>(tap)), take);
  }
  void done(KeyWatch&) const {}
};

// The maxima and switches of 16 windows along NCHW rows, in window order.
struct Out16 {
  __m256i y;
  __m128i sw;
};

// (even, odd) columns of the 32 values a | b (16 windows along a row), in the window order
// 0-3 8-11 | 4-7 12-15: vpshufb gathers each 128-bit lane's even values into its low 8 bytes
// and the odd ones into its high 8, and the 64-bit unpacks pair a's with b's.
inline std::pair<__m256i, __m256i> split(__m256i a, __m256i b) {
  const __m256i order = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
                                         0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
  const __m256i a2 = _mm256_shuffle_epi8(a, order), b2 = _mm256_shuffle_epi8(b, order);
  return {_mm256_unpacklo_epi64(a2, b2), _mm256_unpackhi_epi64(a2, b2)};
}

// 16 windows from their top row's 32 values (t0 | t1) and their bottom row's (b0 | b1).
template <typename Best, typename Watch>
inline Out16 step(__m256i t0, __m256i t1, __m256i b0, __m256i b1, Watch& w) {
  const auto [te, to] = split(t0, t1);
  const auto [be, bo] = split(b0, b1);
  Best best(te, w);
  best.update(to, 1, w);
  best.update(be, 2, w);
  best.update(bo, 3, w);
  best.done(w);
  // The window order back to 0..15: 64-bit groups 0 2 1 3 of the values; the switches packed
  // to bytes (each 128-bit lane twice), then 32-bit groups 0 4 1 5.
  const __m256i packed = _mm256_packus_epi16(best.sw, best.sw);
  return {_mm256_permute4x64_epi64(best.raw, 0xD8),
          _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(
              packed, _mm256_setr_epi32(0, 4, 1, 5, 0, 4, 1, 5)))};
}

inline __m256i load(const T* p) { return load_bits(p); }
// The first n (an even 0..16) values at p, zeros past them: n / 2 doublewords by a masked
// load (AMD runs masked loads fast, unlike masked stores).
inline __m256i load_first(const T* p, int64_t n) {
  return _mm256_maskload_epi32(reinterpret_cast<const int*>(p), first_dwords(n / 2));
}

// n (1..8) maxima and switches of o's low half to y / sw: the whole half (8 values, 8
// switches) where `room` (outputs the task writes later, see scatter_row_pair_2x2) covers
// the spill, else exactly n.
inline void put_half(T* y, uint8_t* sw, __m128i v, int64_t s, int64_t n, int64_t room) {
  if (room >= 8 - n) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y), v);
    store_switches8(sw, s);
  } else {
    store_prefix(y, v, 2 * n);
    store_prefix(sw, _mm_cvtsi64_si128(s), n);
  }
}

// n (1..16) windows of o to y / sw, as put_half.
inline void put(T* y, uint8_t* sw, const Out16& o, int64_t n, int64_t room) {
  if (n <= 8) return put_half(y, sw, _mm256_castsi256_si128(o.y), _mm_cvtsi128_si64(o.sw), n, room);
  if (room >= 16 - n) {
    store_bits(y, o.y);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(sw), o.sw);
  } else {
    store_prefix(y, o.y, 2 * n);
    store_prefix(sw, o.sw, n);
  }
}

// One pooled row, NCHW (r0 / r1 its windows' input rows), in steps of 16 windows; the last
// partial step loads whole vectors where the input goes on for them (up to `end`) and
// stores whole ones where `room` allows (see pool_row). Returns what it watched.
template <typename Best, typename Watch>
Watch row16(const T* r0, const T* r1, T* y, uint8_t* sw, int64_t OW, const T* end,
            int64_t room) {
  Watch w;
  int64_t ow = 0;
  for (; ow + 16 <= OW; ow += 16) {
    const T* t = r0 + 2 * ow;
    const T* b = r1 + 2 * ow;
    const Out16 o = step<Best>(load(t), load(t + 16), load(b), load(b + 16), w);
    store_bits(y + ow, o.y);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(sw + ow), o.sw);
  }
  if (ow < OW) {
    const int64_t n = OW - ow;
    const T* t = r0 + 2 * ow;
    const T* b = r1 + 2 * ow;
    __m256i t0, t1, b0, b1;
    const int64_t values = n <= 8 ? 16 : 32;  // a vector or two a row
    if (b + values <= end) {  // (r0 < r1)
      t0 = load(t), b0 = load(b);
      t1 = n <= 8 ? t0 : load(t + 16);
      b1 = n <= 8 ? b0 : load(b + 16);
    } else {
      t0 = load_first(t, std::min<int64_t>(2 * n, 16));
      b0 = load_first(b, std::min<int64_t>(2 * n, 16));
      t1 = n <= 8 ? t0 : load_first(t + 16, 2 * n - 16);
      b1 = n <= 8 ? b0 : load_first(b + 16, 2 * n - 16);
    }
    put(y + ow, sw + ow, step<Best>(t0, t1, b0, b1, w), n, room);
  }
  return w;
}

// Two pooled rows of OW <= 8 windows in one step, NCHW: `top` the first row's top input row,
// the second's 2 W on (the same plane, or planes without an unread last row). Each row's
// half-vector store spills into what is stored after it (put_half).
template <typename Best, typename Watch>
Watch row_pair16(const T* top, int64_t W, T* y, uint8_t* sw, int64_t OW, const T* end,
                 int64_t room) {
  Watch w;
  __m256i t0, t1, b0, b1;
  if (top + 3 * W + 16 <= end) {
    t0 = load(top), b0 = load(top + W), t1 = load(top + 2 * W), b1 = load(top + 3 * W);
  } else {
    t0 = load_first(top, 2 * OW), b0 = load_first(top + W, 2 * OW);
    t1 = load_first(top + 2 * W, 2 * OW), b1 = load_first(top + 3 * W, 2 * OW);
  }
  const Out16 o = step<Best>(t0, t1, b0, b1, w);
  put_half(y, sw, _mm256_castsi256_si128(o.y), _mm_cvtsi128_si64(o.sw), OW, OW + room);
  put_half(y + OW, sw + OW, _mm256_extracti128_si256(o.y, 1), _mm_extract_epi64(o.sw, 1), OW,
           room);
  return w;
}

// A unit of work, NCHW: one pooled row, or two (`pair`, see row_pair16) from r0 on. Whether
// the comparison met a value it cannot order.
template <typename Best, typename Watch>
bool rows_met(bool pair, const T* r0, int64_t W, T* y, uint8_t* sw, int64_t OW, const T* end,
              int64_t room) {
  return pair ? row_pair16<Best, Watch>(r0, W, y, sw, OW, end, room).met()
              : row16<Best, Watch>(r0, r0 + W, y, sw, OW, end, room).met();
}

// bfloat16 NCHW 2x2/2: the pooled rows of a task one (or, 8 or fewer windows long and both
// in the task, two) a step; raw, then keys, then exact (see above).
inline void max_pool_nchw_2x2(const PoolKernelArgs& a) {
  const PoolGeom g = a.g;
  const T* const x = static_cast<const T*>(a.in);
  const T* const x_end = x + a.N * a.C * g.H * g.W;
  T* const y = static_cast<T*>(a.out);
  uint8_t* const sw = a.out_switches;
  at::parallel_for(0, a.N * a.C * g.OH, grain_for(g.OW * 4), [&](int64_t begin, int64_t stop) {
    // Locals, not the captures: the switch stores (uint8_t) may alias anything in memory, so
    // values read through references are reloaded after each of them.
    const int64_t H = g.H, W = g.W, OH = g.OH, OW = g.OW;
    const T* const x0 = x;
    const T* const end = x_end;
    const bool even_height = H == 2 * OH;  // the next plane's rows go on 2 W apart
    T* const y0 = y;
    uint8_t* const sw0 = sw;
    bool raw = true;
    CountedIndex row(begin, OH);  // (plane, oh)
    for (int64_t r = begin; r < stop;) {
      const T* r0 = x0 + row.outer * H * W + 2 * row.inner * W;
      const bool pair = OW <= 8 && r + 1 < stop && (even_height || row.inner + 1 < OH);
      const int64_t count = pair ? 2 : 1;
      const int64_t room = (stop - r - count) * OW;  // outputs the task writes after these
      T* yr = y0 + r * OW;
      uint8_t* swr = sw0 + r * OW;
      bool redo = true;
      if (raw) {
        redo = rows_met<RawBest, RawWatch>(pair, r0, W, yr, swr, OW, end, room);
        raw = !redo;  // the rest of the task on keys
      }
      if (redo && rows_met<KeyBest, KeyWatch>(pair, r0, W, yr, swr, OW, end, room)) {
        avx2_pool::pool_row(r0, r0 + W, yr, swr, OW, end, room + (count - 1) * OW);
        if (pair) avx2_pool::pool_row(r0 + 2 * W, r0 + 3 * W, yr + OW, swr + OW, OW, end, room);
      }
      r += count;
      row.next();
      if (pair) row.next();
    }
  });
}

// NHWC: the first C (a multiple of 16) channels of one output pixel, taps[k] its window's
// four input pixels; two vectors a block, each tap read in address order over it.
template <typename Best, typename Watch>
Watch pixel16(const T* const taps[4], T* y, uint8_t* sw, int64_t C) {
  Watch w;
  int64_t c = 0;
  for (; c + 32 <= C; c += 32) {
    Best lo(load(taps[0] + c), w), hi(load(taps[0] + c + 16), w);
    for (int t = 1; t < 4; ++t) {
      lo.update(load(taps[t] + c), t, w);
      hi.update(load(taps[t] + c + 16), t, w);
    }
    lo.done(w);
    hi.done(w);
    store_bits(y + c, lo.raw);
    store_bits(y + c + 16, hi.raw);
    // bytes: lo's low 8, hi's low 8 | lo's high 8, hi's high 8; 64-bit groups 0 2 1 3.
    store_bits(sw + c, _mm256_permute4x64_epi64(_mm256_packus_epi16(lo.sw, hi.sw), 0xD8));
  }
  if (c < C) {
    Best b(load(taps[0] + c), w);
    for (int t = 1; t < 4; ++t) b.update(load(taps[t] + c), t, w);
    b.done(w);
    store_bits(y + c, b.raw);
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi16(b.sw, b.sw), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(sw + c), _mm256_castsi256_si128(packed));
  }
  return w;
}

// bfloat16 channels_last 2x2/2: pixels on raw patterns until one holds a value they cannot
// order, then (in every thread: a relaxed hint) on keys; a pixel whose keys met a NaN redone
// exactly. Channels past the last 16 by the widened pool_pixel.
inline void max_pool_nhwc_2x2(const PoolKernelArgs& a) {
  const int64_t C = a.C, C16 = C - C % 16;
  T* y = static_cast<T*>(a.out);
  uint8_t* sw = a.out_switches;
  std::atomic<bool> raw{true};
  for_each_pixel_2x2<T>(
      a,
      [&](int64_t i, const T* p00, const T* p10) {
        const T* const taps[4] = {p00, p00 + C, p10, p10 + C};
        T* yi = y + i * C;
        uint8_t* si = sw + i * C;
        if (C16 > 0) {
          bool redo = true;
          if (raw.load(std::memory_order_relaxed)) {
            redo = pixel16<RawBest, RawWatch>(taps, yi, si, C16).met();
            if (redo) raw.store(false, std::memory_order_relaxed);
          }
          if (redo && pixel16<KeyBest, KeyWatch>(taps, yi, si, C16).met()) {
            avx2_pool::pool_pixel(taps, yi, si, C16);
          }
        }
        if (C16 < C) {
          const T* const rest[4] = {taps[0] + C16, taps[1] + C16, taps[2] + C16, taps[3] + C16};
          avx2_pool::pool_pixel(rest, yi + C16, si + C16, C - C16);
        }
      },
      [] {});
}

}  // namespace bf16x16

template <typename T>
void max_pool_nchw_2x2(const PoolKernelArgs& a) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) return bf16x16::max_pool_nchw_2x2(a);
  const int64_t W = a.g.W, OW = a.g.OW;
  T* y = static_cast<T*>(a.out);
  uint8_t* sw = a.out_switches;
  const T* end = static_cast<const T*>(a.in) + a.N * a.C * a.g.H * W;
  for_each_pooled_row_2x2<T>(
      a,
      [&](int64_t r, const T* r0, int64_t rows_after) {
        const int64_t room = rows_after * OW;
        if (OW >= 32) {
          pool_row_two_pass(r0, r0 + W, y + r * OW, sw + r * OW, OW, end, room);
        } else {
          pool_row(r0, r0 + W, y + r * OW, sw + r * OW, OW, end, room);
        }
      },
      [] {});
}

template <typename T>
void max_pool_nhwc_2x2(const PoolKernelArgs& a) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) return bf16x16::max_pool_nhwc_2x2(a);
  const int64_t C = a.C;
  T* y = static_cast<T*>(a.out);
  uint8_t* sw = a.out_switches;
  for_each_pixel_2x2<T>(
      a,
      [&](int64_t i, const T* p00, const T* p10) {
        const T* const taps[4] = {p00, p00 + C, p10, p10 + C};
        pool_pixel(taps, y + i * C, sw + i * C, C);
      },
      [] {});
}

// ----------------------------------------------- gather: NCHW unpool backward, 2x2 stride 2

// The even (kx 0) or odd (kx 1) elements of a0 a1 (16 floats), lane by lane as `odd` says.
inline __m256 pick_column(__m256 a0, __m256 a1, __m256 odd) {
  const __m256 even = _mm256_castpd_ps(
      _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a0, a1, 0x88)), 0xD8));
  const __m256 odds = _mm256_castpd_ps(
      _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a0, a1, 0xDD)), 0xD8));
  return _mm256_blendv_ps(even, odds, odd);
}

// One pooled row of 2x2 stride-2 windows inside the input, float32:
// o[ow] = (switch bit 1 ? r1 : r0)[2 ow + switch bit 0], 8 values a step: each input row's
// 16 elements under them split into even and odd columns, blended on kx, then on ky. Only
// whole steps; the caller does the row's last OW % 8 values. (A partial step by maskload
// and store_prefix took twice the scalar loop's time on 7-wide rows: Xeon, AVX2 build, one
// thread, 4x512x14x14 335 us against 165.) Returns the OR of the switches of the values
// done, and how many.
inline std::pair<uint8_t, int64_t> gather_row_2x2(const float* r0, const float* r1,
                                                  const uint8_t* s, float* o, int64_t OW) {
  const __m256i one = _mm256_set1_epi32(1), two = _mm256_set1_epi32(2);
  __m256i worst = _mm256_setzero_si256();
  int64_t ow = 0;
  for (; ow + 8 <= OW; ow += 8) {
    const float* const a = r0 + 2 * ow;
    const float* const b = r1 + 2 * ow;
    const __m256i k =
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(s + ow)));
    worst = _mm256_or_si256(worst, k);
    const __m256 kx = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(k, one), one));
    const __m256 ky = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(k, two), two));
    const __m256 top = pick_column(_mm256_loadu_ps(a), _mm256_loadu_ps(a + 8), kx);
    const __m256 bottom = pick_column(_mm256_loadu_ps(b), _mm256_loadu_ps(b + 8), kx);
    _mm256_storeu_ps(o + ow, _mm256_blendv_ps(top, bottom, ky));
  }
  __m128i x = _mm_or_si128(_mm256_castsi256_si128(worst), _mm256_extracti128_si256(worst, 1));
  x = _mm_or_si128(x, _mm_srli_si128(x, 8));
  x = _mm_or_si128(x, _mm_srli_si128(x, 4));
  return {static_cast<uint8_t>(_mm_cvtsi128_si32(x)), ow};
}

}  // namespace avx2_pool
