// bfloat16 kernels of the fused op on vdpbf16ps (AVX512-BF16), for the AVX512_BF16 build
// of unpool_deconv_fast_impl.h (DK_BF16_DOT). The instruction adds to each float lane the
// products of one *pair* of bfloat16 values: acc[i] += a[2i] * b[2i] + a[2i + 1] * b[2i + 1],
// twice the multiply-adds of a float FMA per instruction, from half the bytes. So the
// operands stay in bfloat16 (weights, grad_output) and each kernel pairs its reduction:
//
// * forward and grad-weight reduce over sparse, switch-chosen terms, so they take the terms
//   two at a time: the pair's two values are broadcast as one (v1, v2) dword and the two
//   operand rows are interleaved in registers (vpunpck{l,h}wd). The interleave permutes the
//   lanes within each 128-bit lane; `unpermute` restores channel order when a tile leaves
//   the registers. A term without a partner is paired with zeros (never with a second read
//   of the same row: 0 * inf would turn an inf into NaN).
// * grad-y reduces over output channels, which are contiguous in both operands: plain
//   dot products of bfloat16 rows.
//
// Products of two bfloat16 values are exact in float and summed in float as the FMA
// kernels do; the instruction treats denormal inputs as zero (oneDNN's bfloat16
// convolutions use the same instruction).
//
// Included by unpool_deconv_fast_impl.h inside its kernel namespace, after RowEntries and
// sort_row_entries (so no includes or namespaces of its own).
#pragma once

#if !defined(DK_BF16_DOT)
#error "unpool_deconv_bf16_dot.h needs the AVX512_BF16 build (DK_BF16_DOT, -mavx512bf16)"
#endif

inline uint16_t bf16_bits(c10::BFloat16 v) {
  return v.x;
}

// (v1, v2) as the dword every lane of the broadcast holds: v1 in the low half.
inline __m512i broadcast_pair(uint16_t v1, uint16_t v2) {
  return _mm512_set1_epi32(static_cast<int32_t>(uint32_t(v1) | (uint32_t(v2) << 16)));
}

inline __m512 dot_pairs(__m512 acc, __m512i a, __m512i b) {
  return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}

// Lanes of the first n (<= 32) bfloat16 values at p; the others zero.
inline __mmask32 mask32(int64_t n) {
  return n >= 32 ? ~__mmask32(0) : n <= 0 ? __mmask32(0) : (__mmask32(1) << n) - 1;
}
inline __mmask16 mask16(int64_t n) {
  return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

// After dot products on vpunpcklwd / vpunpckhwd operands, `lo` lane 4L + i holds channel
// 8L + i and `hi` lane 4L + i channel 8L + 4 + i (L: 128-bit lane, i < 4). Returns
// channels 0-15 in `first` and 16-31 in `second`.
inline void unpermute(__m512 lo, __m512 hi, __m512& first, __m512& second) {
  const __m512i idx_first =
      _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i idx_second =
      _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  first = _mm512_permutex2var_ps(lo, idx_first, hi);
  second = _mm512_permutex2var_ps(lo, idx_second, hi);
}

// dst[0:n] += v (n <= 16)
inline void add_to(float* dst, __m512 v, int64_t n) {
  if (n >= 16) {
    _mm512_storeu_ps(dst, _mm512_add_ps(_mm512_loadu_ps(dst), v));
  } else if (n > 0) {
    const __mmask16 m = mask16(n);
    _mm512_mask_storeu_ps(dst, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, dst), v));
  }
}

// ---------------------------------------------------------------------------- forward

