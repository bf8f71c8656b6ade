// Host-device building blocks shared by the CPU kernels, the CUDA kernels and the CUDA
// emulator (detectron2's HOST_DEVICE_INLINE habit).
//
// Everything here is compiled by both nvcc and the host compiler, so it may use only
// what both understand: no ATen, no std containers, no exceptions.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define DK_HD __host__ __device__
#define DK_HD_INLINE __host__ __device__ __forceinline__
#else
#define DK_HD
#define DK_HD_INLINE inline __attribute__((always_inline))
#endif

// Unroll the next loop on the GPU, so that a small array indexed by its counters stays in
// registers; the host compiler decides for itself.
#if defined(__CUDA_ARCH__)
#define DK_UNROLL _Pragma("unroll")
#else
#define DK_UNROLL
#endif

// Code in these headers is compiled once per CPU ISA (csrc/cpu/isa/*.cpp define
// CPU_CAPABILITY, as ATen's per-ISA kernels do). The ISA-named inline namespace keeps
// the AVX-512 copy of an inline function from replacing the baseline copy at link time.
#if defined(CPU_CAPABILITY)
#define DK_ISA_NAMESPACE_BEGIN inline namespace CPU_CAPABILITY {
#else
#define DK_ISA_NAMESPACE_BEGIN inline namespace base {
#endif
#define DK_ISA_NAMESPACE_END }

