// The CPU pooling kernels compiled for one ISA. setup.py compiles every file in this
// folder with its ISA's flags and CPU_CAPABILITY macros, chosen by the file-name suffix
// (_default, _avx2, _avx512); cpu_isa.cpp picks the table at run time.
#include "../pool_kernels_impl.h"
