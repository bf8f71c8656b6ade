// The GPU's tiled forward (and, further down, grad-y and grad-weight) of the fused unpool + transposed
// convolution for DeconvNet's case
// (2x2/2 pool windows inside the input; stride-1, dilation-1, ungrouped deconvolution with
// kernels up to 5x5), written once as a phased host-device body:
//
// * a block owns a tile of kTileH x kTileW output pixels and kCoTile output channels of
//   one image; each thread owns one pixel and kCoPerThread channels, in registers (State);
// * the input channels go in chunks of kCiTile. Phase "load": the block copies the chunk's
//   weights for its channels and the pooled values and switches of every 2x2 window its
//   tile can reach into shared memory (Shared). Phase "add": each thread visits only the
//   windows whose 3x3 (kh x kw) patch can reach its pixel, asks the switch where the
//   window's value sits, and adds value x weight of that one tap: a quarter of a dense
//   transposed convolution's multiply-adds, and no unpooled map anywhere. A barrier ends
//   every phase (the next load overwrites what the add phase reads);
// * the last phase adds the bias and stores the tile.
//
// On the GPU the phases run in one kernel with __syncthreads() between them
// (csrc/cuda/cuda_ops.cu, phased_entry); the CPU emulator runs each phase for every thread
// of a block before the next (csrc/cpu/cuda_emulator.h), which is what the barrier
// guarantees, so the tests run this body on the CPU. Every output is summed in one fixed
// order (chunk, channel, window row, window column): deterministic, no atomics.
#pragma once

#include "unpool_deconv_kernels.h"

namespace deconvkernels {

// The tile's shape, shared by the kernel and its launcher.
struct TiledForwardShape {
  static constexpr int kTileH = 8, kTileW = 16;  // output pixels of a block
  static constexpr int kPixels = kTileH * kTileW;
  static constexpr int kCoPerThread = 16;
  static constexpr int kCoTile = 32;  // output channels of a block
  static constexpr int kThreads = kPixels * (kCoTile / kCoPerThread);  // 256
  static constexpr int kMaxK = 5;  // largest deconvolution kernel side
  // pooled windows a tile's patches can reach: kTileH + kMaxK - 1 unpooled rows span at
  // most half of them plus two partial windows
  static constexpr int kWinH = (kTileH + kMaxK - 1) / 2 + 2;
  static constexpr int kWinW = (kTileW + kMaxK - 1) / 2 + 2;
  static constexpr uint8_t kNoWindow = 255;  // outside the pooled map
  // A window's switch as the tiled kernels hold it: an invalid one (4 or more, outside the
  // 2x2 window) as no window at all. The launchers reject such switches before the kernels
  // run, except with asynchronous checks (DECONVKERNELS_CUDA_ASYNC_CHECKS, CUDA graphs),
  // where the assertion is only queued: then the kernels must still stay inside their
  // shared-memory patches, whose bounds assume s >> 1 and s & 1 are 0 or 1.
  static DK_HD uint8_t held(uint8_t s) { return s < 4 ? s : kNoWindow; }
};

DK_ISA_NAMESPACE_BEGIN

DK_HD_INLINE int64_t floor_half(int64_t v) {
  return v >= 0 ? v / 2 : -((1 - v) / 2);
}

// The block's threads (tid of `threads`) copy weight[ci0 + cl, co0 + j, tap] into
// tile[cl][tap][j] in the accumulation type, zeros where the channel is past the weight.
template <typename T, typename acc_t, int kCi, int kTaps, int kCo>
DK_HD_INLINE void load_weight_tile(acc_t (&tile)[kCi][kTaps][kCo], const T* weight,
                                   const WeightStrides& ws, const DeconvGeom& d, int64_t ci0,
                                   int64_t co0, int64_t tid, int64_t threads) {
  const int64_t taps = d.kh * d.kw;
  for (int64_t i = tid; i < kCi * taps * kCo; i += threads) {
    const int64_t cl = i / (taps * kCo), tap = (i / kCo) % taps;
    const int64_t j = i % kCo, ci = ci0 + cl, co = co0 + j;
    acc_t w = acc_t(0);
    if (ci < d.cin && co < d.cout) {
      w = static_cast<acc_t>(
          weight[ci * ws.ci + co * ws.co + (tap / d.kw) * ws.a + (tap % d.kw) * ws.b]);
    }
    tile[cl][tap][j] = w;
  }
}

template <typename T>
struct UnpoolDeconvTiledForwardKernel {
  using acc_t = typename AccType<T>::type;
  using S = TiledForwardShape;
  // 8 float or 4 double channels: 25 KiB of weights in shared memory either way
  static constexpr int kCiTile = static_cast<int>(32 / sizeof(acc_t));

