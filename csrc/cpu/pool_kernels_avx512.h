// AVX-512 max pool forward for DeconvNet's windows (2x2, stride 2, inside the input), in
// intrinsics rather than at::vec, for float, bfloat16 and half. Included by
// pool_kernels_impl.h inside its namespace, only in the AVX-512 builds.
//
// Why not at::vec here (measured on the AVX-512 EPYC, 2 cores, batch 4 at DeconvNet's pool
// shapes; the at::vec kernels stay for AVX2 / DEFAULT and for double):
//  * Comparisons stay in mask registers. at::vec's `(v > best) | v.isnan()` builds two
//    all-ones vectors and blendv turns them back into a mask; the window offset is blended
//    as a float vector and converted to uint8 at the end. Here the three "take" masks of a
//    window make the uint8 switches directly (three masked byte moves): about half the
//    instructions, 2x on cache-resident shapes.
//  * 16-bit types are compared as floats (an exact widening); the maximum is one of the
//    inputs, so it goes back without a rounding conversion and NaN payloads survive bit
//    for bit (bfloat16: drop the low half again; half: blend the raw 16-bit patterns).
//    bfloat16 compares 32 lanes at a time as integer keys instead (bf16_key): channels_last
//    pixels (pool_pixel_block_bf16) and bf16_nchw (NCHW rows, short ones run flat). Inputs
//    that are all +0 or greater (after a ReLU) are compared on their raw bits, until a block
//    holds a value that is not (bf16_raw): channels_last pixels and flat NCHW runs.
//  * Channels_last pixels are read a tap at a time over register blocks of up to 128
//    channels (pool_pixel_block), so each row is read in address order (see there). float32
//    and bfloat16 take blocks of 64 and look for NaNs once a pixel (redone exactly if one
//    turns up): OrderedBest, pool_pixel_bf16.
//  * Outputs of calls too large for the caches go out by streaming stores
//    (csrc/cpu/streaming_stores.h).
//  * NCHW rows of 32+ pooled columns are read in two passes, the window's top row for the
//    whole pooled row first, then its bottom row, so each thread reads the input strictly
//    in address order. Alternating between the two rows every 128 bytes (one pass) ran at
//    half the bandwidth at 4x64x224x224 (2.9 ms vs 1.2 ms, standalone, same data); for
//    short rows the one-pass form is faster (the partial maxima stay in registers).
//
// Semantics are PyTorch's, as in csrc/kernels/pool_kernels.h: visit the window in raster
// order and take a value when it is greater than the running max or is NaN.
#pragma once

#if !defined(CPU_CAPABILITY_AVX512)
#error "pool_kernels_avx512.h is for the AVX-512 builds only"
#endif

#include <array>
#include <immintrin.h>

#include <utility>

namespace avx512_pool {

// Masks of the first n lanes (all of them from 16 / 32 on).
inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1);
}
inline __mmask32 first_lanes32(int64_t n) {
  return n >= 32 ? static_cast<__mmask32>(0xFFFFFFFFu) : static_cast<__mmask32>((1u << n) - 1);
}

// f(std::integral_constant<int, 0>{}) ... f(<n - 1>): an unrolled loop whose counter is a
// constant, so small arrays indexed by it stay in registers.
template <typename F, int... I>
inline void unrolled_impl(F&& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}
template <int N, typename F>
inline void unrolled(F&& f) {
  unrolled_impl(f, std::make_integer_sequence<int, N>{});
}

// Streams half `half` (0: low, 1: high) of v to p, 16-byte aligned.
inline void stream_half_of(void* p, __m256i v, int half) {
  _mm_stream_si128(reinterpret_cast<__m128i*>(p),
                   half == 0 ? _mm256_castsi256_si128(v) : _mm256_extracti128_si256(v, 1));
}

// 16 lanes of T: Raw holds the values as stored, to_float widens them for comparisons.
template <typename T>
struct Lanes16;

template <>
struct Lanes16<float> {
  using Raw = __m512;
  static Raw load(const float* p, __mmask16 m) {
    return _mm512_maskz_loadu_ps(m, p);
  }
  static void store(float* p, __mmask16 m, Raw v) {
    _mm512_mask_storeu_ps(p, m, v);
  }
  static void stream(float* p, Raw v) {  // p 64-byte aligned
    _mm512_stream_ps(p, v);
  }
  static void stream_half(float* p, Raw v, int half) {  // p 32-byte aligned
    _mm256_stream_ps(p, half == 0 ? _mm512_castps512_ps256(v) : _mm512_extractf32x8_ps(v, 1));
  }
  static __m512 to_float(Raw v) {
    return v;
  }
  static Raw select(Raw keep, __mmask16 take, Raw v) {
    return _mm512_mask_mov_ps(keep, take, v);
  }
  // 2n consecutive values (n <= 16) -> (even, odd) columns.
  static std::pair<Raw, Raw> load_pairs(const float* p, int64_t n) {
    const __mmask16 lo = first_lanes(2 * n), hi = first_lanes(std::max<int64_t>(0, 2 * n - 16));
    const __m512 a = _mm512_maskz_loadu_ps(lo, p), b = _mm512_maskz_loadu_ps(hi, p + 16);
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    return {_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b)};
  }
};

// half: compared as floats, kept and stored as the raw 16-bit patterns (converting back
// would quieten signalling NaNs).
template <>
struct Lanes16<c10::Half> {
  using Raw = __m256i;
  static Raw load(const c10::Half* p, __mmask16 m) {
    return _mm256_maskz_loadu_epi16(m, p);
  }
  static void store(c10::Half* p, __mmask16 m, Raw v) {
    _mm256_mask_storeu_epi16(p, m, v);
  }
  static void stream(c10::Half* p, Raw v) {  // p 32-byte aligned
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), v);
  }
  static void stream_half(c10::Half* p, Raw v, int half) {  // p 16-byte aligned
    stream_half_of(p, v, half);
  }
  static Raw select(Raw keep, __mmask16 take, Raw v) {
    return _mm256_mask_mov_epi16(keep, take, v);
  }
  // One load of 2n 16-bit values; each 32-bit lane holds a (even, odd) pair.
  static std::pair<Raw, Raw> load_pairs(const c10::Half* p, int64_t n) {
    const __mmask32 m = first_lanes32(2 * n);
    const __m512i both = _mm512_maskz_loadu_epi16(m, p);
    return {_mm512_cvtepi32_epi16(both), _mm512_cvtepi32_epi16(_mm512_srli_epi32(both, 16))};
  }
  static __m512 to_float(Raw v) {
    return _mm512_cvtph_ps(v);
  }
};

// bfloat16 is the top half of a float, so its lanes are held as floats (exact), and
// narrowed back by dropping the low half (exact too: the values came from bfloat16). The
// pairs of an NCHW row then need no shuffle at all: a shift gives the even columns as
// floats, a mask the odd ones.
template <>
struct Lanes16<c10::BFloat16> {
  using Raw = __m512;
  static Raw load(const c10::BFloat16* p, __mmask16 m) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
  }
  static __m256i narrow(Raw v) {
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(v), 16));
  }
  static void store(c10::BFloat16* p, __mmask16 m, Raw v) {
    _mm256_mask_storeu_epi16(p, m, narrow(v));
  }
  static void stream(c10::BFloat16* p, Raw v) {  // p 32-byte aligned
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), narrow(v));
  }
  static void stream_half(c10::BFloat16* p, Raw v, int half) {  // p 16-byte aligned
    stream_half_of(p, narrow(v), half);
  }
  static __m512 to_float(Raw v) {
    return v;
  }
  static Raw select(Raw keep, __mmask16 take, Raw v) {
    return _mm512_mask_mov_ps(keep, take, v);
  }
  static std::pair<Raw, Raw> load_pairs(const c10::BFloat16* p, int64_t n) {
    const __mmask32 m = first_lanes32(2 * n);
    const __m512i both = _mm512_maskz_loadu_epi16(m, p);
    return {_mm512_castsi512_ps(_mm512_slli_epi32(both, 16)),
            _mm512_castsi512_ps(_mm512_and_si512(both, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))))};
  }
};

inline bool aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

template <typename T>
inline constexpr bool kSupported = std::is_same_v<T, float> ||
    std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>;


// The running max of one window position over 16 lanes, in both forms.
template <typename T>
struct Best {
  using L = Lanes16<T>;
  typename L::Raw raw;
  __m512 f;

  Best() = default;
  explicit Best(typename L::Raw first) : raw(first), f(L::to_float(first)) {}

  // PyTorch's rule: take v when v > best or v is NaN. Returns the lanes that took v.
  __mmask16 update(typename L::Raw v) {
    const __m512 vf = L::to_float(v);
    const __mmask16 take =
        _mm512_cmp_ps_mask(vf, f, _CMP_GT_OQ) | _mm512_cmp_ps_mask(vf, vf, _CMP_UNORD_Q);
    raw = L::select(raw, take, v);
    f = _mm512_mask_mov_ps(f, take, vf);
    return take;
  }
};

// float32's running max without NaN handling: a take is one ordered compare, and a running
// sum of the taps (NaN if any tap is; also on inf - inf, harmlessly) tells the caller to
// redo the pixel with Best. Two instructions a tap fewer than PyTorch's rule in full (an
// unordered compare and a mask or, for one add). Used by the channels_last forward in
// blocks of 64 channels: blocks of 128 ran out of registers with the sums (tried and
// reverted before). 2 threads, us, Best in 128-channel blocks -> this: 4x128x112x112
// 505-588 -> 457-522, 4x256x56x56 192-214 -> 136-146, 4x512x28x28 84-88 -> 65-67,
// 4x512x14x14 30-31 -> 25-26.
struct OrderedBest {
  __m512 raw, sum;
  OrderedBest() = default;
  explicit OrderedBest(__m512 first) : raw(first), sum(first) {}
  __mmask16 update(__m512 v) {
    const __mmask16 take = _mm512_cmp_ps_mask(v, raw, _CMP_GT_OQ);
    raw = _mm512_mask_mov_ps(raw, take, v);
    sum = _mm512_add_ps(sum, v);
    return take;
  }
};

// Window offsets 0..3 from the lanes that took taps 1, 2 and 3 (a later take wins).
inline __m128i switches_from(__mmask16 took1, __mmask16 took2, __mmask16 took3) {
  __m128i k = _mm_maskz_mov_epi8(took1, _mm_set1_epi8(1));
  k = _mm_mask_mov_epi8(k, took2, _mm_set1_epi8(2));
  return _mm_mask_mov_epi8(k, took3, _mm_set1_epi8(3));
}

// Stores that may stream (see csrc/cpu/streaming_stores.h). The kernels ask for streaming
// only when every store of theirs is a whole vector at an address aligned to its size, or
// a whole vector or its first half at an address aligned to half a vector. Rows of 8k (not
// 16k) pooled columns (56 at 112x112) start half way into a vector every other row and end
// in a half vector: the halves of a line then come from consecutive stores, and
// write-combining still sends the line to memory whole. (A line written partly by streaming
// and partly by normal stores is slower than no streaming at all: 4x64x224x224 bfloat16, 2.0
// ms against 0.95.) The tests here keep any other store on the masked store all the same;
// `stream` never changes what is written, only how.
inline bool whole_or_first_half(__mmask16 m) { return m == 0xFFFF || m == 0xFF; }
inline bool whole_or_first_half(__mmask32 m) { return m == 0xFFFFFFFFu || m == 0xFFFFu; }

