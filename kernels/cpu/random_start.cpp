// The random start on the CPU: per sample, scale the noise to length scale_i in the L2 or the
// L-infinity norm, add it to x and clip to [0,1] (see ratio_fast/ops/random_start.py). OpenMP over
// samples.
#include <cmath>

#include "entry_point.h"
#include "nan_rule.h"
#include "parallel.h"
#include "reduce.h"
#include "storage_types.h"

namespace ratio_fast {
namespace {

template <typename XT>
void random_start_sample(const RandomStartArgs& a, int64_t i) {
  const int64_t d = a.d;
  const XT* x = static_cast<const XT*>(a.x) + i * d;
  const float* noise = a.noise + i * d;
  XT* x_out = static_cast<XT*>(a.x_out) + i * d;
  float* delta_out = a.delta_out + i * d;
  const float norm = a.norm == RF_NORM_LINF ? lane_max(d, [&](int64_t j) { return std::fabs(noise[j]); })
                                            : std::sqrt(lane_sum(d, [&](int64_t j) { return noise[j] * noise[j]; }));
  const float factor = a.scale[i] / norm_or_one(norm);  // zero noise: no perturbation, not NaN
  for (int64_t j = 0; j < d; ++j) {
    const float xj = to_float(x[j]);
    const float x_adv = clamp01(xj + noise[j] * factor);
    x_out[j] = from_float<XT>(x_adv);
    delta_out[j] = x_adv - xj;
  }
}

}  // namespace
}  // namespace ratio_fast

extern "C" int ratio_fast_cpu_random_start(const RandomStartArgs* args, int num_threads) {
  using namespace ratio_fast;
  if (!args || !valid(*args)) return RF_ERROR_ARGUMENT;
  const RandomStartArgs& a = *args;
  const bool known = Storage::with(a.x_dtype, [&](auto x_type) {
    for_each_sample(a.n, a.d, num_threads, [&](int64_t i) { random_start_sample<decltype(x_type)>(a, i); });
  });
  return known ? 0 : RF_ERROR_DTYPE;
}
