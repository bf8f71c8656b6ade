// The per-ISA body of unpool_deconv_fast.h. One task per output row (n, zh): the row's
// accumulator (Wo x Cout, accumulation type) stays in L1/L2 while every pooled value that
// reaches the row adds value * weight[ci, :, a, b] to it, vectorised along the output
// channels. Each task owns its row, and adds in a fixed order: deterministic, no atomics.
#pragma once

#ifndef CPU_CAPABILITY
#error "unpool_deconv_fast_impl.h is compiled per ISA: define CPU_CAPABILITY"
#endif

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#if defined(DK_BF16_DOT)
#include <immintrin.h>
#endif

#include "unpool_deconv_fast.h"

namespace deconvkernels::cpu::CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// The pooled values that reach output row zh, sorted without branches into lists per
// (tap row ka, pooled column ow, chunk of kChunk input channels): those landing in column 0
// of their window fill the list from the front, those in column 1 from the back. Which
// values reach the row, and at which column, depends on each switch: as branches that is
// a coin flip per value (half the time mispredicted). `Stored` is what the kernel wants
// of a value (the accumulation type, or bfloat16 bits for the dot-product kernels).
constexpr int64_t kChunk = 64;

template <typename Stored>
struct RowEntries {
  int64_t chunks = 0, per_ka = 0;
  std::vector<int32_t> ci;
  std::vector<Stored> v;
  std::vector<int32_t> count0, count1;

  int64_t base(int64_t ka, int64_t ow, int64_t ch) const {
    return ka * per_ka + (ow * chunks + ch) * kChunk;
  }
  int64_t slot(int64_t ka, int64_t ow, int64_t ch, int64_t OW) const {
    return (ka * OW + ow) * chunks + ch;
  }
};

template <typename T, typename Stored, typename Convert>
void sort_row_entries(const UnpoolDeconvFastArgs& a, int64_t n, int64_t zh,
                      RowEntries<Stored>& e, Convert convert) {
  const T* y = static_cast<const T*>(a.y);
  e.chunks = (a.Cin + kChunk - 1) / kChunk;
  e.per_ka = a.OW * e.chunks * kChunk;
  e.ci.resize(a.kh * e.per_ka);
  e.v.resize(a.kh * e.per_ka);
  e.count0.assign(a.kh * a.OW * e.chunks, 0);
  e.count1.assign(a.kh * a.OW * e.chunks, 0);
  for (int64_t ka = 0; ka < a.kh; ++ka) {
    const int64_t ih = zh + a.ph - ka;
    if (ih < 0 || ih >= 2 * a.OH) continue;  // rows past the windows stay zero
    const int64_t oh = ih >> 1, ky = ih & 1;
    for (int64_t ow = 0; ow < a.OW; ++ow) {
      const T* yp = y + n * a.ys.n + oh * a.ys.h + ow * a.ys.w;
      const uint8_t* sp = a.switches + n * a.ss.n + oh * a.ss.h + ow * a.ss.w;
      for (int64_t ch = 0; ch < e.chunks; ++ch) {
        const int64_t base = e.base(ka, ow, ch);
        int32_t k0 = 0, k1 = 0;
        for (int64_t ci = ch * kChunk; ci < std::min<int64_t>(a.Cin, (ch + 1) * kChunk); ++ci) {
          const int64_t sw = sp[ci * a.ss.c];
          const Stored v = convert(yp[ci * a.ys.c]);
          const int64_t front = base + k0, back = base + kChunk - 1 - k1;
          e.ci[front] = static_cast<int32_t>(ci);
          e.v[front] = v;
          e.ci[back] = static_cast<int32_t>(ci);
          e.v[back] = v;
          k0 += sw == 2 * ky;
          k1 += sw == 2 * ky + 1;
        }
        e.count0[e.slot(ka, ow, ch, a.OW)] = k0;
        e.count1[e.slot(ka, ow, ch, a.OW)] = k1;
      }
    }
  }
}