template <typename T>
inline void put(T* p, __mmask16 m, typename Lanes16<T>::Raw v, bool stream) {
  if (stream && m == 0xFFFF && aligned(p, 16 * sizeof(T))) {
    Lanes16<T>::stream(p, v);
  } else if (stream && whole_or_first_half(m) && aligned(p, 8 * sizeof(T))) {
    Lanes16<T>::stream_half(p, v, 0);
    if (m == 0xFFFF) Lanes16<T>::stream_half(p + 8, v, 1);
  } else {
    Lanes16<T>::store(p, m, v);
  }
}

inline void put_switches(uint8_t* p, __mmask16 m, __m128i k, bool stream) {
  if (stream && m == 0xFFFF && aligned(p, 16)) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(p), k);
  } else if (stream && whole_or_first_half(m) && aligned(p, 8)) {
    _mm_stream_si64(reinterpret_cast<long long*>(p), _mm_cvtsi128_si64(k));
    if (m == 0xFFFF) _mm_stream_si64(reinterpret_cast<long long*>(p + 8), _mm_extract_epi64(k, 1));
  } else {
    _mm_mask_storeu_epi8(p, m, k);
  }
}

// Streaming stores are weakly ordered: a task that may have issued some fences them before
// it ends, as other threads read its output next.
inline void end_streaming(bool stream) {
  if (stream) _mm_sfence();
}

// One pooled row, NCHW: r0 / r1 are the window's two input rows.
template <typename T>
inline void pool_row_one_pass(const T* r0, const T* r1, T* y, uint8_t* sw, int64_t OW,
                              bool stream) {
  using L = Lanes16<T>;
  for (int64_t ow = 0; ow < OW; ow += 16) {
    const int64_t n = std::min<int64_t>(16, OW - ow);
    const auto [a0, a1] = L::load_pairs(r0 + 2 * ow, n);
    const auto [b0, b1] = L::load_pairs(r1 + 2 * ow, n);
    Best<T> best(a0);
    const __mmask16 t1 = best.update(a1), t2 = best.update(b0), t3 = best.update(b1);
    const __mmask16 m = first_lanes(n);
    put<T>(y + ow, m, best.raw, stream);
    put_switches(sw + ow, m, switches_from(t1, t2, t3), stream);
  }
}

template <typename T>
inline void pool_row_two_pass(const T* r0, const T* r1, T* y, uint8_t* sw, int64_t OW,
                              bool stream) {
  using L = Lanes16<T>;
  constexpr int64_t kChunk = 512;  // pooled columns per pass: 2 KiB of partial maxima
  alignas(64) typename L::Raw top[kChunk / 16];
  __mmask16 took1[kChunk / 16];
  for (int64_t c0 = 0; c0 < OW; c0 += kChunk) {
    const int64_t c1 = std::min(OW, c0 + kChunk);
    for (int64_t ow = c0, j = 0; ow < c1; ow += 16, ++j) {
      const auto [a0, a1] = L::load_pairs(r0 + 2 * ow, std::min<int64_t>(16, c1 - ow));
      Best<T> best(a0);
      took1[j] = best.update(a1);
      top[j] = best.raw;
    }
    for (int64_t ow = c0, j = 0; ow < c1; ow += 16, ++j) {
      const int64_t n = std::min<int64_t>(16, c1 - ow);
      const auto [b0, b1] = L::load_pairs(r1 + 2 * ow, n);
      Best<T> best(top[j]);
      const __mmask16 t2 = best.update(b0), t3 = best.update(b1);
      const __mmask16 m = first_lanes(n);
      put<T>(y + ow, m, best.raw, stream);
      put_switches(sw + ow, m, switches_from(took1[j], t2, t3), stream);
    }
  }
}

// NCHW maps with H == 2 OH seen as one run of pooled rows: pooled row r (counted over all
// planes) reads input rows 2 r and 2 r + 1, which start at 2 W r and 2 W r + W, so output
// o = r OW + c reads x[2 W r + 2 c + {0, 1}] and the same plus W. A step then takes the next
// kLanes outputs (a vector's worth: 32 bfloat16, 16 float) whatever rows they fall in, from
// two vectors of each input row. Every step is full (a step a row left 4 of 32 lanes idle
// at 28 columns, and 1 row a step paid ~100 scalar instructions of row bookkeeping for ~45
// vector ones), and every store is a whole vector at an aligned address, so it may stream.
// Which input lanes come from which row repeats every lcm(kLanes, OW) outputs, a period of
// OW / gcd(OW, kLanes) steps (7 at all of DeconvNet's maps): a call plans the masked loads
// of one period (a few hundred bytes) and replays them.
template <int kLanes>
class FlatRows {
 public:
  static constexpr int64_t kMaxSteps = 64;  // every OW < 64
  static constexpr int64_t kWindows = kLanes / 2;  // per vector

  // One masked load of a vector: lanes `mask` from `offset` elements past the period's start.
  struct Segment {
    __mmask32 mask;
    int64_t offset;
  };

  FlatRows(int64_t OW, int64_t W)
      : steps_(OW / std::gcd<int64_t>(OW, kLanes)),
        rows_(kLanes * steps_ / OW),
        // A vector's windows touch at most this many rows: a partial first one, whole ones,
        // a partial last one. 32 lanes: 2 from OW = 15 on, 3 for OW = 8..14, 4 for 5..7.
        segments_(static_cast<int>((kWindows - 1 + OW - 1) / OW + 1)),
        period_input_(2 * W * rows_),
        plan_(2 * steps_ * segments_, Segment{0, 0}) {
    TORCH_INTERNAL_ASSERT(steps_ <= kMaxSteps && OW < 64);
    // Lane l of vector v of the period: window w = kWindows v + l / 2, in pooled row w / OW,
    // at input element 2 W row + 2 (w % OW) + l % 2. A segment is a run of lanes from one
    // row; its load starts at (that element - l), the same for every lane of it. Unused
    // segments keep mask 0 (a load that reads nothing).
    for (int64_t v = 0; v < 2 * steps_; ++v) {
      Segment* seg = &plan_[v * segments_] - 1;
      int64_t row = -1;
      for (int64_t l = 0; l < kLanes; ++l) {
        const int64_t w = kWindows * v + l / 2;
        if (w / OW != row) {
          row = w / OW;
          *++seg = {0, 2 * W * row + 2 * (w % OW) + l % 2 - l};
        }
        seg->mask |= __mmask32{1} << l;
      }
    }
  }

  int64_t steps() const { return steps_; }              // of kLanes outputs, per period
  int64_t rows() const { return rows_; }                // pooled rows per period
  int64_t outputs() const { return kLanes * steps_; }   // per period
  int64_t period_input() const { return period_input_; }  // input elements per period
  int segments() const { return segments_; }            // per vector
  const Segment* plan() const { return plan_.data(); }  // [step][vector][segment]

 private:
  int64_t steps_, rows_;
  int segments_;
  int64_t period_input_;
  std::vector<Segment> plan_;
};

// Runs the `rows` pooled rows of a flat map: periods(p0, p1) for whole periods [p0, p1) in
// parallel, then leftover(r) for the rows r left over, a row at a time (the last task item).
template <int kLanes, typename Periods, typename Leftover>
void run_flat(const FlatRows<kLanes>& f, int64_t rows, Periods&& periods, Leftover&& leftover) {
  const int64_t whole = rows / f.rows();
  at::parallel_for(0, whole + 1, grain_for(f.outputs() * 4), [&](int64_t begin, int64_t end) {
    periods(begin, std::min(end, whole));
    if (end > whole) {
      for (int64_t r = whole * f.rows(); r < rows; ++r) leftover(r);
    }
  });
}

// Outputs [o, o + n) of a flat run, exactly, row piece by row piece (bfloat16: a period that
// met a NaN; float: the rows after the last whole period).
template <typename T>
__attribute__((noinline)) void pool_flat_pieces(const T* x, T* y, uint8_t* sw, int64_t o,
                                                int64_t n, int64_t OW, int64_t W) {
  while (n > 0) {
    const int64_t r = o / OW, c = o % OW, k = std::min(n, OW - c);
    const T* r0 = x + 2 * W * r + 2 * c;
    pool_row_one_pass(r0, r0 + W, y + o, sw + o, k, false);
    o += k;
    n -= k;
  }
}

// float32 NCHW maps of fewer than 32 pooled columns and even height, run flat: 16 outputs a
// step, the windows' two columns split by two permutes as in Lanes16<float>::load_pairs,
// PyTorch's rule in full (Best<float>), so no redo. A row a step (pool_row_one_pass) left
// lanes idle: 7 of 16 used at 14x14, 14 at 28x28, 28 of 32 at 56x56.
namespace f32_nchw {

using Flat = FlatRows<16>;

// A vector of the top rows and the same of the bottom rows, from its k segments (K: k known
// at compile time; 0: not).
template <int K>
inline void load_flat(const Flat::Segment* s, int k, const float* top, const float* bottom,
                      __m512& t, __m512& b) {
  const auto m0 = static_cast<__mmask16>(s[0].mask);
  t = _mm512_maskz_loadu_ps(m0, top + s[0].offset);
  b = _mm512_maskz_loadu_ps(m0, bottom + s[0].offset);
  const int n = K > 0 ? K : k;
  for (int i = 1; i < n; ++i) {
    const auto m = static_cast<__mmask16>(s[i].mask);
    t = _mm512_mask_loadu_ps(t, m, top + s[i].offset);
    b = _mm512_mask_loadu_ps(b, m, bottom + s[i].offset);
  }
}

// (even, odd) columns of the 32 values lo | hi.
inline std::pair<__m512, __m512> split(__m512 lo, __m512 hi) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  return {_mm512_permutex2var_ps(lo, even, hi), _mm512_permutex2var_ps(lo, odd, hi)};
}

// Periods [p0, p1) of a flat run. Every store is whole; kStream: aligned too, streamed.
template <int K, bool kStream>
void pool_flat_periods(const Flat& f, const float* x, float* y, uint8_t* sw, int64_t W,
                       int64_t p0, int64_t p1) {
  const Flat::Segment* const plan = f.plan();
  const int k = f.segments();
  const int64_t P = f.outputs(), period_input = f.period_input();
  for (int64_t p = p0; p < p1; ++p) {
    const float* top = x + p * period_input;
    const float* bottom = top + W;
    const Flat::Segment* s = plan;
    for (int64_t o = p * P, end = o + P; o < end; o += 16, s += 2 * k) {
      __m512 t0, b0, t1, b1;
      load_flat<K>(s, k, top, bottom, t0, b0);
      load_flat<K>(s + k, k, top, bottom, t1, b1);
      const auto [te, to] = split(t0, t1);
      const auto [be, bo] = split(b0, b1);
      Best<float> best(te);
      const __mmask16 took1 = best.update(to), took2 = best.update(be), took3 = best.update(bo);
      const __m128i switches = switches_from(took1, took2, took3);
      if constexpr (kStream) {
        _mm512_stream_ps(y + o, best.raw);
        _mm_stream_si128(reinterpret_cast<__m128i*>(sw + o), switches);
      } else {
        _mm512_storeu_ps(y + o, best.raw);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(sw + o), switches);
      }
    }
  }
}