  struct Args {
    const T* y;
    const uint8_t* switches;
    const T* weight;
    const T* bias;  // may be null
    T* out;
    Strides4 ys, ss, os;
    WeightStrides ws;
    PoolGeom pool;
    DeconvGeom dc;
    int64_t tiles_w;  // blockIdx.x = tile row * tiles_w + tile column
  };
  struct Shared {
    acc_t w[kCiTile][S::kMaxK * S::kMaxK][S::kCoTile];
    acc_t v[kCiTile][S::kWinH][S::kWinW];
    uint8_t s[kCiTile][S::kWinH][S::kWinW];
  };
  struct State {
    acc_t acc[S::kCoPerThread];
  };

  // The block's tile: output origin, first channel, image, first window.
  struct Tile {
    int64_t zh0, zw0, co0, n, oh0, ow0;
  };
  static DK_HD_INLINE Tile tile_of(const ThreadCoord& t, const Args& a) {
    Tile b;
    b.zh0 = static_cast<int64_t>(t.block.x / a.tiles_w) * S::kTileH;
    b.zw0 = static_cast<int64_t>(t.block.x % a.tiles_w) * S::kTileW;
    b.co0 = static_cast<int64_t>(t.block.y) * S::kCoTile;
    b.n = t.block.z;
    // the first unpooled row a tap of the tile reads: zh0 + ph - (kh - 1)
    b.oh0 = floor_half(b.zh0 + a.dc.ph - (a.dc.kh - 1));
    b.ow0 = floor_half(b.zw0 + a.dc.pw - (a.dc.kw - 1));
    return b;
  }

  static DK_HD_INLINE int64_t chunks(const Args& a) {
    return (a.dc.cin + kCiTile - 1) / kCiTile;
  }
  static DK_HD_INLINE int64_t num_phases(const Args& a) {
    return 2 * chunks(a) + 1;
  }

  static DK_HD void phase(int64_t p, const ThreadCoord& t, const Args& a, Shared& sh,
                          State& st) {
    const int64_t tid = t.thread.x;
    const Tile b = tile_of(t, a);
    if (p == 2 * chunks(a)) return store(tid, b, a, st);
    const int64_t ci0 = (p / 2) * kCiTile;
    if (p % 2 == 0) {
      if (p == 0) {
        for (int j = 0; j < S::kCoPerThread; ++j) st.acc[j] = acc_t(0);
      }
      return load(tid, b, ci0, a, sh);
    }
    add(tid, b, ci0, a, sh, st);
  }

  // Phase "load": weights (ci, tap, co) and windows (ci, row, column) of the chunk.
  static DK_HD void load(int64_t tid, const Tile& b, int64_t ci0, const Args& a, Shared& sh) {
    const DeconvGeom& d = a.dc;
    load_weight_tile(sh.w, a.weight, a.ws, d, ci0, b.co0, tid, S::kThreads);
    for (int64_t i = tid; i < kCiTile * S::kWinH * S::kWinW; i += S::kThreads) {
      const int64_t cl = i / (S::kWinH * S::kWinW), r = (i / S::kWinW) % S::kWinH;
      const int64_t c = i % S::kWinW, ci = ci0 + cl, oh = b.oh0 + r, ow = b.ow0 + c;
      const bool inside = ci < d.cin && oh >= 0 && oh < a.pool.OH && ow >= 0 && ow < a.pool.OW;
      sh.v[cl][r][c] =
          inside ? static_cast<acc_t>(a.y[offset_of(a.ys, b.n, ci, oh, ow)]) : acc_t(0);
      sh.s[cl][r][c] =
          inside ? S::held(a.switches[offset_of(a.ss, b.n, ci, oh, ow)]) : S::kNoWindow;
    }
  }