// The weight gradient's schedule for one block of output channels, shared by the float and
// the bfloat16 kernels (their register tiles differ). With `direct`, one tile per input
// channel sums the whole batch and is stored once, converted, into the result; otherwise a
// tile sums `rows_per_chunk` pooled rows of one image and is added to the float buffer.
// The kernel's zero(tile), accumulate(tile, n, oh0, oh1, ci), store(tile, ci) and
// add(tile, ci) do the work; the order of the sums is fixed here.
template <typename Tile, typename Zero, typename Accumulate, typename Store, typename Add>
void weight_grad_schedule(const UnpoolDeconvFastArgs& a, int64_t rows_per_chunk, bool direct,
                          Zero zero, Accumulate accumulate, Store store, Add add) {
  if (direct) {
    for (int64_t ci = 0; ci < a.Cin; ++ci) {
      Tile acc;
      zero(acc);
      for (int64_t n = 0; n < a.N; ++n) accumulate(acc, n, 0, a.OH, ci);
      store(acc, ci);
    }
    return;
  }
  for (int64_t n = 0; n < a.N; ++n) {
    for (int64_t oh0 = 0; oh0 < a.OH; oh0 += rows_per_chunk) {
      const int64_t oh1 = std::min<int64_t>(a.OH, oh0 + rows_per_chunk);
      for (int64_t ci = 0; ci < a.Cin; ++ci) {
        Tile acc;
        zero(acc);
        accumulate(acc, n, oh0, oh1, ci);
        add(acc, ci);
      }
    }
  }
}

// Register-blocked accumulation for one output row, kernel width KW and kBlock vectors of
// output channels: a pooled column ow reaches the KW + 1 output pixels starting at
// 2 * ow - pw whatever its switch, so their accumulators for a block of channels live in
// registers while all (tap row, input channel) contributions are added; then they are
// added to the row. One weight load per multiply-add, none of the accumulator. Input
// channels go in chunks of kChunk, so that the weights of one (channel block, chunk) pair
// (kh * KW * 64 * kBlock vectors, 147 KiB for 3x3 float) stay in L2 across the row.
template <typename T, int KW>
void accumulate_row_blocked(
    const UnpoolDeconvFastArgs& a, int64_t n, int64_t zh, typename AccType<T>::type* row,
    RowEntries<typename AccType<T>::type>& e) {
  using acc_t = typename AccType<T>::type;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  constexpr int kBlock = 4;
  const acc_t* wt = static_cast<const acc_t*>(a.weight_t);
  const int64_t Cout = a.Cout, tap_stride = a.Cin * Cout;
  sort_row_entries<T>(a, n, zh, e, [](T v) { return static_cast<acc_t>(v); });
  for (int64_t c0 = 0; c0 < Cout; c0 += kBlock * V) {
    for (int64_t ch = 0; ch < e.chunks; ++ch) {
      for (int64_t ow = 0; ow < a.OW; ++ow) {
        Vec acc[KW + 1][kBlock];
        for (int p = 0; p <= KW; ++p)
          for (int j = 0; j < kBlock; ++j) acc[p][j] = Vec(acc_t(0));
        for (int64_t ka = 0; ka < a.kh; ++ka) {
          const int64_t slot = e.slot(ka, ow, ch, a.OW), base = e.base(ka, ow, ch);
          const acc_t* wa = wt + ka * KW * tap_stride + c0;
          for (int64_t i = base, stop = base + e.count0[slot]; i < stop; ++i) {  // column 0
            const Vec v(e.v[i]);
            const acc_t* w = wa + e.ci[i] * Cout;
            for (int b = 0; b < KW; ++b)
              for (int j = 0; j < kBlock; ++j)
                acc[b][j] = at::vec::fmadd(v, Vec::loadu(w + b * tap_stride + j * V), acc[b][j]);
          }
          for (int64_t i = base + kChunk - e.count1[slot]; i < base + kChunk; ++i) {  // column 1
            const Vec v(e.v[i]);
            const acc_t* w = wa + e.ci[i] * Cout;
            for (int b = 0; b < KW; ++b)
              for (int j = 0; j < kBlock; ++j)
                acc[b + 1][j] =
                    at::vec::fmadd(v, Vec::loadu(w + b * tap_stride + j * V), acc[b + 1][j]);
          }
        }
        for (int p = 0; p <= KW; ++p) {
          const int64_t zw = 2 * ow - a.pw + p;
          if (zw < 0 || zw >= a.Wo) continue;
          acc_t* dst = row + zw * Cout + c0;
          for (int j = 0; j < kBlock; ++j)
            (Vec::loadu(dst + j * V) + acc[p][j]).store(dst + j * V);
        }
      }
    }
  }
}

#if defined(DK_BF16_DOT)
#include "unpool_deconv_bf16_dot.h"
constexpr bool kBf16Dot = true;
#else
constexpr bool kBf16Dot = false;
#endif

// Whether T's kernels take bfloat16 weights and grad_output (the table's bf16_operands).
template <typename T>
constexpr bool kBf16Operands = kBf16Dot && std::is_same_v<T, c10::BFloat16>;