template <bool kStream>
void pool_flat_periods(const Flat& f, const float* x, float* y, uint8_t* sw, int64_t W,
                       int64_t p0, int64_t p1) {
  switch (f.segments()) {
    case 2: return pool_flat_periods<2, kStream>(f, x, y, sw, W, p0, p1);  // OW >= 7
    case 3: return pool_flat_periods<3, kStream>(f, x, y, sw, W, p0, p1);  // 4..6
    default: return pool_flat_periods<0, kStream>(f, x, y, sw, W, p0, p1);
  }
}

// `rows` pooled rows (all planes), H == 2 OH and OW < 32: whole periods, then the rows left
// over.
inline void pool_flat(const float* x, float* y, uint8_t* sw, int64_t rows, const PoolGeom& g,
                      bool stream_wanted) {
  const Flat f(g.OW, g.W);
  const bool stream = stream_wanted && aligned(y, 64) && aligned(sw, 16);
  const int64_t OW = g.OW, W = g.W;
  run_flat(
      f, rows,
      [&](int64_t p0, int64_t p1) {
        if (stream) {
          pool_flat_periods<true>(f, x, y, sw, W, p0, p1);
          end_streaming(true);
        } else {
          pool_flat_periods<false>(f, x, y, sw, W, p0, p1);
        }
      },
      [&](int64_t r) { pool_flat_pieces(x, y, sw, r * OW, OW, OW, W); });
}

}  // namespace f32_nchw

namespace bf16_nchw {
inline void max_pool_nchw_2x2(const PoolKernelArgs& a);
}

template <typename T>
void max_pool_nchw_2x2(const PoolKernelArgs& a) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) return bf16_nchw::max_pool_nchw_2x2(a);
  const PoolGeom g = a.g;
  const T* x = static_cast<const T*>(a.in);
  T* y = static_cast<T*>(a.out);
  uint8_t* sw = a.out_switches;
  const int64_t rows = a.N * a.C * g.OH;
  if constexpr (std::is_same_v<T, float>) {
    if (g.OW < 32 && g.H == 2 * g.OH) {
      return f32_nchw::pool_flat(x, y, sw, rows, g, a.stream_outputs);
    }
  }
  // Streamed only if every store is a whole vector or half of one, aligned to its size
  // (rows of 8k pooled columns; see put).
  const bool stream = a.stream_outputs && g.OW % 8 == 0 && aligned(y, 64) && aligned(sw, 16);
  for_each_pooled_row_2x2<T>(
      a,
      [&](int64_t r, const T* r0, int64_t) {
        if (g.OW >= 32) {
          pool_row_two_pass(r0, r0 + g.W, y + r * g.OW, sw + r * g.OW, g.OW, stream);
        } else {
          pool_row_one_pass(r0, r0 + g.W, y + r * g.OW, sw + r * g.OW, g.OW, stream);
        }
      },
      [&] { end_streaming(stream); });
}

// kB x 16 channels of one output pixel, kept in registers while the four taps are read
// one after the other: each tap's kB x 64 bytes (float) in address order. Reading the four
// taps of one 16-channel group before the next group instead (a pattern jumping between two
// pixels and two rows every 64 bytes) ran at half the speed on inputs that stream from DRAM:
// 4x128x112x112 float32 took 0.87-0.95 ms that way and 0.41-0.53 ms read per tap.
//
// Templated on the running maximum: Best<T> (PyTorch's rule in full) or, for float32,
// OrderedBest, which folds its NaN detector into *nan_sum for the caller to check.
template <typename T, int kB, typename B = Best<T>>
inline void pool_pixel_block(const T* const tap[4], T* y, uint8_t* sw, bool stream,
                             __m512* nan_sum = nullptr) {
  using L = Lanes16<T>;
  constexpr __mmask16 kAll = 0xFFFF;
  B best[kB];
  __m128i k[kB];
  unrolled<kB>([&](auto b) {
    best[b] = B(L::load(tap[0] + 16 * b, kAll));
    k[b] = _mm_setzero_si128();
  });
  unrolled<3>([&](auto t) {
    const __m128i offset = _mm_set1_epi8(static_cast<char>(t + 1));
    unrolled<kB>([&](auto b) {
      k[b] = _mm_mask_mov_epi8(k[b], best[b].update(L::load(tap[t + 1] + 16 * b, kAll)), offset);
    });
  });
  unrolled<kB>([&](auto b) {
    if constexpr (std::is_same_v<B, OrderedBest>) *nan_sum = _mm512_add_ps(*nan_sum, best[b].sum);
    put<T>(y + 16 * b, kAll, best[b].raw, stream);
    put_switches(sw + 16 * b, kAll, k[b], stream);
  });
}

// bfloat16 compared as 16-bit integer keys, 32 lanes per instruction, where the float
// kernels widen 16 values to float (a third fewer instructions per value). Used by the
// channels_last forward (pool_pixel_block_bf16) and the NCHW one (bf16_nchw).
//  * key = the int16 whose signed order is the float order for numbers: -mag for negative
//    values, so -0 and +0 tie as floats do (2 instructions).
//  * PyTorch takes v when v > max or v is NaN: a NaN wins over any number and over an
//    earlier NaN. On these keys a positive NaN's lies above +inf's, so it wins over numbers
//    but not over an earlier NaN with an equal or larger key; a negative NaN's lies below
//    -inf's, so it loses. A block of windows that meets a NaN (a window maximum above
//    +inf's key, or an input whose raw pattern is a negative NaN's: the running unsigned
//    maximum of the raw inputs tells, one instruction per tap) is redone by exact code.
//  * Channels_last handled NaNs lane by lane before (a 5-instruction key that kept a NaN
//    mask, Bf16NanKey, now the exact redo). Keys plus redo, ms before -> after, 2 threads:
//    4x128x112x112 0.21 -> 0.17, 4x256x56x56 0.11 -> 0.09, 4x512x28x28 0.065 -> 0.056,
//    4x512x14x14 0.024 -> 0.022.
namespace bf16_key {

// sign ? -(b & 0x7FFF) : b, 32 lanes: for a negative b, 0x8000 - b is -(b - 0x8000) modulo
// 2^16, so a masked subtract gives it (2 instructions; an arithmetic shift, a ternary logic
// and a subtract before).
inline __m512i key(__m512i b) {
  return _mm512_mask_sub_epi16(b, _mm512_movepi16_mask(b),
                               _mm512_set1_epi16(static_cast<short>(0x8000)), b);
}

// Whether inputs whose raw patterns have this unsigned maximum, and windows with these
// maximum keys, held a NaN.
inline bool met_nan(__m512i raw_umax, __m512i best_key) {
  return (_mm512_cmpgt_epu16_mask(raw_umax, _mm512_set1_epi16(static_cast<short>(0xFF80))) |
          _mm512_cmpgt_epi16_mask(best_key, _mm512_set1_epi16(0x7F80))) != 0;
}

// What met_nan needs, gathered over several blocks of windows: the unsigned max of their raw
// inputs and the max of their window keys.
struct NanWatch {
  __m512i umax = _mm512_setzero_si512();
  __m512i kmax = _mm512_set1_epi16(static_cast<short>(0x8000));
  void add(__m512i raw_umax, __m512i best_key) {
    umax = _mm512_max_epu16(umax, raw_umax);
    kmax = _mm512_max_epi16(kmax, best_key);
  }
  bool met() const { return met_nan(umax, kmax); }
};

// The running max of 32 windows: raw patterns and keys. The maximum key is a vpmaxsw, which
// does not wait for the compare. (Before, the 3-instruction key and a masked move for the
// maximum; 2 threads, ms, before -> after: NCHW 4x256x56x56 0.121 -> 0.116, 4x128x112x112
// 0.237 -> 0.226, 4x512x28x28 0.077 -> 0.074; channels_last: see pool_pixel_block_bf16.)
struct Best {
  __m512i raw, k;
  Best() = default;
  explicit Best(__m512i first) : raw(first), k(key(first)) {}
  Best(__m512i raw_, __m512i key_) : raw(raw_), k(key_) {}
  // Take v where its key is greater (no NaN in sight). Returns the lanes that took v.
  __mmask32 update(__m512i v) {
    const __m512i kv = key(v);
    const __mmask32 take = _mm512_cmpgt_epi16_mask(kv, k);
    k = _mm512_max_epi16(k, kv);
    raw = _mm512_mask_mov_epi16(raw, take, v);
    return take;
  }
};

}  // namespace bf16_key

// The exact per-lane handling of NaNs, for blocks that met one: take v where its key is
// greater or it is a NaN (PyTorch's rule); a NaN keeps its magnitude as key, above any
// number's, so once the maximum no number beats it.
struct Bf16NanKey {
  __m512i raw, key;

  static __m512i key_of(__m512i b, __mmask32& nan) {
    const __m512i mag = _mm512_and_si512(b, _mm512_set1_epi16(0x7FFF));
    nan = _mm512_cmpgt_epi16_mask(mag, _mm512_set1_epi16(0x7F80));
    const __mmask32 negative = _kandn_mask32(nan, _mm512_movepi16_mask(b));
    return _mm512_mask_sub_epi16(mag, negative, _mm512_setzero_si512(), mag);
  }

  Bf16NanKey() = default;
  explicit Bf16NanKey(__m512i first) : raw(first) {
    __mmask32 nan;
    key = key_of(first, nan);
  }

  __mmask32 update(__m512i v) {
    __mmask32 nan;
    const __m512i k = key_of(v, nan);
    const __mmask32 take = _mm512_cmpgt_epi16_mask(k, key) | nan;
    key = _mm512_mask_mov_epi16(key, take, k);
    raw = _mm512_mask_mov_epi16(raw, take, v);
    return take;
  }
};

// bfloat16 inputs that are all +0 or greater and none NaN, as every pooled input of DeconvNet
// is (a ReLU comes before each pool): their raw 16-bit patterns, compared as unsigned
// integers, order as the values do and are equal only when the values are, so a tap is a
// compare and a max (PyTorch's rule: take v only when it is greater), where a key costs two
// more instructions and its select one. Whether a block of windows held only such inputs is
// the unsigned maximum of its window maxima: at most +inf's pattern 0x7F80 (a -0 is 0x8000,
// any other negative value is above that, and so is a NaN). A block that held others is
// redone with keys (bf16_key), and the call goes on with keys from there: randn-like data
// pays one block twice per thread. Kernel time per image of relu(randn) (the slope from
// N = 2 to 8, one thread, EPYC Zen 4), us, keys -> raw: NCHW 512x14x14 9.4 -> 9.0, 512x28x28
// 37.9 -> 33.9, 256x56x56 ~85 -> ~70; channels_last 14x14 5.2 -> 4.5, 28x28 32.8 -> 28.6.
// randn inputs: the same as before within the noise. Less than the 5 -> 2 instructions a
// tap suggest: the loads (NCHW: masked segment loads) and stores set much of the time.
namespace bf16_raw {

struct Best {
  __m512i raw;
  Best() = default;
  explicit Best(__m512i first) : raw(first) {}
  // Take v where it is greater. Returns the lanes that took v.
  __mmask32 update(__m512i v) {
    const __mmask32 take = _mm512_cmpgt_epu16_mask(v, raw);
    raw = _mm512_max_epu16(raw, v);
    return take;
  }
};

struct Watch {
  __m512i umax = _mm512_setzero_si512();
  void add(const Best& b) { umax = _mm512_max_epu16(umax, b.raw); }
  // Some window held a negative value, a -0 or a NaN: its block is to be redone with keys.
  bool met() const {
    return _mm512_cmpgt_epu16_mask(umax, _mm512_set1_epi16(static_cast<short>(0x7F80))) != 0;
  }
};

}  // namespace bf16_raw

