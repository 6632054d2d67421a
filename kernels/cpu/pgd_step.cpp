// The projected L2 PGD step on the CPU: OpenMP over samples, four vectorizable sweeps per sample.
//
// Per sample (see ratio_fast/ops/pgd_step.py for the math): ||g||_1; then v' written to the
// velocity output (or, without one, to the delta output as scratch) while summing ||v'||^2; then
// d + step * v' / ||v'|| written to the delta output while summing its squared norm; then the
// projection and the box clip. A sample (d fp32 values per array) stays in L1/L2 between
// sweeps, so memory traffic is one read of each input and one write of each output.
#include <algorithm>
#include <cmath>

#include "nan_rule.h"
#include "parallel.h"
#include "pgd_step_args.h"
#include "ratio_fast_kernels.h"
#include "reduce.h"
#include "storage_types.h"

namespace ratio_fast {
namespace {

template <typename XT, typename GT>
void pgd_step_sample(const PgdStepArgs& a, int64_t i) {
  const int64_t d = a.d, base = i * d;
  const XT* x = static_cast<const XT*>(a.x) + base;
  const GT* g = static_cast<const GT*>(a.grad) + base;
  const float* delta = a.delta + base;
  const float* v_old = a.velocity ? a.velocity + base : nullptr;
  XT* x_out = static_cast<XT*>(a.x_out) + base;
  float* delta_out = a.delta_out + base;
  float* v_out = v_old ? a.velocity_out + base : nullptr;

  const float l1 = lane_sum(d, [&](int64_t j) { return std::fabs(to_float(g[j])); });
  if (!std::isfinite(l1)) {  // inf/NaN gradient (fp16 overflow): keep delta and velocity
    for (int64_t j = 0; j < d; ++j) {
      const float xj = to_float(x[j]), x_adv = clamp01(xj + delta[j]);
      x_out[j] = from_float<XT>(x_adv);
      delta_out[j] = x_adv - xj;
    }
    if (v_out) std::copy(v_old, v_old + d, v_out);
    return;
  }

  const float inv_l1 = l1 > 0 ? 1.0f / l1 : 0.0f;
  float* v_new = v_out ? v_out : delta_out;
  const float vv = v_old ? lane_sum(d, [&](int64_t j) {
    const float v = a.momentum * v_old[j] + to_float(g[j]) * inv_l1;
    v_new[j] = v;
    return v * v;
  })
                         : lane_sum(d, [&](int64_t j) {
                             const float v = to_float(g[j]) * inv_l1;
                             v_new[j] = v;
                             return v * v;
                           });

  // Zero direction (zero gradient and velocity): v' = 0, a zero step, not 0/0.
  const float step_dir = a.step[i] / norm_or_one(std::sqrt(vv));
  const float dd = lane_sum(d, [&](int64_t j) {
    const float d_new = delta[j] + step_dir * v_new[j];  // v_new may alias delta_out[j]: read first
    delta_out[j] = d_new;
    return d_new * d_new;
  });

  const float d_norm = std::sqrt(dd), eps = a.eps[i];
  const float scale = d_norm > eps ? eps / d_norm : 1.0f;  // eps 0: scale 0, no perturbation
  for (int64_t j = 0; j < d; ++j) {
    const float xj = to_float(x[j]), x_adv = clamp01(xj + delta_out[j] * scale);
    x_out[j] = from_float<XT>(x_adv);
    delta_out[j] = x_adv - xj;
  }
}

}  // namespace
}  // namespace ratio_fast

extern "C" int ratio_fast_cpu_pgd_step(const void* x, int x_dtype, const float* delta, const void* grad,
                                       int grad_dtype, const float* velocity, const float* eps, const float* step,
                                       void* x_out, float* delta_out, float* velocity_out, int64_t n, int64_t d,
                                       float momentum, int num_threads) {
  using namespace ratio_fast;
  if (n < 0 || d < 0 || (velocity && !velocity_out)) return RF_ERROR_ARGUMENT;
  const PgdStepArgs args{x, delta, grad, velocity, eps, step, x_out, delta_out, velocity_out, d, momentum};
  bool known = false;
  with_storage_type(x_dtype, [&](auto x_type) {
    known = with_storage_type(grad_dtype, [&](auto grad_type) {
      for_each_sample(n, d, num_threads, [&](int64_t i) {
        pgd_step_sample<decltype(x_type), decltype(grad_type)>(args, i);
      });
    });
  });
  return known ? 0 : RF_ERROR_DTYPE;
}
