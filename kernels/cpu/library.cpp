// What the CPU library says about itself.
#include "ratio_fast_kernels.h"

extern "C" int ratio_fast_abi_version(void) { return RATIO_FAST_ABI_VERSION; }