// As put / put_switches, 32 lanes.
inline void put_bf16x32(void* p, __mmask32 m, __m512i v, bool stream) {
  if (stream && m == 0xFFFFFFFFu && aligned(p, 64)) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(p), v);
  } else if (stream && whole_or_first_half(m) && aligned(p, 32)) {
    auto* q = reinterpret_cast<__m256i*>(p);
    _mm256_stream_si256(q, _mm512_castsi512_si256(v));
    if (m == 0xFFFFFFFFu) _mm256_stream_si256(q + 1, _mm512_extracti64x4_epi64(v, 1));
  } else {
    _mm512_mask_storeu_epi16(p, m, v);
  }
}

inline void put_switches32(uint8_t* p, __mmask32 m, __m256i k, bool stream) {
  if (stream && m == 0xFFFFFFFFu && aligned(p, 32)) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), k);
  } else if (stream && whole_or_first_half(m) && aligned(p, 16)) {
    stream_half_of(p, k, 0);
    if (m == 0xFFFFFFFFu) stream_half_of(p + 16, k, 1);
  } else {
    _mm256_mask_storeu_epi8(p, m, k);
  }
}

// bfloat16, NCHW: 32 pooled columns per step, compared as bf16_key keys, where
// pool_row_one_pass widens 16 to float. A step's 64 input values per row are split into
// even and odd columns by two permutes; each tap then costs a key (2 instructions), a
// compare, a max and a select, about what the widened form spends on 16 lanes. A step that
// meets a NaN is redone by pool_row_one_pass.
//  * Rows shorter than 64 pooled columns, in maps of even height, run flat (FlatRows): a
//    step takes the next 32 outputs whatever rows they fall in. One row a step left lanes
//    idle and the per-row work set the time: 4x512x14x14, 2 threads: 0.063 ms widened,
//    0.113 ms a row a step in keys, 0.036 ms with whole rows packed into a step, 0.030 ms
//    flat (float32: 0.070 ms).
//  * Of those, maps of up to 32 and of 48 to 63 pooled columns (14x14 to 112x112) run each
//    period in steps of whole pooled rows after all, unless streamed (pool_row_steps): with
//    the loads planned once a call and NaNs looked for once a period, their fewer loads win.
//  * Rows of 64+ pooled columns are read in two passes, as in pool_row_two_pass.
namespace bf16_nchw {

using T = c10::BFloat16;

using bf16_key::Best;
using bf16_key::met_nan;
using bf16_key::NanWatch;
using Flat = FlatRows<32>;

// (even, odd) columns of the 64 values lo | hi.
inline std::pair<__m512i, __m512i> split(__m512i lo, __m512i hi) {
  const __m512i even = _mm512_set_epi16(62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36,
                                        34, 32, 30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6,
                                        4, 2, 0);
  const __m512i odd = _mm512_add_epi16(even, _mm512_set1_epi16(1));
  return {_mm512_permutex2var_epi16(lo, even, hi), _mm512_permutex2var_epi16(lo, odd, hi)};
}

// The input lanes of n <= 32 windows along a row: 2n values as lanes 0..63 of two vectors,
// zeros past. The masks are made once for both rows of a step (making them per row cost
// 5-7% at 56x56 and 112x112).
struct RowLanes {
  __mmask32 lo, hi;
  explicit RowLanes(int64_t n)
      : lo(first_lanes32(2 * n)), hi(first_lanes32(std::max<int64_t>(0, 2 * n - 32))) {}
  std::pair<__m512i, __m512i> load(const T* p) const {
    return {_mm512_maskz_loadu_epi16(lo, p), _mm512_maskz_loadu_epi16(hi, p + 32)};
  }
};

inline __m256i switches32_from(__mmask32 took1, __mmask32 took2, __mmask32 took3) {
  __m256i k = _mm256_maskz_mov_epi8(took1, _mm256_set1_epi8(1));
  k = _mm256_mask_mov_epi8(k, took2, _mm256_set1_epi8(2));
  return _mm256_mask_mov_epi8(k, took3, _mm256_set1_epi8(3));
}

// 32 windows from the 64 values of their top row (t0 | t1) and bottom row (b0 | b1).
// The NaN check is the caller's: step folds what it needs into `watch`.
struct Step {
  __m512i raw;
  __m256i switches;
};
// 32 windows from their four taps (top-left, top-right, bottom-left, bottom-right).
inline Step step_taps(__m512i te, __m512i to, __m512i be, __m512i bo, NanWatch& watch) {
  Best best(te);
  const __mmask32 took1 = best.update(to), took2 = best.update(be), took3 = best.update(bo);
  watch.add(_mm512_max_epu16(_mm512_max_epu16(te, to), _mm512_max_epu16(be, bo)), best.k);
  return {best.raw, switches32_from(took1, took2, took3)};
}
// The same on raw patterns (bf16_raw): inputs +0 or greater, no NaN, or `watch` says not.
inline Step step_taps(__m512i te, __m512i to, __m512i be, __m512i bo, bf16_raw::Watch& watch) {
  bf16_raw::Best best(te);
  const __mmask32 took1 = best.update(to), took2 = best.update(be), took3 = best.update(bo);
  watch.add(best);
  return {best.raw, switches32_from(took1, took2, took3)};
}
template <typename Watch>
inline Step step(__m512i t0, __m512i t1, __m512i b0, __m512i b1, Watch& watch) {
  const auto [te, to] = split(t0, t1);
  const auto [be, bo] = split(b0, b1);
  return step_taps(te, to, be, bo, watch);
}

inline void put(T* y, uint8_t* sw, __mmask32 m, const Step& s, bool stream) {
  put_bf16x32(y, m, s.raw, stream);
  put_switches32(sw, m, s.switches, stream);
}

// One pooled row: r0 / r1 are the window's two input rows.
inline void pool_row(const T* r0, const T* r1, T* y, uint8_t* sw, int64_t OW, bool stream) {
  for (int64_t ow = 0; ow < OW; ow += 32) {
    const int64_t n = std::min<int64_t>(32, OW - ow);
    const RowLanes lanes(n);
    const auto [t0, t1] = lanes.load(r0 + 2 * ow);
    const auto [b0, b1] = lanes.load(r1 + 2 * ow);
    NanWatch watch;
    const Step s = step(t0, t1, b0, b1, watch);
    if (watch.met()) {
      pool_row_one_pass(r0 + 2 * ow, r1 + 2 * ow, y + ow, sw + ow, n, stream);
    } else {
      put(y + ow, sw + ow, first_lanes32(n), s, stream);
    }
  }
}

// What a pass over a row folds into its watch for the NaN / raw-pattern check, once a step:
// keys need the inputs' unsigned maximum (a negative NaN never wins) and the window keys,
// taken after the bottom row; raw patterns the windows' maxima, also after it.
inline void watch_top(NanWatch& w, __m512i t0, __m512i t1, const Best&) {
  w.umax = _mm512_max_epu16(w.umax, _mm512_max_epu16(t0, t1));
}
inline void watch_top(bf16_raw::Watch&, __m512i, __m512i, const bf16_raw::Best&) {}
inline void watch_bottom(NanWatch& w, __m512i b0, __m512i b1, const Best& best) {
  w.add(_mm512_max_epu16(b0, b1), best.k);
}
inline void watch_bottom(bf16_raw::Watch& w, __m512i, __m512i, const bf16_raw::Best& best) {
  w.add(best);
}

// One pooled row of 64+ columns, its top input row first, then its bottom row, on keys
// (bf16_key::Best, NanWatch) or raw patterns (bf16_raw). Every step is stored; the returned
// watch says whether the row met a value the comparison cannot order (the caller redoes
// the row). A check a row rather than a step: the key path spent 8 instructions a step on
// it. Lanes past the row load zeros, which neither watch minds.
template <typename B, typename Watch>
inline Watch pool_row_two_pass(const T* r0, const T* r1, T* y, uint8_t* sw, int64_t OW,
                               bool stream) {
  constexpr int64_t kChunk = 512;  // pooled columns per pass: up to 4 KiB of partial maxima
  alignas(64) B top[kChunk / 32];
  __mmask32 took1[kChunk / 32];
  Watch watch;
  for (int64_t c0 = 0; c0 < OW; c0 += kChunk) {
    const int64_t c1 = std::min(OW, c0 + kChunk);
    for (int64_t ow = c0, j = 0; ow < c1; ow += 32, ++j) {
      const auto [t0, t1] = RowLanes(std::min<int64_t>(32, c1 - ow)).load(r0 + 2 * ow);
      const auto [te, to] = split(t0, t1);
      B best(te);
      took1[j] = best.update(to);
      top[j] = best;
      watch_top(watch, t0, t1, best);
    }
    for (int64_t ow = c0, j = 0; ow < c1; ow += 32, ++j) {
      const int64_t n = std::min<int64_t>(32, c1 - ow);
      const auto [b0, b1] = RowLanes(n).load(r1 + 2 * ow);
      const auto [be, bo] = split(b0, b1);
      B best = top[j];
      const __mmask32 took2 = best.update(be), took3 = best.update(bo);
      watch_bottom(watch, b0, b1, best);
      put(y + ow, sw + ow, first_lanes32(n), {best.raw, switches32_from(took1[j], took2, took3)},
          stream);
    }
  }
  return watch;
}

// Rows of 64+ pooled columns (any H), a task at a time: raw patterns while the rows allow,
// then keys. A row that met a value it could not order is redone, after a fence if it was
// streamed (its lines are rewritten by ordinary stores): on keys by a raw row, exactly by
// pool_row_one_pass by a key row. 4x64x224x224, one thread, us a call (geo-mean of 6-8 runs
// alternated with the keys-only rows checked a step): relu 1387 -> 976, randn 1416 -> 1402.
inline void pool_wide_rows(const PoolKernelArgs& a, T* y, uint8_t* sw, bool stream) {
  const PoolGeom g = a.g;
  const int64_t OW = g.OW;
  for_each_pooled_row_2x2<T>(
      a,
      [&, raw = true](int64_t r, const T* r0, int64_t) mutable {
        const T* r1 = r0 + g.W;
        T* yr = y + r * OW;
        uint8_t* swr = sw + r * OW;
        if (raw) {
          if (!pool_row_two_pass<bf16_raw::Best, bf16_raw::Watch>(r0, r1, yr, swr, OW, stream)
                   .met()) {
            return;
          }
          raw = false;  // the rest of this task on keys
          end_streaming(stream);
        }
        if (pool_row_two_pass<Best, NanWatch>(r0, r1, yr, swr, OW, stream).met()) {
          end_streaming(stream);
          pool_row_one_pass(r0, r1, yr, swr, OW, /*stream=*/false);
        }
      },
      [&] { end_streaming(stream); });
}

// A vector of the top rows and the same of the bottom rows, from its k segments (K: k known
// at compile time; 0: not).
template <int K>
inline void load_flat(const Flat::Segment* s, int k, const T* top, const T* bottom,
                      __m512i& t, __m512i& b) {
  t = _mm512_maskz_loadu_epi16(s[0].mask, top + s[0].offset);
  b = _mm512_maskz_loadu_epi16(s[0].mask, bottom + s[0].offset);
  const int n = K > 0 ? K : k;
  for (int i = 1; i < n; ++i) {
    t = _mm512_mask_loadu_epi16(t, s[i].mask, top + s[i].offset);
    b = _mm512_mask_loadu_epi16(b, s[i].mask, bottom + s[i].offset);
  }
}

// The period of a flat run whose first output is o and whose input starts at top. Every
// store is whole; kStream: aligned too, streamed. What the period held that its Best cannot
// order (bf16_raw: a negative value, -0 or NaN; keys: a NaN) is in the returned watch.
// NaNs are looked for once a period, not once a step (5% at 28x28 and 56x56, 7% at
// 112x112): the running unsigned max of the raw inputs and the max of the window keys over
// the period (see met_nan).
template <int K, bool kStream, typename Watch>
inline Watch pool_flat_period(const Flat& f, const T* top, T* y, uint8_t* sw, int64_t W,
                              int64_t o) {
  const Flat::Segment* s = f.plan();
  const int k = f.segments();
  const T* bottom = top + W;
  Watch watch;
  for (const int64_t end = o + f.outputs(); o < end; o += 32, s += 2 * k) {
    __m512i t0, b0, t1, b1;
    load_flat<K>(s, k, top, bottom, t0, b0);
    load_flat<K>(s + k, k, top, bottom, t1, b1);
    const Step st = step(t0, t1, b0, b1, watch);
    if constexpr (kStream) {
      _mm512_stream_si512(reinterpret_cast<__m512i*>(y + o), st.raw);
      _mm256_stream_si256(reinterpret_cast<__m256i*>(sw + o), st.switches);
    } else {
      _mm512_storeu_si512(y + o, st.raw);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(sw + o), st.switches);
    }
  }
  return watch;
}

