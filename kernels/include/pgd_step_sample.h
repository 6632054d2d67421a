// One sample of the PGD step as the CPU and CUDA kernels see it (internal: not part of the C ABI
// in ratio_fast_kernels.h): its slice of every array, in the storage types, and the per-sample
// scalars both backends compute alike.
#pragma once

#include "nan_rule.h"
#include "ratio_fast_kernels.h"

namespace ratio_fast {

// Sample i's d elements of each array of a PgdStepArgs, in its storage types; velocity() and
// velocity_out() are null when the step has no momentum buffer. Each pointer is computed where it
// is used, from the arguments and the sample's offset: a CUDA kernel then keeps one offset live
// across its block reductions, not seven pointers (8 registers more took 56 to 64 per thread).
template <typename XT, typename GT>
class PgdStepSample {
 public:
  RATIO_FAST_INLINE PgdStepSample(const PgdStepArgs& a, int64_t i) : a_(a), base_(i * a.d) {}

  RATIO_FAST_INLINE const XT* x() const { return static_cast<const XT*>(a_.x) + base_; }
  RATIO_FAST_INLINE const float* delta() const { return a_.delta + base_; }
  RATIO_FAST_INLINE const GT* grad() const { return static_cast<const GT*>(a_.grad) + base_; }
  RATIO_FAST_INLINE const float* velocity() const { return a_.velocity ? a_.velocity + base_ : nullptr; }
  RATIO_FAST_INLINE XT* x_out() const { return static_cast<XT*>(a_.x_out) + base_; }
  RATIO_FAST_INLINE float* delta_out() const { return a_.delta_out + base_; }
  RATIO_FAST_INLINE float* velocity_out() const { return a_.velocity ? a_.velocity_out + base_ : nullptr; }

 private:
  const PgdStepArgs& a_;
  int64_t base_;
};

// 1 / ||g||_1 for a finite norm; 0 for a zero gradient, whose velocity term is then 0, not 0 * inf.
RATIO_FAST_INLINE float inverse_l1(float l1) { return l1 > 0 ? 1.0f / l1 : 0.0f; }

// One element of the L-infinity step: d + step * sign(direction), clipped to [-eps, eps]. step times
// a sign is exact, so with or without a fused multiply-add every backend gets the same bits.
RATIO_FAST_INLINE float linf_step(float d, float direction, float step, float eps) {
  return clip_to_box(d + step * sign_keeping_nan(direction), eps);
}

// The factor that projects d' onto the ball of radius eps: 1 inside it, 0 for eps 0, and 1 for
// a NaN norm (not projected, as in the reference).
RATIO_FAST_INLINE float projection_scale(float d_norm, float eps) { return d_norm > eps ? eps / d_norm : 1.0f; }

}  // namespace ratio_fast
