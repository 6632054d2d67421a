// The projected PGD step on the CPU, in L2 or L-infinity: OpenMP over samples, vectorizable sweeps
// per sample.
//
// Per sample (see ratio_fast/ops/pgd_step.py for the math), both norms first take ||g||_1 (a
// sample whose gradient is not finite keeps its delta and velocity). L2 then makes three sweeps:
// v' written to the velocity output (or, without one, to the delta output as scratch) while
// summing ||v'||^2; d + step * v' / ||v'|| written to the delta output while summing its squared
// norm; the projection and the box clip. L-infinity needs no further norm: one sweep computes v',
// the sign step, the clip to [-eps, eps] and the box clip. A sample (d fp32 values per array)
// stays in L1/L2 between sweeps, so memory traffic is one read of each input and one write of
// each output.
#include <algorithm>
#include <cmath>

#include "entry_point.h"
#include "nan_rule.h"
#include "parallel.h"
#include "pgd_step_sample.h"
#include "reduce.h"
#include "storage_types.h"

namespace ratio_fast {
namespace {

// A sample whose gradient is not finite (fp16 overflow): delta and velocity kept, x + delta clipped.
template <typename XT, typename GT>
void keep_sample(const PgdStepSample<XT, GT>& s, int64_t d) {
  const XT* x = s.x();
  const float* delta = s.delta();
  XT* x_out = s.x_out();
  float* delta_out = s.delta_out();
  for (int64_t j = 0; j < d; ++j) {
    const float xj = to_float(x[j]), x_adv = clamp01(xj + delta[j]);
    x_out[j] = from_float<XT>(x_adv);
    delta_out[j] = x_adv - xj;
  }
  if (s.velocity_out()) std::copy(s.velocity(), s.velocity() + d, s.velocity_out());
}

// ||g||_1 of a sample: both norms' velocity term, and whether its gradient is finite.
template <typename XT, typename GT>
float gradient_l1(const PgdStepSample<XT, GT>& s, int64_t d) {
  const GT* g = s.grad();
  return lane_sum(d, [&](int64_t j) { return std::fabs(to_float(g[j])); });
}

template <typename XT, typename GT>
void l2_step_sample(const PgdStepArgs& a, int64_t i) {
  const PgdStepSample<XT, GT> s(a, i);
  const int64_t d = a.d;
  const XT* x = s.x();
  const GT* g = s.grad();
  const float* delta = s.delta();
  const float* v_old = s.velocity();
  XT* x_out = s.x_out();
  float* delta_out = s.delta_out();
  float* v_out = s.velocity_out();

  const float l1 = gradient_l1(s, d);
  if (!std::isfinite(l1)) {
    keep_sample(s, d);
    return;
  }

  const float inv_l1 = inverse_l1(l1);
  float* v_new = v_out ? v_out : delta_out;  // scratch without a velocity output
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

  const float scale = projection_scale(std::sqrt(dd), a.eps[i]);  // eps 0: scale 0, no perturbation
  for (int64_t j = 0; j < d; ++j) {
    const float xj = to_float(x[j]), x_adv = clamp01(xj + delta_out[j] * scale);
    x_out[j] = from_float<XT>(x_adv);
    delta_out[j] = x_adv - xj;
  }
}

template <typename XT, typename GT>
void linf_step_sample(const PgdStepArgs& a, int64_t i) {
  const PgdStepSample<XT, GT> s(a, i);
  const int64_t d = a.d;
  const XT* x = s.x();
  const GT* g = s.grad();
  const float* delta = s.delta();
  const float* v_old = s.velocity();
  XT* x_out = s.x_out();
  float* delta_out = s.delta_out();
  float* v_out = s.velocity_out();

  const float l1 = gradient_l1(s, d);
  if (!std::isfinite(l1)) {
    keep_sample(s, d);
    return;
  }

  // Locals, not a.<field> in the loops: a store through v_out could alias the struct, which would
  // force a reload per element and keep the loop from vectorizing.
  const float inv_l1 = inverse_l1(l1), eps = a.eps[i], step = a.step[i], momentum = a.momentum;
  const auto step_along = [&](const auto* direction) {  // delta + step * sign(direction), clipped twice
    for (int64_t j = 0; j < d; ++j) {
      const float xj = to_float(x[j]), x_adv = clamp01(xj + linf_step(delta[j], to_float(direction[j]), step, eps));
      x_out[j] = from_float<XT>(x_adv);
      delta_out[j] = x_adv - xj;
    }
  };
  // The sign of v' = momentum * v + g / ||g||_1 with a velocity buffer, of g itself without one.
  // v' goes to the velocity output first: one loop over all seven arrays needs more runtime
  // alias checks than GCC versions a loop for (10), and ran scalar, 3.5x slower.
  if (v_old) {
    for (int64_t j = 0; j < d; ++j) v_out[j] = momentum * v_old[j] + to_float(g[j]) * inv_l1;
    step_along(v_out);
  } else {
    step_along(g);
  }
}

}  // namespace
}  // namespace ratio_fast

extern "C" int ratio_fast_cpu_pgd_step(const PgdStepArgs* args, int num_threads) {
  using namespace ratio_fast;
  if (!args || !valid(*args)) return RF_ERROR_ARGUMENT;
  const PgdStepArgs& a = *args;
  const bool known = Storage::with_pair(a.x_dtype, a.grad_dtype, [&](auto x_type, auto grad_type) {
    using XT = decltype(x_type);
    using GT = decltype(grad_type);
    const auto step_sample = a.norm == RF_NORM_LINF ? linf_step_sample<XT, GT> : l2_step_sample<XT, GT>;
    for_each_sample(a.n, a.d, num_threads, [&](int64_t i) { step_sample(a, i); });
  });
  return known ? 0 : RF_ERROR_DTYPE;
}
