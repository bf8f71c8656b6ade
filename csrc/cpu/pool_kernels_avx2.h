// AVX2 scatter through the switches for DeconvNet's windows (2x2, stride 2, inside the
// output): the unpool forward and the pool backward, NCHW row pairs and NHWC pixels, on raw
// bits (float, bfloat16, half alike; -0 and NaN payloads go through untouched). Included by
// pool_kernels_impl.h inside its namespace, only in the AVX2 build.
//
// Why not at::vec here: its form (Lanes<T> in pool_kernels_impl.h) widens 16-bit values to
// float, converts the switch bytes to float lanes, and takes partial vectors through
// scalar copies; on a machine without AVX-512 the unpool ran below PyTorch's scalar loop
// (2-core Xeon, kernels forced to AVX2 and PyTorch's to AVX2 too, torch/ours at
// 4x64x224x224 / 4x128x112x112: float32 NCHW 1.71 / 0.81, bfloat16 NCHW 0.27 / 0.29). Here
// a value vector is ANDed with the four "switch == k" lanes and interleaved into the two
// output rows: every output element written once, whole vectors in the row body.
#pragma once

#if !defined(CPU_CAPABILITY_AVX2)
#error "pool_kernels_avx2.h is for the AVX2 build only"
#endif

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <tuple>
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

// The first n (0..8) doubleword lanes, as a maskload / maskstore mask.
inline __m256i first_dwords(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// A pooled row of OW values to both of its output rows (2 OW elements each). The last
// OW % kLanes values (whole rows of 7 or 14 at 14x14 / 28x28 maps) are read by a short
// copy loop and written by masked stores, exactly their 2 x 2 n elements (a row's 2 n
// elements are n or 2 n doublewords). Copying them through the stack with memcpy instead
// cost 3-4 library calls a row: 4x512x14x14 float32 took 0.14 ms.
template <typename T>
void scatter_row_pair_2x2(const T* vr, const uint8_t* sr, T* out0, T* out1, int64_t OW) {
  constexpr int kBytes = sizeof(T);
  constexpr int64_t L = Bits<kBytes>::kLanes;
  int64_t ow = 0;
  for (; ow + L <= OW; ow += L) {
    const RowPair<kBytes> p(load_bits(vr + ow), Bits<kBytes>::switches(sr + ow));
    store_bits(out0 + 2 * ow, p.r0[0]);
    store_bits(out0 + 2 * ow + L, p.r0[1]);
    store_bits(out1 + 2 * ow, p.r1[0]);
    store_bits(out1 + 2 * ow + L, p.r1[1]);
  }
  if (ow < OW) {
    const int64_t n = OW - ow;
    alignas(32) T v[L] = {};
    alignas(16) uint8_t s[16] = {};
    for (int64_t i = 0; i < n; ++i) {
      v[i] = vr[ow + i];
      s[i] = sr[ow + i];
    }
    const RowPair<kBytes> p(load_bits(v), Bits<kBytes>::switches(s));
    const int64_t dwords = 2 * n * kBytes / 4;  // of each output row
    const __m256i m0 = first_dwords(std::min<int64_t>(dwords, 8));
    const __m256i m1 = first_dwords(std::max<int64_t>(dwords - 8, 0));
    auto* o0 = reinterpret_cast<int*>(out0 + 2 * ow);
    auto* o1 = reinterpret_cast<int*>(out1 + 2 * ow);
    _mm256_maskstore_epi32(o0, m0, p.r0[0]);
    _mm256_maskstore_epi32(o0 + 8, m1, p.r0[1]);
    _mm256_maskstore_epi32(o1, m0, p.r1[0]);
    _mm256_maskstore_epi32(o1 + 8, m1, p.r1[1]);
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
    const int64_t n = C - c;
    alignas(32) T v[L] = {};
    alignas(32) T o[L];
    alignas(16) uint8_t s[16] = {};
    std::memcpy(v, vp + c, n * sizeof(T));
    std::memcpy(s, sp + c, n);
    const __m256i vv = load_bits(v), ss = Bits<kBytes>::switches(s);
    for (int k = 0; k < 4; ++k) {
      store_bits(o, where_switch<kBytes>(vv, ss, k));
      std::memcpy(dst[k] + c, o, n * sizeof(T));
    }
  }
}

}  // namespace avx2_pool
