// The projected L2 PGD step in CUDA: one block per sample, block reductions for the norms.
//
// Same math and sweeps as kernels/cpu/pgd_step.cpp. Samples of up to kItems * 1024 elements
// (CIFAR's 3072 included) stay in registers, kItems per thread: each input is read once and each
// output written once. Larger samples take the looping path, which keeps the same sweeps in
// global memory: v' goes to the velocity output (or the delta output as scratch), d + step * v'
// to the delta output, and every thread re-reads only the elements it wrote itself, so no
// synchronization is needed between sweeps beyond the reductions.
#include "common.cuh"
#include "pgd_step_args.h"

namespace ratio_fast {
namespace {

constexpr int kItems = 8;            // elements per thread on the register path
constexpr int kMaxThreads = 1024;    // CUDA's limit per block
constexpr int kLoopThreads = 512;    // threads per block on the looping path

// Non-finite gradient (fp16 overflow): the sample keeps its delta and velocity.
template <typename XT>
__device__ void keep_sample(const PgdStepArgs& a, int64_t base) {
  const XT* x = static_cast<const XT*>(a.x) + base;
  XT* x_out = static_cast<XT*>(a.x_out) + base;
  for (int64_t j = threadIdx.x; j < a.d; j += blockDim.x) {
    const float xj = load_float(x + j), x_adv = clamp01(xj + a.delta[base + j]);
    store_float(x_out + j, x_adv);
    a.delta_out[base + j] = x_adv - xj;
    if (a.velocity) a.velocity_out[base + j] = a.velocity[base + j];
  }
}

// Launch bounds: the register budget must allow the largest block (1024 threads) to launch.
template <typename XT, typename GT>
__global__ void __launch_bounds__(kMaxThreads) pgd_step_in_registers(PgdStepArgs a) {
  __shared__ float scratch[32];
  const int64_t base = int64_t(blockIdx.x) * a.d;
  const XT* x = static_cast<const XT*>(a.x) + base;
  const GT* grad = static_cast<const GT*>(a.grad) + base;
  float g[kItems], d[kItems], v_old[kItems], xs[kItems];
  float l1_part = 0.0f;
#pragma unroll
  for (int k = 0; k < kItems; ++k) {  // every load up front: many requests in flight per thread
    const int64_t j = threadIdx.x + int64_t(k) * blockDim.x;
    const bool in = j < a.d;
    g[k] = in ? load_float(grad + j) : 0.0f;
    d[k] = in ? a.delta[base + j] : 0.0f;
    v_old[k] = in && a.velocity ? a.velocity[base + j] : 0.0f;
    xs[k] = in ? load_float(x + j) : 0.0f;
    l1_part += fabsf(g[k]);
  }
  const float l1 = block_sum(l1_part, scratch);
  if (!isfinite(l1)) {  // the same value in every thread: the whole block returns here
    keep_sample<XT>(a, base);
    return;
  }
  const float inv_l1 = l1 > 0 ? 1.0f / l1 : 0.0f;

  float v[kItems], vv_part = 0.0f;
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    v[k] = a.momentum * v_old[k] + g[k] * inv_l1;  // 0 past the end: both terms are
    vv_part += v[k] * v[k];
  }
  const float vv = block_sum(vv_part, scratch);
  const float step_dir = a.step[blockIdx.x] / norm_or_one(sqrtf(vv));  // zero direction: v = 0, no step

  float dd_part = 0.0f;
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    d[k] += step_dir * v[k];
    dd_part += d[k] * d[k];
  }
  const float d_norm = sqrtf(block_sum(dd_part, scratch)), eps = a.eps[blockIdx.x];
  const float scale = d_norm > eps ? eps / d_norm : 1.0f;

  XT* x_out = static_cast<XT*>(a.x_out) + base;
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    const int64_t j = threadIdx.x + int64_t(k) * blockDim.x;
    if (j < a.d) {
      const float x_adv = clamp01(xs[k] + d[k] * scale);
      store_float(x_out + j, x_adv);
      a.delta_out[base + j] = x_adv - xs[k];
      if (a.velocity) a.velocity_out[base + j] = v[k];
    }
  }
}