// The terms [first, stop) of one list, two at a time, into the accumulators of output
// pixels COL .. COL + KW - 1 of the tile (a column-0 list feeds pixels 0..KW-1, a
// column-1 list pixels 1..KW). Tile: KW + 1 pixels x 64 channels (two 32-channel
// groups, each a lo/hi accumulator pair).
template <int KW, int COL, bool kFull>
inline void add_term_pairs(__m512 (&acc)[KW + 1][4], const RowEntries<uint16_t>& e,
                           int64_t first, int64_t stop, const uint16_t* wa, int64_t Cout,
                           int64_t tap_stride, const __mmask32 (&m)[2]) {
  auto load = [&](const uint16_t* p, int j) {
    return kFull ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi16(m[j], p);
  };
  int64_t i = first;
  for (; i + 1 < stop; i += 2) {
    const __m512i vp = broadcast_pair(e.v[i], e.v[i + 1]);
    const uint16_t* w1 = wa + e.ci[i] * Cout;
    const uint16_t* w2 = wa + e.ci[i + 1] * Cout;
    for (int b = 0; b < KW; ++b) {
      for (int j = 0; j < 2; ++j) {
        const __m512i x1 = load(w1 + b * tap_stride + 32 * j, j);
        const __m512i x2 = load(w2 + b * tap_stride + 32 * j, j);
        acc[b + COL][2 * j] = dot_pairs(acc[b + COL][2 * j], vp, _mm512_unpacklo_epi16(x1, x2));
        acc[b + COL][2 * j + 1] =
            dot_pairs(acc[b + COL][2 * j + 1], vp, _mm512_unpackhi_epi16(x1, x2));
      }
    }
  }
  if (i < stop) {  // the last term, paired with zeros
    const __m512i vp = broadcast_pair(e.v[i], 0);
    const __m512i zero = _mm512_setzero_si512();
    const uint16_t* w1 = wa + e.ci[i] * Cout;
    for (int b = 0; b < KW; ++b) {
      for (int j = 0; j < 2; ++j) {
        const __m512i x1 = load(w1 + b * tap_stride + 32 * j, j);
        acc[b + COL][2 * j] =
            dot_pairs(acc[b + COL][2 * j], vp, _mm512_unpacklo_epi16(x1, zero));
        acc[b + COL][2 * j + 1] =
            dot_pairs(acc[b + COL][2 * j + 1], vp, _mm512_unpackhi_epi16(x1, zero));
      }
    }
  }
}

// accumulate_row_blocked's bfloat16 twin: same lists, same tiles (64 channels here), the
// terms of a list taken in pairs. Any number of output channels (masked loads at the end).
template <int KW, bool kFull>
void accumulate_block_bf16dot(const UnpoolDeconvFastArgs& a, float* row,
                              const RowEntries<uint16_t>& e, int64_t c0) {
  const uint16_t* wt = static_cast<const uint16_t*>(a.weight_t);
  const int64_t Cout = a.Cout, tap_stride = a.Cin * Cout;
  const __mmask32 m[2] = {mask32(Cout - c0), mask32(Cout - c0 - 32)};
  for (int64_t ch = 0; ch < e.chunks; ++ch) {
    for (int64_t ow = 0; ow < a.OW; ++ow) {
      __m512 acc[KW + 1][4];
      for (int p = 0; p <= KW; ++p)
        for (int j = 0; j < 4; ++j) acc[p][j] = _mm512_setzero_ps();
      for (int64_t ka = 0; ka < a.kh; ++ka) {
        const int64_t slot = e.slot(ka, ow, ch, a.OW), base = e.base(ka, ow, ch);
        const uint16_t* wa = wt + ka * KW * tap_stride + c0;
        add_term_pairs<KW, 0, kFull>(acc, e, base, base + e.count0[slot], wa, Cout,
                                     tap_stride, m);
        add_term_pairs<KW, 1, kFull>(acc, e, base + kChunk - e.count1[slot], base + kChunk,
                                     wa, Cout, tap_stride, m);
      }
      for (int p = 0; p <= KW; ++p) {
        const int64_t zw = 2 * ow - a.pw + p;
        if (zw < 0 || zw >= a.Wo) continue;
        for (int j = 0; j < 2; ++j) {
          __m512 first, second;
          unpermute(acc[p][2 * j], acc[p][2 * j + 1], first, second);
          float* dst = row + zw * Cout + c0 + 32 * j;
          add_to(dst, first, Cout - c0 - 32 * j);
          add_to(dst + 16, second, Cout - c0 - 32 * j - 16);
        }
      }
    }
  }
}

template <int KW>
void accumulate_row_bf16dot(const UnpoolDeconvFastArgs& a, int64_t n, int64_t zh, float* row,
                            RowEntries<uint16_t>& e) {
  sort_row_entries<c10::BFloat16>(a, n, zh, e, bf16_bits);
  for (int64_t c0 = 0; c0 < a.Cout; c0 += 64) {
    if (c0 + 64 <= a.Cout) {
      accumulate_block_bf16dot<KW, true>(a, row, e, c0);
    } else {
      accumulate_block_bf16dot<KW, false>(a, row, e, c0);
    }
  }
}

// ----------------------------------------------------------------------------- grad y