namespace deconvkernels {

// Plain data types live outside the ISA namespace: every ISA's code shares them.
// Geometry of one 2-D max pool: the unpooled extent (H, W) and the pooled one (OH, OW).
struct PoolGeom {
  int64_t kh, kw;  // kernel
  int64_t sh, sw;  // stride
  int64_t ph, pw;  // padding
  int64_t dh, dw;  // dilation
  int64_t H, W;    // input of the pool == output of the unpool
  int64_t OH, OW;  // output of the pool
};

// Element strides of an (N, C, H, W) tensor: any layout, views included.
struct Strides4 {
  int64_t n, c, h, w;
};

struct Coord4 {
  int64_t n, c, h, w;
};

// CUDA-style coordinates of one thread, passed explicitly to every kernel body so the
// same body runs under a real launch and under the CPU emulator.
struct Dim3 {
  unsigned x, y, z;
};

// Division by a divisor fixed at launch, as a multiply-high, an add and a shift
// (Granlund and Montgomery's round-up method; ATen's IntDivider does the same). On a GPU
// a 64-bit division is a ~70-instruction subroutine; decoding a 4-D coordinate took three
// per element, which made the elementwise kernels instruction-bound (measured on an H100:
// the unpool ran at 5% of copy bandwidth). Exact for dividends below 2^31 and divisors in
// [1, 2^31].
struct FastDivider {
  uint32_t divisor, magic, shift;
};

// The dividers of unravel()'s walk (C, A rows, B columns), for element numbers below 2^31.
// `usable` is false where the launcher found larger numbers: unravel_with then divides in
// 64 bits.
struct FastUnravel {
  FastDivider c, a, b;
  bool usable;
};

// Host side: the divider of d (d = 0 is treated as 1: a loop over nothing never divides).
inline FastDivider make_fast_divider(int64_t d) {
  const uint64_t dd = d < 1 ? 1 : static_cast<uint64_t>(d);
  uint32_t shift = 0;
  while (shift < 32 && (uint64_t(1) << shift) < dd) ++shift;
  const uint64_t magic = ((uint64_t(1) << 32) * ((uint64_t(1) << shift) - dd)) / dd + 1;
  return FastDivider{static_cast<uint32_t>(dd), static_cast<uint32_t>(magic), shift};
}

inline FastUnravel make_fast_unravel(int64_t C, int64_t A, int64_t B, bool usable) {
  return FastUnravel{make_fast_divider(C), make_fast_divider(A), make_fast_divider(B), usable};
}

// Whether element numbers (and the grid-stride step past the last one) stay below 2^31.
inline bool fits_fast_unravel(int64_t total, int64_t threads_in_grid) {
  return total + threads_in_grid < (int64_t(1) << 31);
}

struct ThreadCoord {
  Dim3 block;       // blockIdx
  Dim3 thread;      // threadIdx
  Dim3 block_dim;   // blockDim
  Dim3 grid_dim;    // gridDim
  DK_HD_INLINE int64_t global_x() const {
    return static_cast<int64_t>(block.x) * block_dim.x + thread.x;
  }
  DK_HD_INLINE int64_t stride_x() const {
    return static_cast<int64_t>(block_dim.x) * grid_dim.x;
  }
};

DK_ISA_NAMESPACE_BEGIN

DK_HD_INLINE int64_t offset_of(const Strides4& s, int64_t n, int64_t c, int64_t h, int64_t w) {
  return n * s.n + c * s.c + h * s.h + w * s.w;
}

// Linear element number -> (n, c, h, w), walking (N, C, A, B) in NCHW order or, when
// channels_last, in NHWC order (so consecutive threads write consecutive addresses).
DK_HD_INLINE Coord4 unravel(int64_t i, int64_t C, int64_t A, int64_t B, bool channels_last) {
  Coord4 r;
  if (channels_last) {
    r.c = i % C;
    i /= C;
    r.w = i % B;
    i /= B;
    r.h = i % A;
    r.n = i / A;
  } else {
    r.w = i % B;
    i /= B;
    r.h = i % A;
    i /= A;
    r.c = i % C;
    r.n = i / C;
  }
  return r;
}

DK_HD_INLINE uint32_t fast_div(uint32_t n, const FastDivider& f) {
#if defined(__CUDA_ARCH__)
  const uint32_t t = __umulhi(n, f.magic);
#else
  const uint32_t t = static_cast<uint32_t>((static_cast<uint64_t>(n) * f.magic) >> 32);
#endif
  return (t + n) >> f.shift;
}

// n / f.divisor, with the remainder in *rem.
DK_HD_INLINE uint32_t fast_divmod(uint32_t n, const FastDivider& f, int64_t* rem) {
  const uint32_t q = fast_div(n, f);
  *rem = n - q * f.divisor;
  return q;
}

// unravel(i, ...) for i below 2^31, with the dividers of `u`.
DK_HD_INLINE Coord4 fast_unravel(int64_t i, const FastUnravel& u, bool channels_last) {
  uint32_t n = static_cast<uint32_t>(i);
  Coord4 r;
  if (channels_last) {
    n = fast_divmod(n, u.c, &r.c);
    n = fast_divmod(n, u.b, &r.w);
    r.n = fast_divmod(n, u.a, &r.h);
  } else {
    n = fast_divmod(n, u.b, &r.w);
    n = fast_divmod(n, u.a, &r.h);
    r.n = fast_divmod(n, u.c, &r.c);
  }
  return r;
}

// The coordinate of element i: fast_unravel when the launcher found the numbers small.
DK_HD_INLINE Coord4 unravel_with(
    int64_t i, const FastUnravel& u, int64_t C, int64_t A, int64_t B, bool channels_last) {
  return u.usable ? fast_unravel(i, u, channels_last) : unravel(i, C, A, B, channels_last);
}

// The input position a switch names. False when the switch lies outside its window
// (>= kh * kw) or names a position in the padding or past the input's edge.
DK_HD_INLINE bool switch_position(
    const PoolGeom& g, int64_t oh, int64_t ow, int64_t sw, int64_t* ih, int64_t* iw) {
  if (sw >= g.kh * g.kw) return false;
  *ih = oh * g.sh - g.ph + (sw / g.kw) * g.dh;
  *iw = ow * g.sw - g.pw + (sw % g.kw) * g.dw;
  return *ih >= 0 && *ih < g.H && *iw >= 0 && *iw < g.W;
}

// The windows [lo, hi] (along one dimension) whose extent covers input position i.
// A window in that range contains i only if (i + p - o * s) is a multiple of d.
DK_HD_INLINE void windows_covering(
    int64_t i, int64_t k, int64_t s, int64_t p, int64_t d, int64_t out, int64_t* lo,
    int64_t* hi) {
  const int64_t a = i + p;  // >= 0
  const int64_t h = a / s;
  *hi = h < out - 1 ? h : out - 1;
  const int64_t b = a - (k - 1) * d;
  *lo = b <= 0 ? 0 : (b + s - 1) / s;
}

// Accumulation type: float for the 16-bit types (as ATen's opmath_type), else itself.
template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

template <typename T>
DK_HD_INLINE bool is_nan(T v) {
  return v != v;
}

DK_ISA_NAMESPACE_END
}  // namespace deconvkernels
