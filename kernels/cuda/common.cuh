// Shared by the CUDA kernels: storage-type loads and stores, the block reductions, the storage
// types and the device guard of the C entry points (clamp01, norm_or_one and the others: nan_rule.h).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "entry_point.h"
#include "nan_rule.h"

namespace ratio_fast {

__device__ __forceinline__ float load_float(const float* p) { return *p; }
__device__ __forceinline__ float load_float(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float load_float(const __nv_bfloat16* p) { return __bfloat162float(*p); }

__device__ __forceinline__ void store_float(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_float(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store_float(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

struct Plus {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};

struct MaxKeepingNan {  // of values >= 0 (magnitudes), whose identity is 0 as the sum's is
  __device__ __forceinline__ float operator()(float a, float b) const { return max_keeping_nan(a, b); }
};

template <typename Op>
__device__ __forceinline__ float warp_reduce(float v, Op op) {
  for (int offset = 16; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// op (Plus or MaxKeepingNan) of v over the block, returned to every thread (blockDim.x a multiple
// of 32). Every warp combines the per-warp partials in the same order, so all threads get the same
// bits and branch alike. scratch: 32 floats of shared memory, free again when this returns.
template <typename Op>
__device__ __forceinline__ float block_reduce(float v, float* scratch, Op op) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_reduce(v, op);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const float total = warp_reduce(lane < warps ? scratch[lane] : 0.0f, op);
  __syncthreads();
  return total;
}

__device__ __forceinline__ float block_sum(float v, float* scratch) { return block_reduce(v, scratch, Plus{}); }

using Storage = StorageTypes<__half, __nv_bfloat16>;  // the rf_dtype codes' types on the device

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

constexpr int kMaxThreads = 1024;  // CUDA's limit per block

inline int round_up_to_warp(int64_t threads) { return int((threads + 31) / 32 * 32); }

// What both entry points require of a launch: one block per sample (a grid dimension holds
// INT32_MAX), and a forced block size that is whole warps within the limit (0: the kernel's own).
inline bool valid_launch(int64_t n, int block) {
  return n <= INT32_MAX && block >= 0 && block % 32 == 0 && block <= kMaxThreads;
}

}  // namespace ratio_fast