// backward_y_rows' bfloat16 twin: per pooled value, the dot product of the weights of its
// channel with the grad_output pixels its switch's position reaches, 32 channels per
// instruction; eight neighbouring windows of one channel share each weight load. It reads
// grad_output zero-padded (grad_padding), so a tap outside the output reads zeros without
// a test per tap.
inline void backward_y_bf16dot(const UnpoolDeconvFastArgs& a, const UnpoolDeconvFastGrads& gr) {
  constexpr int kWindows = 8;
  const uint16_t* g = static_cast<const uint16_t*>(gr.grad_nhwc);
  const uint16_t* wt = static_cast<const uint16_t*>(a.weight_t);
  c10::BFloat16* gy = static_cast<c10::BFloat16*>(gr.grad_y);
  const int64_t Cout = a.Cout, Wp = gr.padded_w;
  const __mmask32 tail = mask32(Cout % 32);
  at::parallel_for(0, a.N * a.Cin * a.OH, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t ci = task % a.Cin, oh = (task / a.Cin) % a.OH, n = task / (a.OH * a.Cin);
      const uint8_t* sp = a.switches + n * a.ss.n + ci * a.ss.c + oh * a.ss.h;
      // (0, 0) of the padded map is output pixel (-pad_top, -pad_left)
      const uint16_t* gn = g + n * gr.padded_h * Wp * Cout;
      for (int64_t ow0 = 0; ow0 < a.OW; ow0 += kWindows) {
        const int64_t nw = std::min<int64_t>(kWindows, a.OW - ow0);
        const uint16_t* base[kWindows];
        for (int j = 0; j < kWindows; ++j) {
          const int64_t ow = ow0 + std::min<int64_t>(j, nw - 1);  // past the row: a repeat
          const int64_t s = sp[ow * a.ss.w];
          const int64_t zh = 2 * oh + (s >> 1) - a.ph + gr.pad_top;
          const int64_t zw = 2 * ow + (s & 1) - a.pw + gr.pad_left;
          base[j] = gn + (zh * Wp + zw) * Cout;
        }
        __m512 acc[kWindows];
        for (int j = 0; j < kWindows; ++j) acc[j] = _mm512_setzero_ps();
        for (int64_t ka = 0; ka < a.kh; ++ka) {
          for (int64_t kb = 0; kb < a.kw; ++kb) {
            const int64_t tap = (ka * Wp + kb) * Cout;
            const uint16_t* wrow = wt + ((ka * a.kw + kb) * a.Cin + ci) * Cout;
            int64_t co = 0;
            for (; co + 32 <= Cout; co += 32) {
              const __m512i wv = _mm512_loadu_si512(wrow + co);
              for (int j = 0; j < kWindows; ++j)
                acc[j] = dot_pairs(acc[j], _mm512_loadu_si512(base[j] + tap + co), wv);
            }
            if (co < Cout) {
              const __m512i wv = _mm512_maskz_loadu_epi16(tail, wrow + co);
              for (int j = 0; j < kWindows; ++j)
                acc[j] = dot_pairs(acc[j], _mm512_maskz_loadu_epi16(tail, base[j] + tap + co), wv);
            }
          }
        }
        for (int j = 0; j < nw; ++j) {
          gy[n * gr.gys.n + ci * gr.gys.c + oh * gr.gys.h + (ow0 + j) * gr.gys.w] =
              c10::BFloat16(_mm512_reduce_add_ps(acc[j]));
        }
      }
    }
  });
}

// ------------------------------------------------------------------------ grad weight

// backward_weight_block's bfloat16 twin for one block of 32 output channels: the pooled
// values of a channel two at a time (neighbouring columns), each tap's two grad_output
// rows interleaved. grad_output is read zero-padded (grad_padding): a pair of finite values
// reads every tap without a test (a tap outside the output reads zeros and adds 0). A pair
// with an inf or NaN, or a value without a partner, takes the tested path, where a tap
// outside the output zeroes its value's half of the pair and reads nothing, so an inf
// never meets a zero.
inline bool finite_bf16(uint16_t bits) {
  return (bits & 0x7f80) != 0x7f80;
}