// The element type of `weight_t` and `grad_nhwc` for T's kernels.
template <typename T>
using operand_t =
    std::conditional_t<kBf16Operands<T>, c10::BFloat16, typename AccType<T>::type>;

// n (<= V) operand values as a vector of the accumulation type, zeros after them.
template <typename T>
Vectorized<typename AccType<T>::type> load_operand(const operand_t<T>* p, int64_t n) {
  using Vec = Vectorized<typename AccType<T>::type>;
  if constexpr (std::is_same_v<operand_t<T>, typename AccType<T>::type>) {
    return n >= Vec::size() ? Vec::loadu(p) : Vec::loadu(p, n);
  } else {
    __at_align__ float lanes[Vec::size()] = {};
    for (int64_t l = 0; l < std::min<int64_t>(n, Vec::size()); ++l) lanes[l] = float(p[l]);
    return Vec::loadu(lanes);
  }
}

template <typename T>
void forward_rows(const UnpoolDeconvFastArgs& a) {
  using acc_t = typename AccType<T>::type;
  using Vec = Vectorized<acc_t>;
  using Stored = std::conditional_t<kBf16Operands<T>, uint16_t, acc_t>;
  constexpr int64_t V = Vec::size();
  const T* y = static_cast<const T*>(a.y);
  const operand_t<T>* wt = static_cast<const operand_t<T>*>(a.weight_t);
  const acc_t* bias = static_cast<const acc_t*>(a.bias);
  T* out = static_cast<T*>(a.out);
  const int64_t Cout = a.Cout;
  // The register-blocked path covers DeconvNet's layers (kernel 1 or 3; float: channels in
  // multiples of four vectors); anything else adds each contribution to the row directly.
  const bool blocked_channels = kBf16Operands<T> || Cout % (4 * V) == 0;
  const int64_t blocked_kw = (blocked_channels && (a.kw == 1 || a.kw == 3)) ? a.kw : 0;
  at::parallel_for(0, a.N * a.Ho, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row(a.Wo * Cout);
    RowEntries<Stored> entries;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / a.Ho, zh = task % a.Ho;
      for (int64_t zw = 0; zw < a.Wo; ++zw)
        for (int64_t co = 0; co < Cout; ++co)
          row[zw * Cout + co] = bias != nullptr ? bias[co] : acc_t(0);
      if constexpr (kBf16Operands<T>) {
#if defined(DK_BF16_DOT)
        if (blocked_kw == 1) {
          accumulate_row_bf16dot<1>(a, n, zh, row.data(), entries);
        } else if (blocked_kw == 3) {
          accumulate_row_bf16dot<3>(a, n, zh, row.data(), entries);
        }
#endif
      } else {
        if (blocked_kw == 1) {
          accumulate_row_blocked<T, 1>(a, n, zh, row.data(), entries);
        } else if (blocked_kw == 3) {
          accumulate_row_blocked<T, 3>(a, n, zh, row.data(), entries);
        }
      }
      for (int64_t ka = 0; blocked_kw == 0 && ka < a.kh; ++ka) {
        const int64_t ih = zh + a.ph - ka;  // stride 1, dilation 1
        if (ih < 0 || ih >= 2 * a.OH) continue;  // rows past the windows stay zero
        const int64_t oh = ih >> 1, ky = ih & 1;
        for (int64_t ci = 0; ci < a.Cin; ++ci) {
          const T* yr = y + n * a.ys.n + ci * a.ys.c + oh * a.ys.h;
          const uint8_t* sr = a.switches + n * a.ss.n + ci * a.ss.c + oh * a.ss.h;
          const operand_t<T>* wa = wt + (ka * a.kw * a.Cin + ci) * Cout;
          for (int64_t ow = 0; ow < a.OW; ++ow) {
            const int64_t s = sr[ow * a.ss.w];
            if ((s >> 1) != ky) continue;  // this value went to the window's other row
            const Vec v(static_cast<acc_t>(yr[ow * a.ys.w]));
            const int64_t iw = 2 * ow + (s & 1);
            for (int64_t kb = 0; kb < a.kw; ++kb) {
              const int64_t zw = iw - a.pw + kb;
              if (zw < 0 || zw >= a.Wo) continue;
              acc_t* dst = row.data() + zw * Cout;
              const operand_t<T>* w = wa + kb * a.Cin * Cout;
              int64_t co = 0;
              for (; co + V <= Cout; co += V)
                at::vec::fmadd(v, load_operand<T>(w + co, V), Vec::loadu(dst + co))
                    .store(dst + co);
              if (co < Cout) {
                const int64_t r = Cout - co;
                at::vec::fmadd(v, load_operand<T>(w + co, r), Vec::loadu(dst + co, r))
                    .store(dst + co, r);
              }
            }
          }
        }
      }
      T* orow = out + n * a.os.n + zh * a.os.h;
      for (int64_t co = 0; co < Cout; ++co)
        for (int64_t zw = 0; zw < a.Wo; ++zw)
          orow[co * a.os.c + zw * a.os.w] = static_cast<T>(row[zw * Cout + co]);
    }
  });
}

