// When the CPU pool forward writes y and the switches with streaming (non-temporal) stores.
//
// A streaming store sends a whole vector straight to memory: the line is not read first
// (no read-for-ownership) and no cached data is evicted for it. That pays when a call's
// data cannot stay cached anyway: then every normal store of an output line costs a read
// and a write of it in DRAM. It costs when the outputs would still be cached for the next
// layer, or when the output buffer (recycled by the allocator) is cached already. The bound
// is a footprint of one last-level cache: above it, a call's inputs and outputs cannot all
// stay cached. (The bound was glibc's memcpy rule before, 1.5 caches: memcpy streams copies
// above about 3/4 of the shared cache. The calls between the two bounds gained from
// streaming once their rows could stream, see put() in pool_kernels_avx512.h.) Measured on
// the 2-core EPYC (32 MiB L3), streamed vs normal stores, one process, alternating:
//  * pool forward 4x64x224x224 (67 MB touched): float32 1.43 -> 1.10 ms NCHW and
//    channels_last alike; bfloat16 (35 MB) 0.91-1.09 -> 0.71-0.77 ms NCHW, 0.59-0.70 ->
//    0.48-0.52 ms channels_last (five runs each, threshold 48 MiB -> 32 MiB);
//  * pool forward 4x128x112x112 float32 (34 MB): 0.64-0.71 -> 0.52-0.57 ms NCHW,
//    0.60-0.71 -> 0.49-0.57 ms channels_last (the same five runs);
//  * unpool 4x128x112x112 float32 NCHW: 0.79 -> 1.15 ms (a recycled, cached output buffer)
//    and 4x64x224x224: 4.4 -> 4.8 ms (fresh pages: the kernel's zeroing of each faulted page
//    is the cost, before any store of ours). So the scatters (unpool, pool backward) never
//    stream.
#pragma once

#include <cstdint>

namespace deconvkernels::cpu {

// True when a call that reads and writes `bytes_touched` bytes in all should stream its
// outputs: more than the threshold, which defaults to the last-level cache's size (sysfs;
// 32 MiB if unknown). DECONVKERNELS_STREAMING_STORES=0 turns streaming off.
bool streaming_stores_pay(int64_t bytes_touched);

// The threshold in force (-1: streaming off).
int64_t streaming_threshold();

// Tests and benchmarks: a threshold in bytes (0: stream whenever the kernel can), or any
// negative value for the default. Returns the previous threshold.
int64_t set_streaming_threshold(int64_t bytes);

}  // namespace deconvkernels::cpu
