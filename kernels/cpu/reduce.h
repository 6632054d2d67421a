// Sums over one sample, in fp32 with independent lanes: the compiler vectorizes the loop, and
// the rounding error grows like d / kLanes additions instead of d (close to torch's own sums).
#pragma once

#include <cstdint>

namespace ratio_fast {

constexpr int kLanes = 16;

// sum_{j < d} term(j); term may also write element j of an output (it is called once per j).
template <typename Term>
inline float lane_sum(int64_t d, Term&& term) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= d; j += kLanes) {
    for (int k = 0; k < kLanes; ++k) acc[k] += term(j + k);
  }
  for (int k = 0; j < d; ++j, ++k) acc[k] += term(j);
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int k = 0; k < width; ++k) acc[k] += acc[k + width];
  }
  return acc[0];
}

}  // namespace ratio_fast
