// Run-time choice of the CPU kernel variant, from the CPU's features: never the build
// machine's. ATen's own choice (at::get_cpu_capability(), which honours the
// ATEN_CPU_CAPABILITY variable) is the default; tests and benchmarks may force another.
#pragma once

#include <string>
#include <vector>

namespace deconvkernels::cpu {

// In order of preference. kAvx512Bf16 is AVX512 plus the bfloat16 dot product
// (vdpbf16ps); only the fused op's bfloat16 kernels differ from AVX512's.
enum class CpuIsa { kDefault, kAvx2, kAvx512, kAvx512Bf16 };

CpuIsa current_isa();
std::string isa_name(CpuIsa isa);
// Variants compiled into this build and runnable on this CPU, baseline first.
std::vector<std::string> available_isas();
// "" returns to the automatic choice; an unknown or unavailable name throws.
std::string set_isa(const std::string& name);

}  // namespace deconvkernels::cpu
