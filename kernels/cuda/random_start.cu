// The random start in CUDA: one block per sample; a block reduction for ||noise||, then
// x' = clamp(x + noise * scale / ||noise||, 0, 1) (see kernels/cpu/random_start.cpp).
#include "common.cuh"

namespace ratio_fast {
namespace {

constexpr int kItemsPerThread = 8;  // sizes the block: enough threads, not one per element
constexpr int kMaxThreads = 1024;

template <typename XT>
__global__ void __launch_bounds__(kMaxThreads) random_start_kernel(const XT* x, const float* noise, const float* scale, XT* x_out,
                                    float* delta_out, int64_t d) {
  __shared__ float scratch[32];
  const int64_t base = int64_t(blockIdx.x) * d;
  float sq_part = 0.0f;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) sq_part += noise[base + j] * noise[base + j];
  const float norm = sqrtf(block_sum(sq_part, scratch));
  const float factor = scale[blockIdx.x] / norm_or_one(norm);  // zero noise: no perturbation
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const float xj = load_float(x + base + j), x_adv = clamp01(xj + noise[base + j] * factor);
    store_float(x_out + base + j, x_adv);
    delta_out[base + j] = x_adv - xj;
  }
}

}  // namespace
}  // namespace ratio_fast

extern "C" int ratio_fast_cuda_random_start(const void* x, int x_dtype, const float* noise, const float* scale,
                                            void* x_out, float* delta_out, int64_t n, int64_t d, int block,
                                            int device, void* stream) {
  using namespace ratio_fast;
  if (n < 0 || d < 0 || n > INT32_MAX) return RF_ERROR_ARGUMENT;
  if (block < 0 || block % 32 != 0 || block > kMaxThreads) return RF_ERROR_ARGUMENT;
  if (n == 0 || d == 0) return 0;
  const int64_t wanted = (d + kItemsPerThread - 1) / kItemsPerThread;
  const int threads = block ? block : round_up_to_warp(wanted < kMaxThreads ? wanted : kMaxThreads);
  const DeviceGuard guard(device);
  const bool known = with_storage_type(x_dtype, [&](auto x_type) {
    using XT = decltype(x_type);
    random_start_kernel<XT><<<unsigned(n), threads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const XT*>(x), noise, scale, static_cast<XT*>(x_out), delta_out, d);
  });
  return known ? int(cudaGetLastError()) : RF_ERROR_DTYPE;
}
