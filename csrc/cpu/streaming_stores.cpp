#include "streaming_stores.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

namespace deconvkernels::cpu {
namespace {

// The largest data or unified cache of CPU 0, from sysfs ("32768K"): 0 if unreadable.
// (sysconf(_SC_LEVEL3_CACHE_SIZE) is not used: glibc derives it from cpuid, which a VM may
// fill oddly; one EPYC guest here reports 320 MiB for a 32 MiB L3.)
int64_t last_level_cache_from_sysfs() {
  int64_t best_level = 0, best_bytes = 0;
  for (int i = 0; i < 16; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    std::ifstream level_file(dir + "level"), type_file(dir + "type"), size_file(dir + "size");
    int64_t level = 0, size = 0;
    std::string type;
    char unit = 0;
    if (!(level_file >> level) || !(type_file >> type) || !(size_file >> size)) continue;
    if (type == "Instruction") continue;
    size_file >> unit;
    const int64_t bytes = unit == 'K' ? size << 10 : unit == 'M' ? size << 20 : size;
    if (level > best_level) best_level = level, best_bytes = bytes;
  }
  return best_bytes;
}

int64_t default_threshold() {
  static const int64_t bytes = [] {
    const char* v = std::getenv("DECONVKERNELS_STREAMING_STORES");
    if (v != nullptr && std::strcmp(v, "0") == 0) return int64_t(-1);
    int64_t llc = last_level_cache_from_sysfs();
    if (llc <= 0) llc = int64_t(32) << 20;
    return llc;
  }();
  return bytes;
}

std::atomic<int64_t> forced{-2};  // -2: none

}  // namespace

int64_t streaming_threshold() {
  const int64_t f = forced.load(std::memory_order_relaxed);
  return f >= -1 ? f : default_threshold();
}

bool streaming_stores_pay(int64_t bytes_touched) {
  const int64_t t = streaming_threshold();
  return t >= 0 && bytes_touched > t;
}

int64_t set_streaming_threshold(int64_t bytes) {
  const int64_t previous = streaming_threshold();
  forced.store(bytes >= 0 ? bytes : -2, std::memory_order_relaxed);
  return previous;
}

}  // namespace deconvkernels::cpu
