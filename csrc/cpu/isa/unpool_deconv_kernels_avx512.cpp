// The fused unpool + transposed convolution's CPU kernels compiled for one ISA (see
// pool_kernels_default.cpp for how the ISA is chosen).
#include "../unpool_deconv_fast_impl.h"