  // Phase "add": the chunk's contributions to this thread's pixel and channels.
  static DK_HD void add(int64_t tid, const Tile& b, int64_t ci0, const Args& a,
                        const Shared& sh, State& st) {
    const DeconvGeom& d = a.dc;
    const int64_t px = tid % S::kPixels, cg = tid / S::kPixels;
    const int64_t zh = b.zh0 + px / S::kTileW, zw = b.zw0 + px % S::kTileW;
    if (zh >= d.Ho || zw >= d.Wo) return;
    // windows whose unpooled rows (2 oh, 2 oh + 1) meet [zh + ph - kh + 1, zh + ph]
    const int64_t r0 = floor_half(zh + d.ph - (d.kh - 1)) - b.oh0;
    const int64_t r1 = floor_half(zh + d.ph) - b.oh0;
    const int64_t c0 = floor_half(zw + d.pw - (d.kw - 1)) - b.ow0;
    const int64_t c1 = floor_half(zw + d.pw) - b.ow0;
    const int64_t cls = d.cin - ci0 < kCiTile ? d.cin - ci0 : kCiTile;
    for (int64_t cl = 0; cl < cls; ++cl) {
      for (int64_t r = r0; r <= r1; ++r) {
        for (int64_t c = c0; c <= c1; ++c) {
          const uint8_t s = sh.s[cl][r][c];
          if (s == S::kNoWindow) continue;
          const int64_t ih = 2 * (b.oh0 + r) + (s >> 1), iw = 2 * (b.ow0 + c) + (s & 1);
          const int64_t ka = zh + d.ph - ih, kb = zw + d.pw - iw;
          if (ka < 0 || ka >= d.kh || kb < 0 || kb >= d.kw) continue;
          const acc_t v = sh.v[cl][r][c];
          const acc_t* w = sh.w[cl][ka * d.kw + kb] + cg * S::kCoPerThread;
          for (int j = 0; j < S::kCoPerThread; ++j) st.acc[j] += v * w[j];
        }
      }
    }
  }

  // Last phase: bias, conversion, store.
  static DK_HD void store(int64_t tid, const Tile& b, const Args& a, const State& st) {
    const DeconvGeom& d = a.dc;
    const int64_t px = tid % S::kPixels, cg = tid / S::kPixels;
    const int64_t zh = b.zh0 + px / S::kTileW, zw = b.zw0 + px % S::kTileW;
    if (zh >= d.Ho || zw >= d.Wo) return;
    for (int j = 0; j < S::kCoPerThread; ++j) {
      const int64_t co = b.co0 + cg * S::kCoPerThread + j;
      if (co >= d.cout) break;
      const acc_t bias = a.bias != nullptr ? static_cast<acc_t>(a.bias[co]) : acc_t(0);
      a.out[offset_of(a.os, b.n, co, zh, zw)] = static_cast<T>(bias + st.acc[j]);
    }
  }
};

// grad_y for DeconvNet's case, tiled the same way: a block owns kWinH x kWinW pooled windows
// of kCiTile input channels of one image, a thread one (channel, window). Per chunk of
// output channels, phase "load" copies the chunk's weights of the block's channels and the
// grad_output patch its windows' taps can reach into shared memory; phase "add" adds, for
// the one position each thread's switch names, the dot product over the chunk's channels
// and the taps inside the output. Fixed order (chunk, channel, tap): deterministic.
struct TiledGradYShape {
  static constexpr int kWinH = 4, kWinW = 8;  // pooled windows of a block
  static constexpr int kWindows = kWinH * kWinW;
  static constexpr int kCiTile = 8;  // input channels of a block
  static constexpr int kThreads = kWindows * kCiTile;  // 256
  static constexpr int kMaxK = 5;
  // grad_output rows the taps of 2 kWinH unpooled rows reach: 2 kWinH + kh - 1
  static constexpr int kPatchH = 2 * kWinH + kMaxK - 1;
  static constexpr int kPatchW = 2 * kWinW + kMaxK - 1;
};

template <typename T>
struct UnpoolDeconvTiledGradYKernel {
  using acc_t = typename AccType<T>::type;
  using S = TiledGradYShape;
  // 8 float or 4 double output channels a chunk: 13 KiB of shared memory either way
  static constexpr int kCoChunk = static_cast<int>(32 / sizeof(acc_t));

