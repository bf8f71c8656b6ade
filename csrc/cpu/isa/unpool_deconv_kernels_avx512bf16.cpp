// The fused op's CPU kernels compiled for AVX512 with the bfloat16 dot product
// (-mavx512bf16, DK_BF16_DOT): float, double and half as on AVX512, bfloat16 on vdpbf16ps
// (unpool_deconv_bf16_dot.h). Chosen at run time only on CPUs that report avx512_bf16.
#include "../unpool_deconv_fast_impl.h"
