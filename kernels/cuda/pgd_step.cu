// The projected PGD step in CUDA, in L2 or L-infinity: one block per sample, block reductions for
// the norms.
//
// Same math and sweeps as kernels/cpu/pgd_step.cpp. Samples of up to kItems * 1024 elements
// (CIFAR's 3072 included) stay in registers, kItems per thread: each input is read once and each
// output written once. Larger samples take the looping path, which keeps the same sweeps in
// global memory: for L2, v' goes to the velocity output (or the delta output as scratch),
// d + step * v' to the delta output, and every thread re-reads only the elements it wrote itself,
// so no synchronization is needed between sweeps beyond the reductions; for L-infinity, ||g||_1
// is the only reduction and a second sweep writes every output.
#include "common.cuh"
#include "pgd_step_sample.h"

namespace ratio_fast {
namespace {

constexpr int kItems = 8;            // elements per thread on the register path
constexpr int kLoopThreads = 512;    // threads per block on the looping path

// Non-finite gradient (fp16 overflow): the sample keeps its delta and velocity.
template <typename XT, typename GT>
__device__ void keep_sample(const PgdStepSample<XT, GT>& s, int64_t d) {
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const float xj = load_float(s.x() + j), x_adv = clamp01(xj + s.delta()[j]);
    store_float(s.x_out() + j, x_adv);
    s.delta_out()[j] = x_adv - xj;
    if (s.velocity()) s.velocity_out()[j] = s.velocity()[j];
  }
}

// The register path's loads: this thread's kItems elements of every input (0 past the end of the
// sample, and for v without a velocity buffer), all up front so that many requests are in
// flight per thread. Returns this thread's part of ||g||_1.
template <typename XT, typename GT>
__device__ __forceinline__ float load_in_registers(const PgdStepArgs& a, const PgdStepSample<XT, GT>& s,
                                                   float (&g)[kItems], float (&d)[kItems], float (&v_old)[kItems],
                                                   float (&xs)[kItems]) {
  float l1_part = 0.0f;
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    const int64_t j = threadIdx.x + int64_t(k) * blockDim.x;
    const bool in = j < a.d;
    g[k] = in ? load_float(s.grad() + j) : 0.0f;
    d[k] = in ? s.delta()[j] : 0.0f;
    v_old[k] = in && a.velocity ? s.velocity()[j] : 0.0f;
    xs[k] = in ? load_float(s.x() + j) : 0.0f;
    l1_part += fabsf(g[k]);
  }
  return l1_part;
}

// ||g||_1 of a sample on the looping path, in every thread of the block.
template <typename XT, typename GT>
__device__ __forceinline__ float gradient_l1(const PgdStepArgs& a, const PgdStepSample<XT, GT>& s, float* scratch) {
  float l1_part = 0.0f;
  for (int64_t j = threadIdx.x; j < a.d; j += blockDim.x) l1_part += fabsf(load_float(s.grad() + j));
  return block_sum(l1_part, scratch);
}

// --- L2 ---

// Launch bounds: the register budget must allow the largest block (1024 threads) to launch.
template <typename XT, typename GT>
__global__ void __launch_bounds__(kMaxThreads) pgd_step_in_registers(PgdStepArgs a) {
  __shared__ float scratch[32];
  const PgdStepSample<XT, GT> s(a, blockIdx.x);
  float g[kItems], d[kItems], v_old[kItems], xs[kItems];
  const float l1 = block_sum(load_in_registers(a, s, g, d, v_old, xs), scratch);
  if (!isfinite(l1)) {  // the same value in every thread: the whole block returns here
    keep_sample(s, a.d);
    return;
  }
  const float inv_l1 = inverse_l1(l1);

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
  const float scale = projection_scale(sqrtf(block_sum(dd_part, scratch)), a.eps[blockIdx.x]);

#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    const int64_t j = threadIdx.x + int64_t(k) * blockDim.x;
    if (j < a.d) {
      const float x_adv = clamp01(xs[k] + d[k] * scale);
      store_float(s.x_out() + j, x_adv);
      s.delta_out()[j] = x_adv - xs[k];
      if (a.velocity) s.velocity_out()[j] = v[k];
    }
  }
}

template <typename XT, typename GT>
__global__ void __launch_bounds__(kMaxThreads) pgd_step_looping(PgdStepArgs a) {
  __shared__ float scratch[32];
  const PgdStepSample<XT, GT> s(a, blockIdx.x);

  const float l1 = gradient_l1(a, s, scratch);
  if (!isfinite(l1)) {
    keep_sample(s, a.d);
    return;
  }
  const float inv_l1 = inverse_l1(l1);

  const GT* grad = s.grad();
  const float* v_old = s.velocity();
  float* delta_out = s.delta_out();
  float* v_new = v_old ? s.velocity_out() : delta_out;  // scratch without a velocity output
  float vv_part = 0.0f;
  for (int64_t j = threadIdx.x; j < a.d; j += blockDim.x) {
    const float v = (v_old ? a.momentum * v_old[j] : 0.0f) + load_float(grad + j) * inv_l1;
    v_new[j] = v;
    vv_part += v * v;
  }
  const float vv = block_sum(vv_part, scratch);
  const float step_dir = a.step[blockIdx.x] / norm_or_one(sqrtf(vv));

  const float* delta = s.delta();
  float dd_part = 0.0f;
  for (int64_t j = threadIdx.x; j < a.d; j += blockDim.x) {
    const float d_new = delta[j] + step_dir * v_new[j];  // v_new may alias delta_out[j]: read first
    delta_out[j] = d_new;
    dd_part += d_new * d_new;
  }
  const float scale = projection_scale(sqrtf(block_sum(dd_part, scratch)), a.eps[blockIdx.x]);

  const XT* x = s.x();
  XT* x_out = s.x_out();
  for (int64_t j = threadIdx.x; j < a.d; j += blockDim.x) {
    const float xj = load_float(x + j), x_adv = clamp01(xj + delta_out[j] * scale);
    store_float(x_out + j, x_adv);
    delta_out[j] = x_adv - xj;
  }
}

