// The CPU kernels' dtype tag (pool_kernels.h) from an ATen dtype, for the launchers; the
// per-ISA kernel files see only the tag, not ATen's types.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include "pool_kernels.h"

namespace deconvkernels::cpu {

inline ScalarKind scalar_kind(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return ScalarKind::kFloat;
    case at::kDouble:
      return ScalarKind::kDouble;
    case at::kHalf:
      return ScalarKind::kHalf;
    case at::kBFloat16:
      return ScalarKind::kBFloat16;
    default:
      TORCH_CHECK(false, "unsupported dtype ", dtype);
  }
}

}  // namespace deconvkernels::cpu
