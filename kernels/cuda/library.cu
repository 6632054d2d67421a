// What the CUDA library says about itself: its ABI version and the text of its error codes.
#include <cuda_runtime.h>

#include "ratio_fast_kernels.h"

extern "C" int ratio_fast_abi_version(void) { return RATIO_FAST_ABI_VERSION; }

extern "C" const char* ratio_fast_cuda_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}