// Periods [p0, p1) of a flat run: on raw patterns (bf16_raw) until a period holds a value
// they cannot order, that period and the rest with keys. A period redone (with keys, or
// exactly by pool_flat_pieces after keys met a NaN) is redone after a fence when its stores
// streamed, so that the redo's stores land last. (Figures: see bf16_raw.)
// raw = false: keys from the first period. (Not inlined into pool_raw_periods: there the
// raw steps' permute tables, live across the loop, cost the keys loop 4%.)
template <int K, bool kStream>
__attribute__((noinline)) void pool_flat_periods(const Flat& f, const T* x, T* y, uint8_t* sw,
                                                 int64_t OW, int64_t W, int64_t p0, int64_t p1,
                                                 bool raw = true) {
  const int64_t P = f.outputs(), period_input = f.period_input();
  for (int64_t p = p0; p < p1; ++p) {
    const T* top = x + p * period_input;
    if (raw) {
      if (!pool_flat_period<K, kStream, bf16_raw::Watch>(f, top, y, sw, W, p * P).met()) {
        continue;
      }
      raw = false;
      if constexpr (kStream) _mm_sfence();
    }
    if (__builtin_expect(pool_flat_period<K, kStream, NanWatch>(f, top, y, sw, W, p * P).met(),
                         0)) {
      if constexpr (kStream) _mm_sfence();
      pool_flat_pieces(x, y, sw, p * P, P, OW, W);
    }
  }
}

template <bool kStream>
void pool_flat_periods(const Flat& f, const T* x, T* y, uint8_t* sw, int64_t OW, int64_t W,
                       int64_t p0, int64_t p1, bool raw = true) {
  switch (f.segments()) {
    case 2: return pool_flat_periods<2, kStream>(f, x, y, sw, OW, W, p0, p1, raw);  // OW >= 15
    case 3: return pool_flat_periods<3, kStream>(f, x, y, sw, OW, W, p0, p1, raw);  // 8..14
    case 4: return pool_flat_periods<4, kStream>(f, x, y, sw, OW, W, p0, p1, raw);  // 5..7
    default: return pool_flat_periods<0, kStream>(f, x, y, sw, OW, W, p0, p1, raw);
  }
}

// The rows left over by a flat run (run_flat's `leftover`), a row at a time.
inline auto row_at_a_time(const T* x, T* y, uint8_t* sw, const PoolGeom& g) {
  return [=](int64_t r) {
    const T* r0 = x + 2 * g.W * r;
    pool_row(r0, r0 + g.W, y + r * g.OW, sw + r * g.OW, g.OW, false);
  };
}

// `rows` pooled rows (all planes), H == 2 OH and OW < 64: whole periods of FlatRows, then
// the rows left over a row at a time. 2 threads, ms, a row a step (rows packed several to a
// step at 7 and 14 columns) -> flat: 4x128x112x112 0.35 -> 0.24, 4x256x56x56 0.166 -> 0.120,
// 4x512x28x28 0.087 -> 0.076, 4x512x14x14 0.035 -> 0.030.
inline void pool_flat(const T* x, T* y, uint8_t* sw, int64_t rows, const PoolGeom& g,
                      bool stream_wanted) {
  const Flat f(g.OW, g.W);
  const bool stream = stream_wanted && aligned(y, 64) && aligned(sw, 32);
  const int64_t OW = g.OW, W = g.W;
  run_flat(
      f, rows,
      [&](int64_t p0, int64_t p1) {
        if (stream) {
          pool_flat_periods<true>(f, x, y, sw, OW, W, p0, p1);
          end_streaming(true);
        } else {
          pool_flat_periods<false>(f, x, y, sw, OW, W, p0, p1);
        }
      },
      row_at_a_time(x, y, sw, g));
}

// Maps of up to 32 or 48 to 63 pooled columns (H even, outputs not streamed) run each
// FlatRows period as steps of whole pooled rows, a step's windows in the first lanes of a
// vector (or two) as their outputs lie in memory (so its stores are masked, and never
// streamed). FlatRows' vectors hold windows of up to 4 rows, a masked load per row and
// vector (16 loads for 32 windows at OW = 7, 12 at OW = 14, 8 at OW = 28 and 56), and those
// loads set the time there, on raw patterns and on keys alike (an unaligned 64-byte load
// takes ~1.6 cycles on Zen 4, a permute 1). The kinds of step (pool_step runs one):
//  * RowGroups: pairs of groups of contiguous input, 4 loads and 12 permutes and blends;
//  * PackedRows: 2 R rows, one masked load per row and vector, 4 permutes;
//  * WholeRows: one row of 17 to 32 windows, 4 loads and 4 permutes;
//  * WideRows: one row of 48 to 63 windows, 8 loads and 8 permutes.
// Which one where (pool_row_steps) is measured: relu(randn) and randn, one thread pinned,
// 4x512 maps (4x256 at 56x56, 4x128 from 96x96 on), bfloat16, us a call.

// A pair of groups of G pooled rows (a power of two, G OW <= 16, 2 W G <= 64): a group's
// input is its 2 W G contiguous elements, two vector loads, and one permute of the two gives
// a tap of all its n = G OW windows. The second group's windows go to lanes [n, 2n) (a
// blend of two permutes), so a pair's 2n windows fill a vector as their outputs lie in
// memory. FlatRows -> row groups, relu(randn): 14x14 47 -> 33, 28x28 127 -> 104 (since
// replaced by PackedRows at 28x28). On keys the 8 permutes and 4 blends of a pair join the 20
// instructions of keys and selects, and the vector units, not the loads, set the time:
// randn 4x512x28x28, 124 us flat, 136 in row groups.
class RowGroups {
 public:
  RowGroups(int64_t OW, int64_t W)
      : G_(rows_for(OW, W)), n_(G_ * OW), input_(2 * W * G_),
        lo_(first_lanes32(std::min<int64_t>(input_, 32))),
        hi_(first_lanes32(std::max<int64_t>(input_ - 32, 0))),
        second_(static_cast<__mmask32>(first_lanes32(2 * n_) & ~first_lanes32(n_))),
        out_(first_lanes32(2 * n_)) {
    TORCH_INTERNAL_ASSERT(G_ >= 1);
    alignas(64) int16_t idx[4][32];
    for (int64_t l = 0; l < 32; ++l) {
      const int64_t w = l < n_ ? l : l < 2 * n_ ? l - n_ : 0;  // the window, in its group
      const int64_t top_left = 2 * W * (w / OW) + 2 * (w % OW);
      for (int tap = 0; tap < 4; ++tap) {
        idx[tap][l] = static_cast<int16_t>(top_left + (tap / 2) * W + tap % 2);
      }
    }
    for (int tap = 0; tap < 4; ++tap) idx_[tap] = _mm512_load_si512(idx[tap]);
  }

  // Pooled rows a group: at most 16 windows and 64 input elements, a power of two (so that
  // a FlatRows period, 32 / gcd(OW, 32) rows, holds whole pairs); 0: too wide.
  static int64_t rows_for(int64_t OW, int64_t W) {
    const int64_t most = std::min(16 / OW, 32 / W);
    if (most < 1) return 0;
    int64_t rows = 1;
    while (2 * rows <= most) rows *= 2;
    return rows;
  }

  int64_t rows() const { return 2 * G_; }       // pooled rows a step
  int64_t windows() const { return 2 * n_; }    // a step
  int64_t input() const { return 2 * input_; }  // elements a step
  __mmask32 out() const { return out_; }        // the lanes of a step's windows

  std::array<__m512i, 4> load(const T* p) const {
    const __m512i lo0 = _mm512_maskz_loadu_epi16(lo_, p);
    const __m512i hi0 = _mm512_maskz_loadu_epi16(hi_, p + 32);
    const __m512i lo1 = _mm512_maskz_loadu_epi16(lo_, p + input_);
    const __m512i hi1 = _mm512_maskz_loadu_epi16(hi_, p + input_ + 32);
    std::array<__m512i, 4> taps;
    for (int tap = 0; tap < 4; ++tap) {
      taps[tap] = _mm512_mask_blend_epi16(second_, _mm512_permutex2var_epi16(lo0, idx_[tap], hi0),
                                          _mm512_permutex2var_epi16(lo1, idx_[tap], hi1));
    }
    return taps;
  }

 private:
  int64_t G_, n_, input_;  // input_: elements a group
  __mmask32 lo_, hi_, second_, out_;
  __m512i idx_[4];
};

// R as PackedRows takes it for OW: the largest power of two with R OW <= 16.
inline int64_t packed_rows_for(int64_t OW) {
  int64_t rows = 1;
  while (2 * rows * OW <= 16) rows *= 2;
  return rows;
}

// 2 R pooled rows (R a power of two, R OW <= 16, so a FlatRows period holds whole steps):
// the top input rows of the first R masked into one vector (row i in lanes [2 OW i,
// 2 OW (i + 1))), of the next R into a second, the same for the bottom rows, and a permute
// of two vectors per tap packs the 2 R OW windows into the first lanes. 4 R loads and 4
// permutes a step, lanes 2 R OW of 32: 28 at OW = 7 and 14. FlatRows -> packed rows, randn:
// 14x14 46 -> 36, 28x28 128 -> 100; relu(randn), row groups -> packed rows: 28x28 86 -> 70.
template <int R>
class PackedRows {
 public:
  PackedRows(int64_t OW, int64_t W) : W_(W), n_(2 * R * OW), out_(first_lanes32(n_)) {
    TORCH_INTERNAL_ASSERT(R * OW <= 16);
    for (int i = 0; i < R; ++i) {
      row_[i] = static_cast<__mmask32>(first_lanes32(2 * OW * (i + 1)) & ~first_lanes32(2 * OW * i));
      offset_[i] = (2 * W - 2 * OW) * i;  // row i's load: its lanes fall on its elements
    }
    alignas(64) int16_t idx[2][32];
    for (int64_t w = 0; w < 32; ++w) {
      const int64_t row = w < n_ ? w / OW : 0, column = w < n_ ? w % OW : 0;
      const int64_t lane = 32 * (row / R) + 2 * OW * (row % R) + 2 * column;
      idx[0][w] = static_cast<int16_t>(lane);
      idx[1][w] = static_cast<int16_t>(lane + 1);
    }
    left_ = _mm512_load_si512(idx[0]);
    right_ = _mm512_load_si512(idx[1]);
  }