// grad_y: one dot product of length kh * kw * Cout per pooled value, at the position its
// switch names. Eight neighbouring windows of one channel go together so each weight
// vector loaded serves eight multiply-adds; a tap outside the output reads a zero row.
template <typename T>
void backward_y_rows(const UnpoolDeconvFastArgs& a, const UnpoolDeconvFastGrads& gr) {
#if defined(DK_BF16_DOT)
  if constexpr (kBf16Operands<T>) return backward_y_bf16dot(a, gr);
#endif
  using acc_t = typename AccType<T>::type;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  constexpr int kWindows = 8;
  const acc_t* g = static_cast<const acc_t*>(gr.grad_nhwc);
  const acc_t* wt = static_cast<const acc_t*>(a.weight_t);
  T* gy = static_cast<T*>(gr.grad_y);
  const int64_t Cout = a.Cout;
  const std::vector<acc_t> zeros(Cout, acc_t(0));
  // Channels fastest: the grad_output rows a pooled row reaches (kh + 1 rows) stay in L2
  // while every input channel reads them.
  at::parallel_for(0, a.N * a.Cin * a.OH, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t ci = task % a.Cin, oh = (task / a.Cin) % a.OH, n = task / (a.OH * a.Cin);
      const uint8_t* sp = a.switches + n * a.ss.n + ci * a.ss.c + oh * a.ss.h;
      const acc_t* gn = g + n * a.Ho * a.Wo * Cout;
      for (int64_t ow0 = 0; ow0 < a.OW; ow0 += kWindows) {
        const int64_t nw = std::min<int64_t>(kWindows, a.OW - ow0);
        int64_t ih[kWindows], iw[kWindows];
        for (int j = 0; j < kWindows; ++j) {
          const int64_t s = j < nw ? sp[(ow0 + j) * a.ss.w] : 0;
          ih[j] = 2 * oh + (s >> 1);
          iw[j] = 2 * (ow0 + j) + (s & 1);
        }
        Vec acc[kWindows];
        for (int j = 0; j < kWindows; ++j) acc[j] = Vec(acc_t(0));
        // Away from the borders every tap of every window is inside the output: then the
        // taps' addresses are one base per window plus one offset per tap.
        bool interior = nw == kWindows;
        const acc_t* base[kWindows];
        for (int j = 0; j < kWindows; ++j) {
          const int64_t zh0 = ih[j] - a.ph, zw0 = iw[j] - a.pw;
          interior = interior && zh0 >= 0 && zh0 + a.kh <= a.Ho && zw0 >= 0 && zw0 + a.kw <= a.Wo;
          base[j] = gn + (zh0 * a.Wo + zw0) * Cout;
        }
        for (int64_t ka = 0; ka < a.kh; ++ka) {
          for (int64_t kb = 0; kb < a.kw; ++kb) {
            const acc_t* src[kWindows];
            if (interior) {
              const int64_t tap = (ka * a.Wo + kb) * Cout;
              for (int j = 0; j < kWindows; ++j) src[j] = base[j] + tap;
            } else {
              for (int j = 0; j < kWindows; ++j) {
                const int64_t zh = ih[j] - a.ph + ka, zw = iw[j] - a.pw + kb;
                const bool in = j < nw && zh >= 0 && zh < a.Ho && zw >= 0 && zw < a.Wo;
                src[j] = in ? gn + (zh * a.Wo + zw) * Cout : zeros.data();
              }
            }
            const acc_t* wrow = wt + ((ka * a.kw + kb) * a.Cin + ci) * Cout;
            int64_t co = 0;
            for (; co + V <= Cout; co += V) {
              const Vec wv = Vec::loadu(wrow + co);
              for (int j = 0; j < kWindows; ++j)
                acc[j] = at::vec::fmadd(Vec::loadu(src[j] + co), wv, acc[j]);
            }
            if (co < Cout) {
              const int64_t r = Cout - co;
              const Vec wv = Vec::loadu(wrow + co, r);
              for (int j = 0; j < kWindows; ++j)
                acc[j] = at::vec::fmadd(Vec::loadu(src[j] + co, r), wv, acc[j]);
            }
          }
        }
        for (int j = 0; j < nw; ++j) {
          const acc_t sum =
              at::vec::vec_reduce_all<acc_t>([](Vec& u, Vec& w) { return u + w; }, acc[j]);
          gy[n * gr.gys.n + ci * gr.gys.c + oh * gr.gys.h + (ow0 + j) * gr.gys.w] =
              static_cast<T>(sum);
        }
      }
    }
  });
}

