// Shared by the CUDA kernels: storage-type loads and stores, the block reduction, the dtype
// dispatch and the device guard of the C entry points (clamp01 and norm_or_one: nan_rule.h).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "nan_rule.h"
#include "ratio_fast_kernels.h"

namespace ratio_fast {

__device__ __forceinline__ float load_float(const float* p) { return *p; }
__device__ __forceinline__ float load_float(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float load_float(const __nv_bfloat16* p) { return __bfloat162float(*p); }

__device__ __forceinline__ void store_float(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_float(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store_float(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// The sum of v over the block, returned to every thread (blockDim.x a multiple of 32). Every warp
// adds the per-warp partials in the same order, so all threads get the same bits and branch alike.
// scratch: 32 floats of shared memory, free again when this returns.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const float total = warp_sum(lane < warps ? scratch[lane] : 0.0f);
  __syncthreads();
  return total;
}

// Calls f(T{}) with T the device storage type of an rf_dtype code; false for an unknown code.
template <typename F>
bool with_storage_type(int dtype, F&& f) {
  switch (dtype) {
    case RF_FLOAT32: f(float{}); return true;
    case RF_FLOAT16: f(__half{}); return true;
    case RF_BFLOAT16: f(__nv_bfloat16{}); return true;
    default: return false;
  }
}

// Makes `device` current for the launch and restores the caller's device afterwards. This
// library links its own CUDA runtime, whose current device need not follow torch's.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    cudaGetDevice(&previous_);
    if (previous_ != device) cudaSetDevice(device);
  }
  ~DeviceGuard() {
    int current = previous_;
    cudaGetDevice(&current);
    if (current != previous_) cudaSetDevice(previous_);
  }

 private:
  int previous_ = 0;
};

inline int round_up_to_warp(int64_t threads) { return int((threads + 31) / 32 * 32); }

}  // namespace ratio_fast