  int64_t rows() const { return 2 * R; }        // pooled rows a step
  int64_t windows() const { return n_; }        // a step
  int64_t input() const { return 4 * R * W_; }  // elements a step
  __mmask32 out() const { return out_; }        // the lanes of a step's windows

  std::array<__m512i, 4> load(const T* p) const {
    const T* q = p + 2 * R * W_;
    const __m512i t0 = rows_from(p), t1 = rows_from(q);
    const __m512i b0 = rows_from(p + W_), b1 = rows_from(q + W_);
    return {_mm512_permutex2var_epi16(t0, left_, t1), _mm512_permutex2var_epi16(t0, right_, t1),
            _mm512_permutex2var_epi16(b0, left_, b1), _mm512_permutex2var_epi16(b0, right_, b1)};
  }

 private:
  // R input rows 2 W apart, from p.
  __m512i rows_from(const T* p) const {
    __m512i v = _mm512_maskz_loadu_epi16(row_[0], p);
    unrolled<R - 1>([&](auto i) {
      v = _mm512_mask_loadu_epi16(v, row_[i + 1], p + offset_[i + 1]);
    });
    return v;
  }
  int64_t W_, n_;
  __mmask32 out_;
  __mmask32 row_[R];
  int64_t offset_[R];
  __m512i left_, right_;
};

// One pooled row of 17 to 32 windows: its top and bottom input rows, two vectors each (the
// second masked), split into even and odd columns, as pool_row does a row but without its
// per-row masks and NaN check. Lanes OW of 32: 28 at 56x56. FlatRows -> whole rows,
// relu(randn): OW = 17: 131 -> 123, 28: 395 -> 262, 32: 740 -> 483; randn: 17: 166 -> 218 (17
// lanes), 23: 301 -> 300, 24: 350 -> 334, 28: 494 -> 390, 32: 855 -> 689.
class WholeRows {
 public:
  WholeRows(int64_t OW, int64_t W)
      : W_(W), OW_(OW), lanes_(RowLanes(OW)), out_(first_lanes32(OW)) {
    TORCH_INTERNAL_ASSERT(OW > 16 && OW <= 32);
  }
  int64_t rows() const { return 1; }             // pooled rows a step
  int64_t windows() const { return OW_; }        // a step
  int64_t input() const { return 2 * W_; }       // elements a step
  __mmask32 out() const { return out_; }         // the lanes of a step's windows

  std::array<__m512i, 4> load(const T* p) const {
    const auto [t0, t1] = lanes_.load(p);
    const auto [b0, b1] = lanes_.load(p + W_);
    const auto [te, to] = split(t0, t1);
    const auto [be, bo] = split(b0, b1);
    return {te, to, be, bo};
  }

 private:
  int64_t W_, OW_;
  RowLanes lanes_;
  __mmask32 out_;
};

// One pooled row of 48 to 63 windows, as two vectors of windows: the first 32 from whole
// loads, the rest masked (pool_step below). Lanes OW of 64: 56 at 112x112. FlatRows -> wide
// rows, one thread, 4x128 maps, us a call, relu(randn): OW = 40: 157 -> 159, 48: 273 -> 215,
// 56: 399 -> 276, 63: 755 -> 464; randn: 40: 224 -> 278, 48: 375 -> 358, 56: 538 -> 427,
// 63: 784 -> 657.
class WideRows {
 public:
  WideRows(int64_t OW, int64_t W)
      : W_(W), OW_(OW), rest_(RowLanes(OW - 32)), out_(first_lanes32(OW - 32)) {
    TORCH_INTERNAL_ASSERT(OW >= 48 && OW < 64);
  }
  int64_t rows() const { return 1; }        // pooled rows a step
  int64_t windows() const { return OW_; }   // a step
  int64_t input() const { return 2 * W_; }  // elements a step
  int64_t W() const { return W_; }
  const RowLanes& rest() const { return rest_; }  // the input lanes of windows 32..OW-1
  __mmask32 out() const { return out_; }          // the lanes of windows 32..OW-1

 private:
  int64_t W_, OW_;
  RowLanes rest_;
  __mmask32 out_;
};

// One step of `s` from p: its windows' maxima and switches to y / sw.
template <typename Steps, typename Watch>
inline void pool_step(const Steps& s, const T* p, T* y, uint8_t* sw, Watch& watch) {
  const auto t = s.load(p);
  put(y, sw, s.out(), step_taps(t[0], t[1], t[2], t[3], watch), false);
}
template <typename Watch>
inline void pool_step(const WideRows& s, const T* p, T* y, uint8_t* sw, Watch& watch) {
  const T* q = p + s.W();
  put(y, sw, 0xFFFFFFFFu,
      step(_mm512_loadu_si512(p), _mm512_loadu_si512(p + 32), _mm512_loadu_si512(q),
           _mm512_loadu_si512(q + 32), watch),
      false);
  const auto [t0, t1] = s.rest().load(p + 64);
  const auto [b0, b1] = s.rest().load(q + 64);
  put(y + 32, sw + 32, s.out(), step(t0, t1, b0, b1, watch), false);
}

// `n` steps of `s` from top, the outputs from y / sw on.
template <typename Steps, typename Watch>
inline Watch pool_steps(const Steps& s, int64_t n, const T* top, T* y, uint8_t* sw) {
  Watch watch;
  for (int64_t i = 0; i < n; ++i, top += s.input(), y += s.windows(), sw += s.windows()) {
    pool_step(s, top, y, sw, watch);
  }
  return watch;
}

// Periods [p0, p1) of a flat run on keys in the steps of `plan`, exactly (pool_flat_pieces)
// after keys met a NaN. Not inlined into pool_raw_periods, whose raw steps' tables would stay
// live across this loop (4% on the FlatRows keys loop).
template <typename Steps>
__attribute__((noinline)) void pool_key_periods(const Flat& f, const Steps& plan, const T* x,
                                                T* y, uint8_t* sw, int64_t OW, int64_t W,
                                                int64_t p0, int64_t p1) {
  const Steps s = plan;  // a local copy: stores through uint8_t* could alias it
  const int64_t P = f.outputs(), period_input = f.period_input(), steps = f.rows() / s.rows();
  for (int64_t p = p0; p < p1; ++p) {
    const NanWatch watch =
        pool_steps<Steps, NanWatch>(s, steps, x + p * period_input, y + p * P, sw + p * P);
    if (__builtin_expect(watch.met(), 0)) pool_flat_pieces(x, y, sw, p * P, P, OW, W);
  }
}

// Periods [p0, p1) of a flat run in the steps of `plan` on raw patterns (bf16_raw), until a
// period holds a value they cannot order: that period and the rest go to keys(p, p1).
template <typename Steps, typename Keys>
inline void pool_raw_periods(const Flat& f, const Steps& plan, const T* x, T* y, uint8_t* sw,
                             int64_t p0, int64_t p1, const Keys& keys) {
  const Steps s = plan;  // a local copy, as in pool_key_periods
  const int64_t P = f.outputs(), period_input = f.period_input(), steps = f.rows() / s.rows();
  for (int64_t p = p0; p < p1; ++p) {
    if (pool_steps<Steps, bf16_raw::Watch>(s, steps, x + p * period_input, y + p * P, sw + p * P)
            .met()) {
      return keys(p, p1);
    }
  }
}

// Whether pool_row_steps takes maps of OW pooled columns (and even height, outputs not
// streamed), rather than pool_flat (OW < 64).
inline bool row_steps_pay(int64_t OW) { return OW <= 32 || (OW >= 48 && OW < 64); }

// `rows` pooled rows (all planes), H == 2 OH, row_steps_pay(OW) and outputs not streamed:
// whole periods of FlatRows in steps of whole rows, then the rows left over a row at a time.
//  * Raw patterns: row groups up to 7 pooled columns, packed rows from 8 to 16, whole rows
//    from 17 (wide rows from 48). relu(randn), row groups -> packed rows, us: OW = 3: 15.0 -> 12.3, 6: 12.3 ->
//    15.0, 7: 29.5 -> 34.3, 8: 37.1 -> 32.1, 9: 56 -> 49, 14: 86 -> 70, 16: 113 -> 80.
//  * Keys: packed, whole or wide rows where a step fills 24+ of the 32 lanes (48+ of 64;
//    packed: R <= 4), FlatRows otherwise. randn, FlatRows -> packed rows, us: OW = 4: 24.7 -> 17.1, 7: 46 ->
//    36, 9: 60 -> 68 (18 lanes), 10: 72 -> 74 (20), 12: 98 -> 86, 14: 128 -> 100, 16: 167 ->
//    111; whole and wide rows: see there.
inline void pool_row_steps(const T* x, T* y, uint8_t* sw, int64_t rows, const PoolGeom& g) {
  const Flat f(g.OW, g.W);
  const int64_t OW = g.OW, W = g.W;
  const auto run = [&](const auto& raw_steps, const auto& keys) {
    TORCH_INTERNAL_ASSERT(f.rows() % raw_steps.rows() == 0);
    run_flat(
        f, rows,
        [&](int64_t p0, int64_t p1) { pool_raw_periods(f, raw_steps, x, y, sw, p0, p1, keys); },
        row_at_a_time(x, y, sw, g));
  };
  const auto flat_keys = [&](int64_t p0, int64_t p1) {
    pool_flat_periods<false>(f, x, y, sw, OW, W, p0, p1, /*raw=*/false);
  };
  const auto keys_on = [&](const auto& s) {
    TORCH_INTERNAL_ASSERT(f.rows() % s.rows() == 0);
    return [&f, s, x, y, sw, OW, W](int64_t p0, int64_t p1) {
      pool_key_periods(f, s, x, y, sw, OW, W, p0, p1);
    };
  };
  if (OW >= 48) {
    const WideRows s(OW, W);
    return run(s, keys_on(s));
  }
  if (OW > 16) {
    const WholeRows s(OW, W);
    return OW >= 24 ? run(s, keys_on(s)) : run(s, flat_keys);
  }
  const int64_t R = packed_rows_for(OW);
  const bool packed_keys_pay = R <= 4 && 2 * R * OW >= 24;
  if (OW >= 8) {
    if (R == 2) return run(PackedRows<2>(OW, W), keys_on(PackedRows<2>(OW, W)));
    const PackedRows<1> s(OW, W);
    return packed_keys_pay ? run(s, keys_on(s)) : run(s, flat_keys);
  }
  const RowGroups groups(OW, W);
  if (!packed_keys_pay) return run(groups, flat_keys);
  if (R == 2) return run(groups, keys_on(PackedRows<2>(OW, W)));
  return run(groups, keys_on(PackedRows<4>(OW, W)));
}