  struct Args {
    const T* grad_out;
    const uint8_t* switches;
    const T* weight;
    T* grad_y;
    Strides4 gs, ss, ys;
    WeightStrides ws;
    PoolGeom pool;
    DeconvGeom dc;
    int64_t tiles_w;  // blockIdx.x = tile row * tiles_w + tile column; blockIdx.y: channels
  };
  struct Shared {
    acc_t w[S::kCiTile][S::kMaxK * S::kMaxK][kCoChunk];
    acc_t g[kCoChunk][S::kPatchH][S::kPatchW];
  };
  struct State {
    acc_t acc;
    uint8_t s;  // this thread's switch, or kNoWindow
  };
  struct Tile {
    int64_t oh0, ow0, ci0, n, zh0, zw0;  // first window, channel, image, patch origin
  };
  static DK_HD_INLINE Tile tile_of(const ThreadCoord& t, const Args& a) {
    Tile b;
    b.oh0 = static_cast<int64_t>(t.block.x / a.tiles_w) * S::kWinH;
    b.ow0 = static_cast<int64_t>(t.block.x % a.tiles_w) * S::kWinW;
    b.ci0 = static_cast<int64_t>(t.block.y) * S::kCiTile;
    b.n = t.block.z;
    b.zh0 = 2 * b.oh0 - a.dc.ph;  // output row of tap 0 of the first unpooled row
    b.zw0 = 2 * b.ow0 - a.dc.pw;
    return b;
  }
  static DK_HD_INLINE int64_t chunks(const Args& a) {
    return (a.dc.cout + kCoChunk - 1) / kCoChunk;
  }
  static DK_HD_INLINE int64_t num_phases(const Args& a) {
    return 2 * chunks(a) + 1;
  }

  static DK_HD void phase(int64_t p, const ThreadCoord& t, const Args& a, Shared& sh,
                          State& st) {
    const int64_t tid = t.thread.x;
    const Tile b = tile_of(t, a);
    const int64_t cl = tid / S::kWindows, win = tid % S::kWindows;
    const int64_t ci = b.ci0 + cl, oh = b.oh0 + win / S::kWinW, ow = b.ow0 + win % S::kWinW;
    const bool mine = ci < a.dc.cin && oh < a.pool.OH && ow < a.pool.OW;
    if (p == 2 * chunks(a)) {  // store
      if (mine) a.grad_y[offset_of(a.ys, b.n, ci, oh, ow)] = static_cast<T>(st.acc);
      return;
    }
    const int64_t co0 = (p / 2) * kCoChunk;
    if (p % 2 == 0) {
      if (p == 0) {
        st.acc = acc_t(0);
        st.s = mine ? TiledForwardShape::held(a.switches[offset_of(a.ss, b.n, ci, oh, ow)])
                    : TiledForwardShape::kNoWindow;
      }
      return load(tid, b, co0, a, sh);
    }
    if (st.s == TiledForwardShape::kNoWindow) return;
    const DeconvGeom& d = a.dc;
    const int64_t ih = 2 * oh + (st.s >> 1), iw = 2 * ow + (st.s & 1);
    const int64_t cos = d.cout - co0 < kCoChunk ? d.cout - co0 : kCoChunk;
    for (int64_t j = 0; j < cos; ++j) {
      for (int64_t ka = 0; ka < d.kh; ++ka) {
        const int64_t zh = ih - d.ph + ka;
        if (zh < 0 || zh >= d.Ho) continue;
        for (int64_t kb = 0; kb < d.kw; ++kb) {
          const int64_t zw = iw - d.pw + kb;
          if (zw < 0 || zw >= d.Wo) continue;
          st.acc += sh.g[j][zh - b.zh0][zw - b.zw0] * sh.w[cl][ka * d.kw + kb][j];
        }
      }
    }
  }

