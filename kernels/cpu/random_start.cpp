// The random start on the CPU: per sample, scale the noise to length scale_i, add it to x and
// clip to [0,1] (see ratio_fast/ops/random_start.py). OpenMP over samples.
#include <cmath>

#include "nan_rule.h"
#include "parallel.h"
#include "ratio_fast_kernels.h"
#include "reduce.h"
#include "storage_types.h"

namespace ratio_fast {
namespace {

template <typename XT>
void random_start_sample(const XT* x, const float* noise, float scale, XT* x_out, float* delta_out, int64_t d) {
  const float sq = lane_sum(d, [&](int64_t j) { return noise[j] * noise[j]; });
  const float norm = std::sqrt(sq);
  const float factor = scale / norm_or_one(norm);  // zero noise: no perturbation, not NaN
  for (int64_t j = 0; j < d; ++j) {
    const float xj = to_float(x[j]);
    const float x_adv = clamp01(xj + noise[j] * factor);
    x_out[j] = from_float<XT>(x_adv);
    delta_out[j] = x_adv - xj;
  }
}

}  // namespace
}  // namespace ratio_fast

extern "C" int ratio_fast_cpu_random_start(const void* x, int x_dtype, const float* noise, const float* scale,
                                           void* x_out, float* delta_out, int64_t n, int64_t d, int num_threads) {
  using namespace ratio_fast;
  if (n < 0 || d < 0) return RF_ERROR_ARGUMENT;
  const bool known = with_storage_type(x_dtype, [&](auto x_type) {
    using XT = decltype(x_type);
    for_each_sample(n, d, num_threads, [&](int64_t i) {
      random_start_sample(static_cast<const XT*>(x) + i * d, noise + i * d, scale[i],
                          static_cast<XT*>(x_out) + i * d, delta_out + i * d, d);
    });
  });
  return known ? 0 : RF_ERROR_DTYPE;
}