inline void max_pool_nchw_2x2(const PoolKernelArgs& a) {
  const PoolGeom g = a.g;
  const T* x = static_cast<const T*>(a.in);
  T* y = static_cast<T*>(a.out);
  uint8_t* sw = a.out_switches;
  const int64_t rows = a.N * a.C * g.OH;
  if (g.H == 2 * g.OH && row_steps_pay(g.OW) && !a.stream_outputs) {
    return pool_row_steps(x, y, sw, rows, g);
  }
  if (g.OW < 64 && g.H == 2 * g.OH) {
    return pool_flat(x, y, sw, rows, g, a.stream_outputs);
  }
  // Streamed only if every store is a whole vector or half of one, aligned to its size
  // (see put).
  const bool stream = a.stream_outputs && g.OW % 16 == 0 && aligned(y, 64) && aligned(sw, 32);
  if (g.OW >= 64) return pool_wide_rows(a, y, sw, stream);
  for_each_pooled_row_2x2<T>(
      a,
      [&](int64_t r, const T* r0, int64_t) {
        pool_row(r0, r0 + g.W, y + r * g.OW, sw + r * g.OW, g.OW, stream);
      },
      [&] { end_streaming(stream); });
}

}  // namespace bf16_nchw

// kB x 32 channels of one output pixel (kB = 0: the last C - c <= 32 channels, masked), the
// taps read one after the other as in pool_pixel_block. Templated on the running maximum:
// bf16_raw::Best (fastest: inputs +0 or greater and no NaN, or `watch` says not),
// bf16_key::Best (fast: NaNs are the caller's to look for, in `watch`) or Bf16NanKey
// (exact; `watch` unused).
// Blocks of 64 channels (kB = 2): blocks of 128, as the float kernel's, were 2-7% slower
// (register pressure: 4 groups x 3 taps of masks), 2 threads, us: 4x256x56x56 86-90 ->
// 83-84, 4x512x28x28 52-53 -> 49-54, 4x128x112x112 165-190 -> 153-191; blocks of 32 were no
// faster than 64.
template <typename Key, int kB, typename Watch>
inline void pool_pixel_block_bf16(const c10::BFloat16* const tap[4], c10::BFloat16* y,
                                  uint8_t* sw, int64_t n, bool stream, Watch& watch) {
  constexpr bool kKeys = std::is_same_v<Key, bf16_key::Best>;
  constexpr bool kRaw = std::is_same_v<Key, bf16_raw::Best>;
  constexpr int kGroups = kB == 0 ? 1 : kB;
  const __mmask32 m = kB == 0 ? first_lanes32(n) : static_cast<__mmask32>(0xFFFFFFFFu);
  Key best[kGroups];
  __m512i umax[kGroups];  // keys: of the raw inputs, for met_nan
  __m256i k[kGroups];
  unrolled<kGroups>([&](auto b) {
    const __m512i first = _mm512_maskz_loadu_epi16(m, tap[0] + 32 * b);
    best[b] = Key(first);
    if constexpr (kKeys) umax[b] = first;
    k[b] = _mm256_setzero_si256();
  });
  unrolled<3>([&](auto t) {
    const __m256i offset = _mm256_set1_epi8(static_cast<char>(t + 1));
    unrolled<kGroups>([&](auto b) {
      const __m512i v = _mm512_maskz_loadu_epi16(m, tap[t + 1] + 32 * b);
      if constexpr (kKeys) umax[b] = _mm512_max_epu16(umax[b], v);
      k[b] = _mm256_mask_mov_epi8(k[b], best[b].update(v), offset);
    });
  });
  unrolled<kGroups>([&](auto b) {
    if constexpr (kKeys) watch.add(umax[b], best[b].k);
    if constexpr (kRaw) watch.add(best[b]);
    put_bf16x32(y + 32 * b, m, best[b].raw, stream);
    put_switches32(sw + 32 * b, m, k[b], stream);
  });
}

// All C channels of one output pixel, with what the pixel held that Key cannot order looked
// for once a pixel, not once a block (keys, 2 threads, us: 4x512x28x28 50.5-53.4 -> 48.0,
// 4x256x56x56 84-86 -> 82-84, 4x512x14x14 19.1-21.8 -> 18.4).
template <typename Key, typename Watch>
inline void pool_pixel_bf16(const c10::BFloat16* p00, const c10::BFloat16* p10, int64_t C,
                            c10::BFloat16* y, uint8_t* sw, bool stream, Watch& watch) {
  int64_t c = 0;
  for (; c + 64 <= C; c += 64) {
    const c10::BFloat16* const tap[4] = {p00 + c, p00 + C + c, p10 + c, p10 + C + c};
    pool_pixel_block_bf16<Key, 2>(tap, y + c, sw + c, 64, stream, watch);
  }
  for (; c < C; c += 32) {
    const c10::BFloat16* const tap[4] = {p00 + c, p00 + C + c, p10 + c, p10 + C + c};
    pool_pixel_block_bf16<Key, 0>(tap, y + c, sw + c, C - c, stream, watch);
  }
}

// Pixels on raw patterns (bf16_raw) until one holds a value they cannot order; from then on,
// in every thread, with keys. A pixel whose keys met a NaN is redone by the exact code. A
// pixel redone goes after a fence when its stores streamed, so that the redo's stores land
// last. (Figures: see bf16_raw.)
inline void max_pool_nhwc_2x2_bf16(const PoolKernelArgs& a) {
  using T = c10::BFloat16;
  const int64_t C = a.C;
  T* y = static_cast<T*>(a.out);
  uint8_t* sw = a.out_switches;
  const bool stream = a.stream_outputs && C % 32 == 0 && aligned(y, 64) && aligned(sw, 32);
  std::atomic<bool> raw{true};  // read and cleared relaxed: a hint, not a result
  for_each_pixel_2x2<T>(
      a,
      [&](int64_t i, const T* p00, const T* p10) {
        if (raw.load(std::memory_order_relaxed)) {
          bf16_raw::Watch watch;
          pool_pixel_bf16<bf16_raw::Best>(p00, p10, C, y + i * C, sw + i * C, stream, watch);
          if (!watch.met()) return;
          raw.store(false, std::memory_order_relaxed);
          if (stream) _mm_sfence();
        }
        bf16_key::NanWatch watch;
        pool_pixel_bf16<bf16_key::Best>(p00, p10, C, y + i * C, sw + i * C, stream, watch);
        if (__builtin_expect(watch.met(), 0)) {
          if (stream) _mm_sfence();
          pool_pixel_bf16<Bf16NanKey>(p00, p10, C, y + i * C, sw + i * C, stream, watch);
        }
      },
      [&] { end_streaming(stream); });
}

template <typename T>
void max_pool_nhwc_2x2(const PoolKernelArgs& a) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) return max_pool_nhwc_2x2_bf16(a);
  using L = Lanes16<T>;
  const int64_t C = a.C;
  T* y = static_cast<T*>(a.out);
  uint8_t* sw = a.out_switches;
  const bool stream = a.stream_outputs && C % 16 == 0 && aligned(y, 64) && aligned(sw, 16);
  for_each_pixel_2x2<T>(
      a,
      [&](int64_t i, const T* p00, const T* p10) {
        T* yi = y + i * C;
        uint8_t* si = sw + i * C;
        int64_t c = 0;
        if constexpr (std::is_same_v<T, float>) {
          __m512 nan_sum = _mm512_setzero_ps();
          for (; c + 64 <= C; c += 64) {
            const T* const tap[4] = {p00 + c, p00 + C + c, p10 + c, p10 + C + c};
            pool_pixel_block<T, 4, OrderedBest>(tap, yi + c, si + c, stream, &nan_sum);
          }
          if (__builtin_expect(_mm512_cmp_ps_mask(nan_sum, nan_sum, _CMP_UNORD_Q) != 0, 0)) {
            if (stream) _mm_sfence();
            for (int64_t d = 0; d < c; d += 64) {
              const T* const tap[4] = {p00 + d, p00 + C + d, p10 + d, p10 + C + d};
              pool_pixel_block<T, 4>(tap, yi + d, si + d, stream);
            }
          }
        }
        for (; c + 128 <= C; c += 128) {
          const T* const tap[4] = {p00 + c, p00 + C + c, p10 + c, p10 + C + c};
          pool_pixel_block<T, 8>(tap, yi + c, si + c, stream);
        }
        if (c + 64 <= C) {
          const T* const tap[4] = {p00 + c, p00 + C + c, p10 + c, p10 + C + c};
          pool_pixel_block<T, 4>(tap, yi + c, si + c, stream);
          c += 64;
        }
        for (; c < C; c += 16) {  // the last channels, a group at a time
          const __mmask16 m = first_lanes(C - c);
          Best<T> best(L::load(p00 + c, m));
          const __mmask16 t1 = best.update(L::load(p00 + C + c, m));
          const __mmask16 t2 = best.update(L::load(p10 + c, m));
          const __mmask16 t3 = best.update(L::load(p10 + C + c, m));
          put<T>(yi + c, m, best.raw, stream);
          put_switches(si + c, m, switches_from(t1, t2, t3), stream);
        }
      },
      [&] { end_streaming(stream); });
}

// ------------------------------------------------------------------------------------------
// Scatter through the switches, NHWC, 2x2 stride-2 windows inside the output (unpool forward
// and pool backward: without overlap each position gets at most one value, so sum == last).
// No arithmetic at all: each pooled value's raw bits go to the one position its switch
// names and zeros to the other three, by masked moves, 16 lanes of 32-bit types or 32 lanes
// of 16-bit types per instruction (at::vec widened bfloat16 to float and rounded it back).

template <int kBytes>
struct RawLanes;

template <>
struct RawLanes<4> {
  static constexpr int64_t kLanes = 16;
  static void scatter(const void* v, const uint8_t* s, void* const dst[4], int64_t n) {
    const __mmask16 m = first_lanes(n);
    const __m512i val = _mm512_maskz_loadu_epi32(m, v);
    const __m128i sw = _mm_maskz_loadu_epi8(m, s);
    for (int k = 0; k < 4; ++k) {
      const __mmask16 hit = _mm_mask_cmpeq_epi8_mask(m, sw, _mm_set1_epi8(static_cast<char>(k)));
      _mm512_mask_storeu_epi32(dst[k], m, _mm512_maskz_mov_epi32(hit, val));
    }
  }
};

template <>
struct RawLanes<2> {
  static constexpr int64_t kLanes = 32;
  static void scatter(const void* v, const uint8_t* s, void* const dst[4], int64_t n) {
    const __mmask32 m = first_lanes32(n);
    const __m512i val = _mm512_maskz_loadu_epi16(m, v);
    const __m256i sw = _mm256_maskz_loadu_epi8(m, s);
    for (int k = 0; k < 4; ++k) {
      const __mmask32 hit =
          _mm256_mask_cmpeq_epi8_mask(m, sw, _mm256_set1_epi8(static_cast<char>(k)));
      _mm512_mask_storeu_epi16(dst[k], m, _mm512_maskz_mov_epi16(hit, val));
    }
  }
};