  // Phase "load": weights (ci, tap, co) of the block's channels and the grad_output patch
  // (co, row, column) of the chunk; zeros outside.
  static DK_HD void load(int64_t tid, const Tile& b, int64_t co0, const Args& a, Shared& sh) {
    const DeconvGeom& d = a.dc;
    load_weight_tile(sh.w, a.weight, a.ws, d, b.ci0, co0, tid, S::kThreads);
    for (int64_t i = tid; i < kCoChunk * S::kPatchH * S::kPatchW; i += S::kThreads) {
      const int64_t j = i / (S::kPatchH * S::kPatchW), r = (i / S::kPatchW) % S::kPatchH;
      const int64_t c = i % S::kPatchW, co = co0 + j, zh = b.zh0 + r, zw = b.zw0 + c;
      const bool inside = co < d.cout && zh >= 0 && zh < d.Ho && zw >= 0 && zw < d.Wo;
      sh.g[j][r][c] =
          inside ? static_cast<acc_t>(a.grad_out[offset_of(a.gs, b.n, co, zh, zw)]) : acc_t(0);
    }
  }
};

// grad_weight for DeconvNet's case as a fixed-order reduction over the pooled values:
//
//   grad_w[ci, co, ka, kb] = sum over (n, oh, ow) of y[n, ci, oh, ow] x
//                            grad_out[n, co, ih - ph + ka, iw - pw + kb]
//
// where (ih, iw) is the unpooled position the switch names (taps leaving the output add
// nothing). A block owns kCiTile x kCoTile weight channels, a thread one (ci, co) pair with
// its kh x kw accumulators in registers. The pooled map goes in chunks of one image's
// kWinH x kWinW windows: phase "load" copies the chunk's pooled values and switches of the
// block's input channels, and the grad_output patch their taps reach for the block's output
// channels, into shared memory; phase "add" adds, for each window, value x patch at the
// kh x kw taps around the position its switch names (a quarter of a dense transposed
// convolution's multiply-adds). A warp's 32 threads share ci (one broadcast value and
// switch) and read 32 channels of the patch (padded to an odd plane: different banks).
//
// Few-channel layers have few (ci, co) blocks, so the chunks are split over blockIdx.z:
// each split sums its contiguous range of chunks into a float workspace, and
// SplitSumKernel adds the splits in order. Both orders are fixed by the shape and the
// split count: deterministic, no atomics.
struct TiledGradWeightShape {
  static constexpr int kCiTile = 8;   // input channels of a block
  static constexpr int kCoTile = 32;  // output channels of a block: one warp
  static constexpr int kThreads = kCiTile * kCoTile;  // 256
  static constexpr int kWinH = 4;     // pooled window rows of a chunk
  static constexpr int kMaxK = 5;
};

template <typename T>
struct UnpoolDeconvTiledGradWeightKernel {
  using acc_t = typename AccType<T>::type;
  using S = TiledGradWeightShape;
  // 8 float or 4 double window columns: a 30 or 36 KiB patch
  static constexpr int kWinW = static_cast<int>(32 / sizeof(acc_t));
  static constexpr int kWindows = S::kWinH * kWinW;
  static constexpr int kPatchH = 2 * S::kWinH + S::kMaxK - 1;
  static constexpr int kPatchW = 2 * kWinW + S::kMaxK - 1;
  static constexpr int kPlane = (kPatchH * kPatchW) | 1;  // odd: no bank conflicts

