// Switches of the CUDA emulator that tests can turn (through deconvkernels._C).
#pragma once

#include <atomic>

namespace deconvkernels::cpu {

// Whether the emulator's launches decode element numbers with fast_unravel where they fit,
// as the GPU's do. Off, they take the 64-bit unravel that a GPU uses only past 2^31
// elements: the tests run both, since no test tensor is that large.
inline std::atomic<bool>& emulator_fast_unravel() {
  static std::atomic<bool> enabled{true};
  return enabled;
}

}  // namespace deconvkernels::cpu