// NCHW: both output rows of a pooled row (out0: the windows' row 0, out1: row 1). Each
// pooled value's raw bits go to column 2 ow + kx of the row ky its switch 2 ky + kx names,
// zeros elsewhere; 16 pooled values a step, interleaved into 32 outputs per row; row tails
// by masked loads and stores. Each value and switch is loaded once for both rows: on 14x14
// maps (7 pooled columns) the per-row work, not the bytes, sets the time.
template <typename T>
void scatter_row_pair_2x2(const T* v, const uint8_t* s, T* out0, T* out1, int64_t OW) {
  for (int64_t ow = 0; ow < OW; ow += 16) {
    const int64_t n = std::min<int64_t>(16, OW - ow);
    const __mmask16 m = first_lanes(n);
    const __m128i sw = _mm_maskz_loadu_epi8(m, s + ow);
    __mmask16 hit[4];
    unrolled<4>([&](auto k) {
      hit[k] = _mm_mask_cmpeq_epi8_mask(m, sw, _mm_set1_epi8(static_cast<char>(k())));
    });
    T* const rows[2] = {out0 + 2 * ow, out1 + 2 * ow};
    if constexpr (sizeof(T) == 4) {
      const __m512i val = _mm512_maskz_loadu_epi32(m, v + ow);
      const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
      const __m512i hi =
          _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
      for (int ky = 0; ky < 2; ++ky) {
        const __m512i e = _mm512_maskz_mov_epi32(hit[2 * ky], val);
        const __m512i o = _mm512_maskz_mov_epi32(hit[2 * ky + 1], val);
        _mm512_mask_storeu_epi32(rows[ky], first_lanes(2 * n), _mm512_permutex2var_epi32(e, lo, o));
        if (n > 8) {
          _mm512_mask_storeu_epi32(rows[ky] + 16, first_lanes(2 * n - 16),
                                   _mm512_permutex2var_epi32(e, hi, o));
        }
      }
    } else {
      const __m512i val = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, v + ow));
      const __m512i high = _mm512_slli_epi32(val, 16);
      for (int ky = 0; ky < 2; ++ky) {
        const __m512i pair = _mm512_or_si512(_mm512_maskz_mov_epi32(hit[2 * ky], val),
                                             _mm512_maskz_mov_epi32(hit[2 * ky + 1], high));
        _mm512_mask_storeu_epi16(rows[ky], first_lanes32(2 * n), pair);
      }
    }
  }
}

// NCHW scatter of short rows (W == 2 OW, H == 2 OH, OW <= half the lanes: DeconvNet's
// 14x14 maps, and 28x28 ones in 16-bit types), by permutes over several pooled rows at
// once. The pooled values and their output rows are contiguous across rows and planes, so
// a chunk of `per` pooled rows (up to two vectors of values) maps to 4 x that many outputs
// by a fixed pattern: output lane l of vector j takes value idx[j][l] when that value's
// switch equals code[j][l] (its position 2 ky + kx in the window), else zero. Per output
// vector: a permute of the switches, a compare, a zero-masked permute of the values and a
// whole-vector store. The row-pair kernel above spends ~20 instructions and two partial
// stores on each 7-wide pooled row instead.
template <int kBytes>
struct PermuteLanes;

template <>
struct PermuteLanes<2> {
  static constexpr int kLanes = 32;
  using Lane = int16_t;
  using Mask = __mmask32;
  static Mask lanes(int64_t n) {
    return n <= 0 ? 0 : first_lanes32(n);
  }
  static __m512i load(const void* p, Mask m) {
    return _mm512_maskz_loadu_epi16(m, p);
  }
  static __m512i load_switches(const uint8_t* s, Mask m) {
    return _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(m, s));
  }
  static __m512i permute(__m512i lo, __m512i idx, __m512i hi) {
    return _mm512_permutex2var_epi16(lo, idx, hi);
  }
  static __m512i permute_or_zero(Mask k, __m512i lo, __m512i idx, __m512i hi) {
    return _mm512_maskz_permutex2var_epi16(k, lo, idx, hi);
  }
  static Mask equal(__m512i a, __m512i b) {
    return _mm512_cmpeq_epi16_mask(a, b);
  }
  static void store(void* p, Mask m, __m512i v) {
    _mm512_mask_storeu_epi16(p, m, v);
  }
};

template <>
struct PermuteLanes<4> {
  static constexpr int kLanes = 16;
  using Lane = int32_t;
  using Mask = __mmask16;
  static Mask lanes(int64_t n) {
    return n <= 0 ? 0 : first_lanes(n);
  }
  static __m512i load(const void* p, Mask m) {
    return _mm512_maskz_loadu_epi32(m, p);
  }
  static __m512i load_switches(const uint8_t* s, Mask m) {
    return _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, s));
  }
  static __m512i permute(__m512i lo, __m512i idx, __m512i hi) {
    return _mm512_permutex2var_epi32(lo, idx, hi);
  }
  static __m512i permute_or_zero(Mask k, __m512i lo, __m512i idx, __m512i hi) {
    return _mm512_maskz_permutex2var_epi32(k, lo, idx, hi);
  }
  static Mask equal(__m512i a, __m512i b) {
    return _mm512_cmpeq_epi32_mask(a, b);
  }
  static void store(void* p, Mask m, __m512i v) {
    _mm512_mask_storeu_epi32(p, m, v);
  }
};

// Whether scatter_short_rows_2x2 takes an NCHW scatter with these sizes: rows of up to half
// a vector, so that a chunk holds 4+ of them. With 1-2 rows a chunk (float32 28x28 and
// 56x56 maps, bfloat16 56x56) it was no faster than the row-pair kernel, or 5-20% slower.
template <typename T>
inline bool short_rows_by_permutes(int64_t H, int64_t W, int64_t OH, int64_t OW) {
  return kSupported<T> && H == 2 * OH && W == 2 * OW && OW <= PermuteLanes<sizeof(T)>::kLanes / 2;
}

// rows pooled rows of OW values (v, sw) to rows x 2 output rows of 2 OW values (out).
template <typename T>
void scatter_short_rows_2x2(const T* v, const uint8_t* sw, T* out, int64_t rows, int64_t OW) {
  using P = PermuteLanes<sizeof(T)>;
  constexpr int L = P::kLanes;
  constexpr int kMaxVectors = 8;  // 4 outputs for each of up to 2L values
  const int64_t W = 2 * OW;
  // Pooled rows per chunk: as many as two vectors hold, fewer if that makes every store a
  // whole vector (the next chunk then starts on a vector boundary too).
  int64_t per = 2 * L / OW;
  for (int64_t p = per; p >= 1; --p) {
    if (4 * p * OW % L == 0) {
      per = p;
      break;
    }
  }
  const int64_t chunk_out = 4 * per * OW;
  const int vectors = static_cast<int>((chunk_out + L - 1) / L);
  alignas(64) typename P::Lane idx_lanes[kMaxVectors][L];
  alignas(64) typename P::Lane code_lanes[kMaxVectors][L];
  for (int j = 0; j < vectors; ++j) {
    for (int l = 0; l < L; ++l) {
      const int64_t o = int64_t{j} * L + l;  // output offset in the chunk
      const int64_t r = o / (2 * W), ky = o % (2 * W) / W, ox = o % W;
      idx_lanes[j][l] = static_cast<typename P::Lane>(o < chunk_out ? r * OW + ox / 2 : 0);
      code_lanes[j][l] = static_cast<typename P::Lane>(o < chunk_out ? 2 * ky + ox % 2 : -1);
    }
  }
  __m512i idx[kMaxVectors], code[kMaxVectors];
  for (int j = 0; j < vectors; ++j) {
    idx[j] = _mm512_load_si512(idx_lanes[j]);
    code[j] = _mm512_load_si512(code_lanes[j]);
  }
  const int64_t chunks = (rows + per - 1) / per;
  at::parallel_for(0, chunks, grain_for(chunk_out), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t first_row = c * per;
      const int64_t n_in = std::min(per, rows - first_row) * OW, n_out = 4 * n_in;
      const T* vc = v + first_row * OW;
      const uint8_t* sc = sw + first_row * OW;
      T* oc = out + first_row * 2 * W;
      const typename P::Mask lo = P::lanes(n_in), hi = P::lanes(n_in - L);
      const __m512i v_lo = P::load(vc, lo), v_hi = P::load(vc + L, hi);
      const __m512i s_lo = P::load_switches(sc, lo), s_hi = P::load_switches(sc + L, hi);
      for (int j = 0; j < vectors && j * L < n_out; ++j) {
        const typename P::Mask hit = P::equal(P::permute(s_lo, idx[j], s_hi), code[j]);
        P::store(oc + j * L, P::lanes(n_out - j * L), P::permute_or_zero(hit, v_lo, idx[j], v_hi));
      }
    }
  });
}

// NCHW unpool backward (gather) of one pooled row of 2x2 stride-2 windows inside the input:
// o[ow] = (switch bit 1 ? r1 : r0)[2 ow + switch bit 0]. A vector of pooled values a step:
// the 2 x lanes input elements of each row under it, one two-source permute per row picking
// column 2 j + kx for lane j, a blend on ky. Returns the OR of the switches (above 3: one was
// bad). The scalar loop spent some 6 cycles a value on the dependent loads (one thread,
// 4x512x14x14 float32: 216 us, torch.gather 172).
template <typename T>
uint8_t gather_row_2x2(const T* r0, const T* r1, const uint8_t* s, T* o, int64_t OW) {
  using P = PermuteLanes<sizeof(T)>;
  constexpr int L = P::kLanes;
  alignas(64) typename P::Lane even_lanes[L];
  for (int l = 0; l < L; ++l) even_lanes[l] = static_cast<typename P::Lane>(2 * l);
  const __m512i even = _mm512_load_si512(even_lanes);
  __m512i worst = _mm512_setzero_si512();
  for (int64_t ow = 0; ow < OW; ow += L) {
    const int64_t n = std::min<int64_t>(L, OW - ow);
    const typename P::Mask m = P::lanes(n), lo = P::lanes(2 * n), hi = P::lanes(2 * n - L);
    const __m512i k = P::load_switches(s + ow, m);
    worst = _mm512_or_si512(worst, k);
    const T* const a = r0 + 2 * ow;
    const T* const b = r1 + 2 * ow;
    __m512i idx;
    typename P::Mask bottom;
    if constexpr (sizeof(T) == 4) {
      idx = _mm512_add_epi32(even, _mm512_and_si512(k, _mm512_set1_epi32(1)));
      bottom = _mm512_test_epi32_mask(k, _mm512_set1_epi32(2));
    } else {
      idx = _mm512_add_epi16(even, _mm512_and_si512(k, _mm512_set1_epi16(1)));
      bottom = _mm512_test_epi16_mask(k, _mm512_set1_epi16(2));
    }
    const __m512i top = P::permute(P::load(a, lo), idx, P::load(a + L, hi));
    const __m512i bot = P::permute(P::load(b, lo), idx, P::load(b + L, hi));
    if constexpr (sizeof(T) == 4) {
      P::store(o + ow, m, _mm512_mask_blend_epi32(bottom, top, bot));
    } else {
      P::store(o + ow, m, _mm512_mask_blend_epi16(bottom, top, bot));
    }
  }
  // Lanes of 16 or 32 bits, each at most 255: OR them as 32-bit lanes, then fold the halves.
  const uint32_t all = static_cast<uint32_t>(_mm512_reduce_or_epi32(worst));
  return static_cast<uint8_t>((all | (all >> 16)) & 0xFF);
}

// One pooled pixel's channels to its 2x2 block (dst: the four positions in raster order);
// the walk over pixels is pool_kernels_impl.h's scatter_nhwc_2x2.
template <typename T>
void scatter_pixel_2x2(const T* v, const uint8_t* s, T* const dst[4], int64_t C) {
  using R = RawLanes<sizeof(T)>;
  for (int64_t c = 0; c < C; c += R::kLanes) {
    void* const at[4] = {dst[0] + c, dst[1] + c, dst[2] + c, dst[3] + c};
    R::scatter(v + c, s + c, at, C - c);
  }
}

}  // namespace avx512_pool
