// The random start in CUDA: one block per sample; a block reduction for ||noise|| (L2, or
// L-infinity: max |noise_j|), then x' = clamp(x + noise * scale / ||noise||, 0, 1) (see
// kernels/cpu/random_start.cpp).
#include "common.cuh"

namespace ratio_fast {
namespace {

constexpr int kItemsPerThread = 8;  // sizes the block: enough threads, not one per element

template <typename XT>
__global__ void __launch_bounds__(kMaxThreads) random_start_kernel(RandomStartArgs a) {
  __shared__ float scratch[32];
  const int64_t d = a.d, base = int64_t(blockIdx.x) * d;
  const XT* x = static_cast<const XT*>(a.x) + base;
  const float* noise = a.noise + base;
  XT* x_out = static_cast<XT*>(a.x_out) + base;
  float* delta_out = a.delta_out + base;
  float norm;
  if (a.norm == RF_NORM_LINF) {
    float max_part = 0.0f;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) max_part = max_keeping_nan(max_part, fabsf(noise[j]));
    norm = block_reduce(max_part, scratch, MaxKeepingNan{});
  } else {
    float sq_part = 0.0f;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) sq_part += noise[j] * noise[j];
    norm = sqrtf(block_sum(sq_part, scratch));
  }
  const float factor = a.scale[blockIdx.x] / norm_or_one(norm);  // zero noise: no perturbation
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const float xj = load_float(x + j), x_adv = clamp01(xj + noise[j] * factor);
    store_float(x_out + j, x_adv);
    delta_out[j] = x_adv - xj;
  }
}

}  // namespace
}  // namespace ratio_fast

extern "C" int ratio_fast_cuda_random_start(const RandomStartArgs* args, int block, int device, void* stream) {
  using namespace ratio_fast;
  if (!args || !valid(*args) || !valid_launch(args->n, block)) return RF_ERROR_ARGUMENT;
  const RandomStartArgs& a = *args;
  if (a.n == 0 || a.d == 0) return 0;
  const int64_t wanted = (a.d + kItemsPerThread - 1) / kItemsPerThread;
  const int threads = block ? block : round_up_to_warp(wanted < kMaxThreads ? wanted : kMaxThreads);
  const DeviceGuard guard(device);
  const bool known = Storage::with(a.x_dtype, [&](auto x_type) {
    random_start_kernel<decltype(x_type)><<<unsigned(a.n), threads, 0, static_cast<cudaStream_t>(stream)>>>(a);
  });
  return known ? int(cudaGetLastError()) : RF_ERROR_DTYPE;
}