template <typename XT, typename GT>
__global__ void __launch_bounds__(kMaxThreads) pgd_step_looping(PgdStepArgs a) {
  __shared__ float scratch[32];
  const int64_t base = int64_t(blockIdx.x) * a.d;
  const XT* x = static_cast<const XT*>(a.x) + base;
  const GT* grad = static_cast<const GT*>(a.grad) + base;
  const float* delta = a.delta + base;
  float* delta_out = a.delta_out + base;

  float l1_part = 0.0f;
  for (int64_t j = threadIdx.x; j < a.d; j += blockDim.x) l1_part += fabsf(load_float(grad + j));
  const float l1 = block_sum(l1_part, scratch);
  if (!isfinite(l1)) {
    keep_sample<XT>(a, base);
    return;
  }
  const float inv_l1 = l1 > 0 ? 1.0f / l1 : 0.0f;

  const float* v_old = a.velocity ? a.velocity + base : nullptr;
  float* v_new = a.velocity ? a.velocity_out + base : delta_out;  // scratch without a velocity output
  float vv_part = 0.0f;
  for (int64_t j = threadIdx.x; j < a.d; j += blockDim.x) {
    const float v = (v_old ? a.momentum * v_old[j] : 0.0f) + load_float(grad + j) * inv_l1;
    v_new[j] = v;
    vv_part += v * v;
  }
  const float vv = block_sum(vv_part, scratch);
  const float step_dir = a.step[blockIdx.x] / norm_or_one(sqrtf(vv));

  float dd_part = 0.0f;
  for (int64_t j = threadIdx.x; j < a.d; j += blockDim.x) {
    const float d_new = delta[j] + step_dir * v_new[j];  // v_new may alias delta_out[j]: read first
    delta_out[j] = d_new;
    dd_part += d_new * d_new;
  }
  const float d_norm = sqrtf(block_sum(dd_part, scratch)), eps = a.eps[blockIdx.x];
  const float scale = d_norm > eps ? eps / d_norm : 1.0f;

  XT* x_out = static_cast<XT*>(a.x_out) + base;
  for (int64_t j = threadIdx.x; j < a.d; j += blockDim.x) {
    const float xj = load_float(x + j), x_adv = clamp01(xj + delta_out[j] * scale);
    store_float(x_out + j, x_adv);
    delta_out[j] = x_adv - xj;
  }
}

}  // namespace
}  // namespace ratio_fast

extern "C" int ratio_fast_cuda_pgd_step(const void* x, int x_dtype, const float* delta, const void* grad,
                                        int grad_dtype, const float* velocity, const float* eps, const float* step,
                                        void* x_out, float* delta_out, float* velocity_out, int64_t n, int64_t d,
                                        float momentum, int block, int device, void* stream) {
  using namespace ratio_fast;
  if (n < 0 || d < 0 || n > INT32_MAX || (velocity && !velocity_out)) return RF_ERROR_ARGUMENT;
  if (block < 0 || block % 32 != 0 || block > kMaxThreads) return RF_ERROR_ARGUMENT;
  if (n == 0 || d == 0) return 0;
  const PgdStepArgs args{x, delta, grad, velocity, eps, step, x_out, delta_out, velocity_out, d, momentum};
  const bool in_registers = block == 0 && d <= int64_t(kItems) * kMaxThreads;
  const int threads = in_registers ? round_up_to_warp((d + kItems - 1) / kItems) : (block ? block : kLoopThreads);
  const DeviceGuard guard(device);
  const auto cuda_stream = static_cast<cudaStream_t>(stream);
  bool known = false;
  with_storage_type(x_dtype, [&](auto x_type) {
    known = with_storage_type(grad_dtype, [&](auto grad_type) {
      using XT = decltype(x_type);
      using GT = decltype(grad_type);
      if (in_registers) {
        pgd_step_in_registers<XT, GT><<<unsigned(n), threads, 0, cuda_stream>>>(args);
      } else {
        pgd_step_looping<XT, GT><<<unsigned(n), threads, 0, cuda_stream>>>(args);
      }
    });
  });
  return known ? int(cudaGetLastError()) : RF_ERROR_DTYPE;
}
