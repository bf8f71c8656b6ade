// The CPU check that every switch names a position inside its window and the input,
// shared by the CPU launchers of all ops that read switches.
#pragma once

#include <ATen/core/Tensor.h>

#include "../kernels/common.h"

namespace deconvkernels {

// Throws kBadSwitchMessage for a bad switch. switches4: 4-D uint8, any strides.
void validate_switches_cpu(const at::Tensor& switches4, const PoolGeom& g);

}  // namespace deconvkernels