  struct Args {
    const T* grad_out;
    const T* y;
    const uint8_t* switches;
    T* grad_weight;  // contiguous (C_in, C_out, kh, kw); written when there is one split
    acc_t* partial;  // (splits, C_in * C_out * kh * kw) when there are more, else null
    Strides4 gs, ys, ss;
    PoolGeom pool;
    DeconvGeom dc;
    int64_t tiles_w;  // window tiles of a pooled row
    int64_t tiles;  // window tiles of an image
    int64_t chunks;  // batch x tiles
    int64_t chunks_per_split;
  };
  struct Shared {
    acc_t g[S::kCoTile][kPlane];
    acc_t v[S::kCiTile][kWindows];
    uint8_t s[S::kCiTile][kWindows];
  };
  struct State {
    acc_t acc[S::kMaxK * S::kMaxK];
  };
  // The chunk's image, first window and the output position of its patch's origin.
  struct Chunk {
    int64_t n, oh0, ow0, zh0, zw0;
  };
  static DK_HD_INLINE Chunk chunk_of(int64_t q, const Args& a) {
    Chunk c;
    c.n = q / a.tiles;
    const int64_t t = q % a.tiles;
    c.oh0 = (t / a.tiles_w) * S::kWinH;
    c.ow0 = (t % a.tiles_w) * kWinW;
    c.zh0 = 2 * c.oh0 - a.dc.ph;  // tap 0 of the first unpooled row
    c.zw0 = 2 * c.ow0 - a.dc.pw;
    return c;
  }
  static DK_HD_INLINE int64_t num_phases(const Args& a) {
    return 2 * a.chunks_per_split + 1;
  }

  static DK_HD void phase(int64_t p, const ThreadCoord& t, const Args& a, Shared& sh,
                          State& st) {
    const int64_t tid = t.thread.x;
    const int64_t ci0 = static_cast<int64_t>(t.block.x) * S::kCiTile;
    const int64_t co0 = static_cast<int64_t>(t.block.y) * S::kCoTile;
    if (p == 2 * a.chunks_per_split) return store(tid, ci0, co0, t.block.z, a, st);
    if (p == 0) {
      DK_UNROLL
      for (int i = 0; i < S::kMaxK * S::kMaxK; ++i) st.acc[i] = acc_t(0);
    }
    const int64_t q = static_cast<int64_t>(t.block.z) * a.chunks_per_split + p / 2;
    if (q >= a.chunks) return;  // the last split's tail: nothing to load or add
    const Chunk c = chunk_of(q, a);
    if (p % 2 == 0) return load(tid, c, ci0, co0, a, sh);
    add(tid, c, a, sh, st);
  }

  // Phase "load": values and switches (ci, window), the grad_output patch (co, row, column);
  // zeros outside the output (only read by channels past C_out, which are not stored).
  static DK_HD void load(int64_t tid, const Chunk& c, int64_t ci0, int64_t co0, const Args& a,
                         Shared& sh) {
    const DeconvGeom& d = a.dc;
    for (int64_t i = tid; i < S::kCiTile * kWindows; i += S::kThreads) {
      const int64_t cl = i / kWindows, win = i % kWindows, ci = ci0 + cl;
      const int64_t oh = c.oh0 + win / kWinW, ow = c.ow0 + win % kWinW;
      const bool inside = ci < d.cin && oh < a.pool.OH && ow < a.pool.OW;
      sh.v[cl][win] =
          inside ? static_cast<acc_t>(a.y[offset_of(a.ys, c.n, ci, oh, ow)]) : acc_t(0);
      sh.s[cl][win] = inside ? TiledForwardShape::held(a.switches[offset_of(a.ss, c.n, ci, oh, ow)])
                             : TiledForwardShape::kNoWindow;
    }
    // only the rows and columns this kernel size reaches
    const int64_t rows = 2 * S::kWinH + d.kh - 1, cols = 2 * kWinW + d.kw - 1;
    for (int64_t i = tid; i < S::kCoTile * rows * cols; i += S::kThreads) {
      const int64_t j = i / (rows * cols), r = (i / cols) % rows, col = i % cols;
      const int64_t co = co0 + j, zh = c.zh0 + r, zw = c.zw0 + col;
      const bool inside = co < d.cout && zh >= 0 && zh < d.Ho && zw >= 0 && zw < d.Wo;
      sh.g[j][r * kPatchW + col] =
          inside ? static_cast<acc_t>(a.grad_out[offset_of(a.gs, c.n, co, zh, zw)]) : acc_t(0);
    }
  }

