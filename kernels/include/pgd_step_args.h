// The PGD step's per-launch arguments, shared by the CPU and CUDA implementations (internal:
// not part of the C ABI in ratio_fast_kernels.h). One sample is d contiguous elements.
#pragma once

#include <stdint.h>

namespace ratio_fast {

struct PgdStepArgs {
  const void* x;
  const float* delta;
  const void* grad;
  const float* velocity;  // null: no momentum buffer
  const float* eps;
  const float* step;
  void* x_out;
  float* delta_out;
  float* velocity_out;
  int64_t d;
  float momentum;
};

}  // namespace ratio_fast