// grad_weight for a K x K kernel: each task owns a block of output channels (so no two
// tasks write the same element) and walks batch, chunks of pooled rows and input channels
// in that order; the K * K taps of kVecs channel vectors are accumulated in registers
// over a chunk of pooled rows, then added to the (Cin, K, K, Cout) buffer. kFull: the
// block is kVecs whole vectors (no lane counts, so the accumulators stay in registers).
template <typename T, int K, bool kFull>
void backward_weight_block(
    const UnpoolDeconvFastArgs& a, const UnpoolDeconvFastGrads& gr, int64_t co0,
    int64_t rows_per_chunk, bool direct) {
  using acc_t = typename AccType<T>::type;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  constexpr int kVecs = 2;
  using Tile = Vec[K * K][kVecs];
  const T* y = static_cast<const T*>(a.y);
  const acc_t* g = static_cast<const acc_t*>(gr.grad_nhwc);
  const int64_t Cout = a.Cout;
  int64_t count[kVecs];
  for (int j = 0; j < kVecs; ++j)
    count[j] = kFull ? V : std::clamp<int64_t>(Cout - co0 - j * V, 0, V);
  auto load = [&](const acc_t* p, int j) {
    return kFull ? Vec::loadu(p) : Vec::loadu(p, count[j]);
  };
  auto zero = [&](Tile& acc) {
    for (int t = 0; t < K * K; ++t)
      for (int j = 0; j < kVecs; ++j) acc[t][j] = Vec(acc_t(0));
  };
  // Adds pooled rows [oh0, oh1) of image n, channel ci, to the register tile.
  auto accumulate = [&](Tile& acc, int64_t n, int64_t oh0, int64_t oh1, int64_t ci) {
    const acc_t* gn = g + n * a.Ho * a.Wo * Cout + co0;
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      const T* yr = y + n * a.ys.n + ci * a.ys.c + oh * a.ys.h;
      const uint8_t* sr = a.switches + n * a.ss.n + ci * a.ss.c + oh * a.ss.h;
      for (int64_t ow = 0; ow < a.OW; ++ow) {
        const int64_t s = sr[ow * a.ss.w];
        const Vec v(static_cast<acc_t>(yr[ow * a.ys.w]));
        const int64_t ih = 2 * oh + (s >> 1), iw = 2 * ow + (s & 1);
        for (int ka = 0; ka < K; ++ka) {
          const int64_t zh = ih - a.ph + ka;
          if (zh < 0 || zh >= a.Ho) continue;
          for (int kb = 0; kb < K; ++kb) {
            const int64_t zw = iw - a.pw + kb;
            if (zw < 0 || zw >= a.Wo) continue;
            const acc_t* src = gn + (zh * a.Wo + zw) * Cout;
            for (int j = 0; j < kVecs; ++j)
              acc[ka * K + kb][j] = at::vec::fmadd(v, load(src + j * V, j), acc[ka * K + kb][j]);
          }
        }
      }
    }
  };
  T* out = static_cast<T*>(gr.grad_weight);
  acc_t* dw = static_cast<acc_t*>(gr.grad_weight_c);
  auto store = [&](const Tile& acc, int64_t ci) {  // into (Cin, Cout, K, K), converted
    for (int t = 0; t < K * K; ++t) {
      for (int j = 0; j < kVecs; ++j) {
        __at_align__ acc_t lanes[V];
        acc[t][j].store(lanes);
        for (int64_t l = 0; l < count[j]; ++l)
          out[(ci * Cout + co0 + j * V + l) * (K * K) + t] = static_cast<T>(lanes[l]);
      }
    }
  };
  auto add = [&](const Tile& acc, int64_t ci) {  // to the (Cin, K, K, Cout) buffer
    for (int t = 0; t < K * K; ++t) {
      acc_t* dst = dw + (ci * K * K + t) * Cout + co0;
      for (int j = 0; j < kVecs; ++j) {
        const Vec sum = load(dst + j * V, j) + acc[t][j];
        kFull ? sum.store(dst + j * V) : sum.store(dst + j * V, count[j]);
      }
    }
  };
  weight_grad_schedule<Tile>(a, rows_per_chunk, direct, zero, accumulate, store, add);
}

