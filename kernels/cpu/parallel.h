// The one parallel loop of the CPU kernels: samples are independent, so OpenMP splits the batch.
#pragma once

#include <algorithm>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace ratio_fast {

// Below this much work per thread (elements of one array), waking and joining a thread costs
// more than it saves; on a busy machine a woken thread may wait a whole scheduler slice.
constexpr int64_t kMinElementsPerThread = int64_t(1) << 15;

// Calls f(i) for every sample i < n (d elements each) on at most num_threads threads
// (<= 0: the OpenMP default), fewer when the batch is small.
template <typename F>
void for_each_sample(int64_t n, int64_t d, int num_threads, F&& f) {
#ifdef _OPENMP
  if (num_threads <= 0) num_threads = omp_get_max_threads();
  const int64_t threads = std::min<int64_t>({num_threads, n, std::max<int64_t>(1, n * d / kMinElementsPerThread)});
  if (threads > 1) {
#pragma omp parallel for schedule(static) num_threads(int(threads))
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
#else
  (void)d, (void)num_threads;
#endif
  for (int64_t i = 0; i < n; ++i) f(i);
}

}  // namespace ratio_fast