  // Phase "add": the chunk's products for this thread's (ci, co), window by window in
  // raster order. Taps are bounds-tested rather than left to the zero padding: an infinite
  // value times a tap outside the output must add nothing, not NaN.
  static DK_HD void add(int64_t tid, const Chunk& c, const Args& a, const Shared& sh,
                        State& st) {
    const DeconvGeom& d = a.dc;
    const int64_t cl = tid / S::kCoTile, j = tid % S::kCoTile;
    const acc_t* g = sh.g[j];
    for (int win = 0; win < kWindows; ++win) {
      const uint8_t s = sh.s[cl][win];
      if (s == TiledForwardShape::kNoWindow) continue;
      const acc_t v = sh.v[cl][win];
      // the switch's position in the patch, and the taps that stay inside the output
      const int64_t r = 2 * (win / kWinW) + (s >> 1), col = 2 * (win % kWinW) + (s & 1);
      const int64_t ka_lo = -(c.zh0 + r), ka_hi = d.Ho - (c.zh0 + r);
      const int64_t kb_lo = -(c.zw0 + col), kb_hi = d.Wo - (c.zw0 + col);
      const acc_t* gp = g + r * kPatchW + col;
      DK_UNROLL
      for (int ka = 0; ka < S::kMaxK; ++ka) {
        if (ka >= d.kh || ka < ka_lo || ka >= ka_hi) continue;
        DK_UNROLL
        for (int kb = 0; kb < S::kMaxK; ++kb) {
          if (kb >= d.kw || kb < kb_lo || kb >= kb_hi) continue;
          st.acc[ka * S::kMaxK + kb] += v * gp[ka * kPatchW + kb];
        }
      }
    }
  }

  // Last phase: this thread's kh x kw sums, to grad_weight or to its split's workspace row.
  static DK_HD void store(int64_t tid, int64_t ci0, int64_t co0, int64_t split, const Args& a,
                          const State& st) {
    const DeconvGeom& d = a.dc;
    const int64_t ci = ci0 + tid / S::kCoTile, co = co0 + tid % S::kCoTile;
    if (ci >= d.cin || co >= d.cout) return;
    const int64_t taps = d.kh * d.kw, first = (ci * d.cout + co) * taps;
    // constant bounds, so that the unrolled loops index the accumulators by constants and
    // they stay in registers (a loop to d.kh would put them on the stack)
    DK_UNROLL
    for (int ka = 0; ka < S::kMaxK; ++ka) {
      DK_UNROLL
      for (int kb = 0; kb < S::kMaxK; ++kb) {
        if (ka >= d.kh || kb >= d.kw) continue;
        const acc_t v = st.acc[ka * S::kMaxK + kb];
        const int64_t i = first + ka * d.kw + kb;
        if (a.partial != nullptr) {
          a.partial[split * d.cin * d.cout * taps + i] = v;
        } else {
          a.grad_weight[i] = static_cast<T>(v);
        }
      }
    }
  }
};

// out[i] = the sum of partial[s, i] over the splits s in order (grid-stride).
template <typename T>
struct SplitSumKernel {
  using acc_t = typename AccType<T>::type;
  struct Args {
    const acc_t* partial;  // (splits, total)
    T* out;
    int64_t splits;
    int64_t total;
  };
  static DK_HD void run(const ThreadCoord& t, const Args& a) {
    for (int64_t i = t.global_x(); i < a.total; i += t.stride_x()) {
      acc_t acc = acc_t(0);
      for (int64_t s = 0; s < a.splits; ++s) acc += a.partial[s * a.total + i];
      a.out[i] = static_cast<T>(acc);
    }
  }
};

DK_ISA_NAMESPACE_END
}  // namespace deconvkernels