// --- L-infinity ---

template <typename XT, typename GT>
__global__ void __launch_bounds__(kMaxThreads) pgd_step_linf_in_registers(PgdStepArgs a) {
  __shared__ float scratch[32];
  const PgdStepSample<XT, GT> s(a, blockIdx.x);
  float g[kItems], d[kItems], v[kItems], xs[kItems];  // v and d are updated in place
  const float l1 = block_sum(load_in_registers(a, s, g, d, v, xs), scratch);
  if (!isfinite(l1)) {  // the same value in every thread: the whole block returns here
    keep_sample(s, a.d);
    return;
  }
  const float inv_l1 = inverse_l1(l1), eps = a.eps[blockIdx.x], step = a.step[blockIdx.x];
  const bool has_velocity = a.velocity != nullptr;
#pragma unroll
  for (int k = 0; k < kItems; ++k) {  // the sign of v' with a velocity buffer, of g itself without one
    v[k] = a.momentum * v[k] + g[k] * inv_l1;
    d[k] = linf_step(d[k], has_velocity ? v[k] : g[k], step, eps);
  }
  // Computing first and storing in a second loop, as the L2 kernel does, keeps the registers at
  // the L2 kernel's (one loop took up to 61 per thread, which allows fewer blocks per SM).
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    const int64_t j = threadIdx.x + int64_t(k) * blockDim.x;
    if (j < a.d) {
      const float x_adv = clamp01(xs[k] + d[k]);
      store_float(s.x_out() + j, x_adv);
      s.delta_out()[j] = x_adv - xs[k];
      if (has_velocity) s.velocity_out()[j] = v[k];
    }
  }
}

template <typename XT, typename GT>
__global__ void __launch_bounds__(kMaxThreads) pgd_step_linf_looping(PgdStepArgs a) {
  __shared__ float scratch[32];
  const PgdStepSample<XT, GT> s(a, blockIdx.x);
  const float l1 = gradient_l1(a, s, scratch);
  if (!isfinite(l1)) {
    keep_sample(s, a.d);
    return;
  }
  const float inv_l1 = inverse_l1(l1), eps = a.eps[blockIdx.x], step = a.step[blockIdx.x];
  const float* v_old = s.velocity();
  for (int64_t j = threadIdx.x; j < a.d; j += blockDim.x) {
    const float gj = load_float(s.grad() + j), xj = load_float(s.x() + j);
    const float v = (v_old ? a.momentum * v_old[j] : 0.0f) + gj * inv_l1;
    const float x_adv = clamp01(xj + linf_step(s.delta()[j], v_old ? v : gj, step, eps));
    store_float(s.x_out() + j, x_adv);
    s.delta_out()[j] = x_adv - xj;
    if (v_old) s.velocity_out()[j] = v;
  }
}

// The kernel of a norm and path, for storage types XT and GT.
template <typename XT, typename GT>
auto pgd_step_kernel(int norm, bool in_registers) {
  if (norm == RF_NORM_LINF) return in_registers ? pgd_step_linf_in_registers<XT, GT> : pgd_step_linf_looping<XT, GT>;
  return in_registers ? pgd_step_in_registers<XT, GT> : pgd_step_looping<XT, GT>;
}

}  // namespace
}  // namespace ratio_fast

extern "C" int ratio_fast_cuda_pgd_step(const PgdStepArgs* args, int block, int device, void* stream) {
  using namespace ratio_fast;
  if (!args || !valid(*args) || !valid_launch(args->n, block)) return RF_ERROR_ARGUMENT;
  const PgdStepArgs& a = *args;
  if (a.n == 0 || a.d == 0) return 0;
  const bool in_registers = block == 0 && a.d <= int64_t(kItems) * kMaxThreads;
  const int threads = in_registers ? round_up_to_warp((a.d + kItems - 1) / kItems) : (block ? block : kLoopThreads);
  const DeviceGuard guard(device);
  const auto cuda_stream = static_cast<cudaStream_t>(stream);
  const bool known = Storage::with_pair(a.x_dtype, a.grad_dtype, [&](auto x_type, auto grad_type) {
    const auto kernel = pgd_step_kernel<decltype(x_type), decltype(grad_type)>(a.norm, in_registers);
    kernel<<<unsigned(a.n), threads, 0, cuda_stream>>>(a);
  });
  return known ? int(cudaGetLastError()) : RF_ERROR_DTYPE;
}