template <typename T, int K>
void backward_weight_blocks(const UnpoolDeconvFastArgs& a, const UnpoolDeconvFastGrads& gr) {
  using acc_t = typename AccType<T>::type;
  constexpr int64_t V = Vectorized<acc_t>::size();
  constexpr int64_t kBlockLanes = 2 * V;
  const int64_t blocks = (a.Cout + kBlockLanes - 1) / kBlockLanes;
  // Pooled rows per pass over the input channels: their grad_output slice for one channel
  // block (about K + 1 rows each) stays in L2 (~256 KiB) while every channel reads it,
  // and the per-channel accumulators are flushed once per pass.
  const int64_t slice_row = (K + 1) * a.Wo * kBlockLanes * static_cast<int64_t>(sizeof(acc_t));
  const int64_t rows_per_chunk = std::max<int64_t>(1, (int64_t(256) << 10) / slice_row);
  const bool direct = weight_grad_direct(a, static_cast<int64_t>(sizeof(operand_t<T>)));
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t co0 = blk * kBlockLanes;
      if constexpr (kBf16Operands<T>) {
#if defined(DK_BF16_DOT)
        static_assert(kBlockLanes == 32, "the dot-product tile is 32 channels");
        if (co0 + kBlockLanes <= a.Cout) {
          backward_weight_block_bf16dot<K, true>(a, gr, co0, rows_per_chunk, direct);
        } else {
          backward_weight_block_bf16dot<K, false>(a, gr, co0, rows_per_chunk, direct);
        }
#endif
      } else if (co0 + kBlockLanes <= a.Cout) {
        backward_weight_block<T, K, true>(a, gr, co0, rows_per_chunk, direct);
      } else {
        backward_weight_block<T, K, false>(a, gr, co0, rows_per_chunk, direct);
      }
    }
  });
}

template <typename T>
void backward_weight_rows(const UnpoolDeconvFastArgs& a, const UnpoolDeconvFastGrads& gr) {
  if (a.kh == 3 && a.kw == 3) return backward_weight_blocks<T, 3>(a, gr);
  if (a.kh == 1 && a.kw == 1) return backward_weight_blocks<T, 1>(a, gr);
  TORCH_CHECK(false, "unpool_deconv2d: the fast weight gradient takes 1x1 or 3x3 kernels");
}

void backward_y(const UnpoolDeconvFastArgs& a, const UnpoolDeconvFastGrads& gr) {
  switch (a.dtype) {
    case ScalarKind::kFloat:
      return backward_y_rows<float>(a, gr);
    case ScalarKind::kDouble:
      return backward_y_rows<double>(a, gr);
    case ScalarKind::kHalf:
      return backward_y_rows<c10::Half>(a, gr);
    case ScalarKind::kBFloat16:
      return backward_y_rows<c10::BFloat16>(a, gr);
  }
}

void backward_weight(const UnpoolDeconvFastArgs& a, const UnpoolDeconvFastGrads& gr) {
  switch (a.dtype) {
    case ScalarKind::kFloat:
      return backward_weight_rows<float>(a, gr);
    case ScalarKind::kDouble:
      return backward_weight_rows<double>(a, gr);
    case ScalarKind::kHalf:
      return backward_weight_rows<c10::Half>(a, gr);
    case ScalarKind::kBFloat16:
      return backward_weight_rows<c10::BFloat16>(a, gr);
  }
}

void forward(const UnpoolDeconvFastArgs& a) {
  switch (a.dtype) {
    case ScalarKind::kFloat:
      return forward_rows<float>(a);
    case ScalarKind::kDouble:
      return forward_rows<double>(a);
    case ScalarKind::kHalf:
      return forward_rows<c10::Half>(a);
    case ScalarKind::kBFloat16:
      return forward_rows<c10::BFloat16>(a);
  }
}

}  // namespace

const UnpoolDeconvKernelTable& unpool_deconv_kernel_table() {
  static const UnpoolDeconvKernelTable table{kBf16Dot, &forward, &backward_y, &backward_weight};
  return table;
}

}  // namespace deconvkernels::cpu::CPU_CAPABILITY