template <int K, bool kFull>
void backward_weight_block_bf16dot(
    const UnpoolDeconvFastArgs& a, const UnpoolDeconvFastGrads& gr, int64_t co0,
    int64_t rows_per_chunk, bool direct) {
  using Tile = __m512[K * K][2];
  const c10::BFloat16* y = static_cast<const c10::BFloat16*>(a.y);
  const uint16_t* g = static_cast<const uint16_t*>(gr.grad_nhwc);
  const int64_t Cout = a.Cout, lanes = std::min<int64_t>(32, Cout - co0), Wp = gr.padded_w;
  const __mmask32 m = mask32(lanes);
  auto load = [&](const uint16_t* p) {
    return kFull ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi16(m, p);
  };
  auto zero = [](Tile& acc) {
    for (int t = 0; t < K * K; ++t) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
  };
  auto accumulate = [&](Tile& acc, int64_t n, int64_t oh0, int64_t oh1, int64_t ci) {
    // (0, 0) of the padded map is output pixel (-pad_top, -pad_left)
    const uint16_t* gn = g + n * gr.padded_h * Wp * Cout + co0;
    auto at = [&](int64_t zh, int64_t zw) {
      return gn + ((zh + gr.pad_top) * Wp + zw + gr.pad_left) * Cout;
    };
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      const c10::BFloat16* yr = y + n * a.ys.n + ci * a.ys.c + oh * a.ys.h;
      const uint8_t* sr = a.switches + n * a.ss.n + ci * a.ss.c + oh * a.ss.h;
      for (int64_t ow = 0; ow < a.OW; ow += 2) {
        const bool two = ow + 1 < a.OW;
        const int64_t s1 = sr[ow * a.ss.w], s2 = two ? sr[(ow + 1) * a.ss.w] : 0;
        const uint16_t v1 = yr[ow * a.ys.w].x, v2 = two ? yr[(ow + 1) * a.ys.w].x : 0;
        const int64_t zh1 = 2 * oh + (s1 >> 1) - a.ph, zw1 = 2 * ow + (s1 & 1) - a.pw;
        const int64_t zh2 = 2 * oh + (s2 >> 1) - a.ph, zw2 = 2 * (ow + 1) + (s2 & 1) - a.pw;
        if (two && finite_bf16(v1) && finite_bf16(v2)) {
          const __m512i vp = broadcast_pair(v1, v2);
          const uint16_t* p1 = at(zh1, zw1);
          const uint16_t* p2 = at(zh2, zw2);
          for (int ka = 0; ka < K; ++ka) {
            for (int kb = 0; kb < K; ++kb) {
              const int64_t tap = (ka * Wp + kb) * Cout;
              const __m512i x1 = load(p1 + tap), x2 = load(p2 + tap);
              const int t = ka * K + kb;
              acc[t][0] = dot_pairs(acc[t][0], vp, _mm512_unpacklo_epi16(x1, x2));
              acc[t][1] = dot_pairs(acc[t][1], vp, _mm512_unpackhi_epi16(x1, x2));
            }
          }
          continue;
        }
        const __m512i pair[4] = {_mm512_setzero_si512(), broadcast_pair(v1, 0),
                                 broadcast_pair(0, v2), broadcast_pair(v1, v2)};
        for (int ka = 0; ka < K; ++ka) {
          for (int kb = 0; kb < K; ++kb) {
            const int64_t h1 = zh1 + ka, w1 = zw1 + kb, h2 = zh2 + ka, w2 = zw2 + kb;
            const bool in1 = h1 >= 0 && h1 < a.Ho && w1 >= 0 && w1 < a.Wo;
            const bool in2 = two && h2 >= 0 && h2 < a.Ho && w2 >= 0 && w2 < a.Wo;
            const int which = int(in1) | (int(in2) << 1);
            if (which == 0) continue;
            const __m512i x1 = _mm512_maskz_loadu_epi16(in1 ? m : 0, in1 ? at(h1, w1) : gn);
            const __m512i x2 = _mm512_maskz_loadu_epi16(in2 ? m : 0, in2 ? at(h2, w2) : gn);
            const int t = ka * K + kb;
            acc[t][0] = dot_pairs(acc[t][0], pair[which], _mm512_unpacklo_epi16(x1, x2));
            acc[t][1] = dot_pairs(acc[t][1], pair[which], _mm512_unpackhi_epi16(x1, x2));
          }
        }
      }
    }
  };
  c10::BFloat16* out = static_cast<c10::BFloat16*>(gr.grad_weight);
  float* dw = static_cast<float*>(gr.grad_weight_c);
  auto store = [&](const Tile& acc, int64_t ci) {  // into (Cin, Cout, K, K), converted
    for (int t = 0; t < K * K; ++t) {
      __at_align__ float vals[32];
      __m512 first, second;
      unpermute(acc[t][0], acc[t][1], first, second);
      _mm512_store_ps(vals, first);
      _mm512_store_ps(vals + 16, second);
      for (int64_t l = 0; l < lanes; ++l)
        out[(ci * Cout + co0 + l) * (K * K) + t] = c10::BFloat16(vals[l]);
    }
  };
  auto add = [&](const Tile& acc, int64_t ci) {  // to the (Cin, K, K, Cout) float buffer
    for (int t = 0; t < K * K; ++t) {
      __m512 first, second;
      unpermute(acc[t][0], acc[t][1], first, second);
      float* dst = dw + (ci * K * K + t) * Cout + co0;
      add_to(dst, first, lanes);
      add_to(dst + 16, second, lanes - 16);
    }
  };
  weight_grad_schedule<Tile>(a, rows_per_chunk, direct, zero, accumulate, store, add);
}
