// Reductions over one sample, in fp32 with independent lanes: the compiler vectorizes the loop, and
// the rounding error of a sum grows like d / kLanes additions instead of d (close to torch's own sums).
#pragma once

#include <cstdint>

#include "nan_rule.h"

namespace ratio_fast {

constexpr int kLanes = 16;

// combine over term(j), j < d, starting from 0 in every lane (the identity of both reductions
// below); term may also write element j of an output (it is called once per j).
template <typename Term, typename Combine>
inline float lane_reduce(int64_t d, Term&& term, Combine&& combine) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= d; j += kLanes) {
    for (int k = 0; k < kLanes; ++k) acc[k] = combine(acc[k], term(j + k));
  }
  for (int k = 0; j < d; ++j, ++k) acc[k] = combine(acc[k], term(j));
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int k = 0; k < width; ++k) acc[k] = combine(acc[k], acc[k + width]);
  }
  return acc[0];
}

// sum_{j < d} term(j).
template <typename Term>
inline float lane_sum(int64_t d, Term&& term) {
  return lane_reduce(d, term, [](float a, float b) { return a + b; });
}

// max_{j < d} term(j) of terms >= 0 (magnitudes), NaN if any term is NaN.
template <typename Term>
inline float lane_max(int64_t d, Term&& term) {
  return lane_reduce(d, term, max_keeping_nan);
}

}  // namespace ratio_fast
