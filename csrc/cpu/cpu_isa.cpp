#include "cpu_isa.h"

#include <ATen/Version.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>

#include "pool_kernels.h"
#include "unpool_deconv_fast.h"

namespace deconvkernels::cpu {
namespace {

bool cpu_supports(CpuIsa isa) {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  switch (isa) {
    case CpuIsa::kDefault:
      return true;
    case CpuIsa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case CpuIsa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
          __builtin_cpu_supports("fma");
    case CpuIsa::kAvx512Bf16:
      return cpu_supports(CpuIsa::kAvx512) && __builtin_cpu_supports("avx512bf16");
  }
  return false;
#else
  return isa == CpuIsa::kDefault;
#endif
}

bool compiled_in(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kDefault:
      return true;
    case CpuIsa::kAvx2:
#if defined(DK_HAVE_AVX2)
      return true;
#else
      return false;
#endif
    case CpuIsa::kAvx512:
#if defined(DK_HAVE_AVX512)
      return true;
#else
      return false;
#endif
    case CpuIsa::kAvx512Bf16:
#if defined(DK_HAVE_AVX512_BF16)
      return true;
#else
      return false;
#endif
  }
  return false;
}

constexpr CpuIsa kAllIsas[] = {CpuIsa::kDefault, CpuIsa::kAvx2, CpuIsa::kAvx512,
                               CpuIsa::kAvx512Bf16};

bool usable(CpuIsa isa) {
  return compiled_in(isa) && cpu_supports(isa);
}

// ATen's choice (it knows about OS support and ATEN_CPU_CAPABILITY), capped by what
// this build holds.
CpuIsa automatic_isa() {
  const std::string aten = at::get_cpu_capability();
  CpuIsa want = CpuIsa::kDefault;
  if (aten.find("AVX512") != std::string::npos) {
    want = CpuIsa::kAvx512Bf16;  // AVX512 where the CPU lacks the bfloat16 dot product
  } else if (aten.find("AVX2") != std::string::npos) {
    want = CpuIsa::kAvx2;
  }
  while (!usable(want)) want = static_cast<CpuIsa>(static_cast<int>(want) - 1);
  return want;
}

std::atomic<int> forced{-1};

}  // namespace

CpuIsa current_isa() {
  static const CpuIsa automatic = automatic_isa();
  const int f = forced.load(std::memory_order_relaxed);
  return f < 0 ? automatic : static_cast<CpuIsa>(f);
}

std::string isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kDefault:
      return "DEFAULT";
    case CpuIsa::kAvx2:
      return "AVX2";
    case CpuIsa::kAvx512:
      return "AVX512";
    case CpuIsa::kAvx512Bf16:
      return "AVX512_BF16";
  }
  return "?";
}

std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  for (CpuIsa isa : kAllIsas) {
    if (usable(isa)) out.push_back(isa_name(isa));
  }
  return out;
}

std::string set_isa(const std::string& name) {
  if (name.empty()) {
    forced.store(-1);
    return isa_name(current_isa());
  }
  std::string upper = name;
  std::transform(upper.begin(), upper.end(), upper.begin(), ::toupper);
  for (CpuIsa isa : kAllIsas) {
    if (isa_name(isa) == upper) {
      TORCH_CHECK(
          usable(isa), "cpu isa ", upper, " is not available here (compiled in: ",
          compiled_in(isa), ", supported by this CPU: ", cpu_supports(isa), ")");
      forced.store(static_cast<int>(isa));
      return upper;
    }
  }
  TORCH_CHECK(false, "cpu isa must be one of DEFAULT, AVX2, AVX512, AVX512_BF16 (or empty), got '", name, "'");
}

const PoolKernelTable& pool_kernels() {
  switch (current_isa()) {
#if defined(DK_HAVE_AVX512)
    case CpuIsa::kAvx512Bf16:  // pooling does no multiply-adds: AVX512's kernels
    case CpuIsa::kAvx512:
      return AVX512::pool_kernel_table();
#endif
#if defined(DK_HAVE_AVX2)
    case CpuIsa::kAvx2:
      return AVX2::pool_kernel_table();
#endif
    default:
      return DEFAULT::pool_kernel_table();
  }
}

}  // namespace deconvkernels::cpu

namespace deconvkernels::cpu {

const UnpoolDeconvKernelTable& unpool_deconv_kernels() {
  switch (current_isa()) {
#if defined(DK_HAVE_AVX512_BF16)
    case CpuIsa::kAvx512Bf16:
      return AVX512_BF16::unpool_deconv_kernel_table();
#endif
#if defined(DK_HAVE_AVX512)
    case CpuIsa::kAvx512:
      return AVX512::unpool_deconv_kernel_table();
#endif
#if defined(DK_HAVE_AVX2)
    case CpuIsa::kAvx2:
      return AVX2::unpool_deconv_kernel_table();
#endif
    default:
      return DEFAULT::unpool_deconv_kernel_table();
  }
}

}  // namespace deconvkernels::cpu
