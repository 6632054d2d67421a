// The NaN rule of the fused ops (stated in the docstring of ratio_fast/ops/pgd_step.py::pgd_step),
// in the operations where C++ and CUDA would otherwise break it. Shared by the CPU and CUDA
// kernels (internal: not part of the C ABI in ratio_fast_kernels.h).
#pragma once

#if defined(__CUDACC__)
#define RATIO_FAST_INLINE __host__ __device__ __forceinline__
#else
#define RATIO_FAST_INLINE inline
#endif

namespace ratio_fast {

// v clipped to [0, 1], NaN kept as torch.clamp keeps it. fminf/fmaxf return the other operand
// for NaN (a NaN pixel would become 0), and std::min/std::max depend on the argument order.
RATIO_FAST_INLINE float clamp01(float v) { return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v); }

// d clipped to [-eps, eps], the L-infinity projection: NaN kept (as clamp01), and a NaN eps fails
// both tests, leaving d unprojected as a NaN norm leaves the L2 step.
RATIO_FAST_INLINE float clip_to_box(float d, float eps) { return d > eps ? eps : (d < -eps ? -eps : d); }

// +1 or -1 by v's sign, and v itself where it is +-0 (a tie: no move) or NaN. copysignf would
// give +-1 for 0 and NaN; torch.sign gives 0 for NaN, which would freeze a NaN pixel silently.
RATIO_FAST_INLINE float sign_keeping_nan(float v) { return v > 0.0f ? 1.0f : (v < 0.0f ? -1.0f : v); }

// max(a, b), NaN if either is (fmaxf returns the other operand).
RATIO_FAST_INLINE float max_keeping_nan(float a, float b) { return (a > b || a != a) ? a : b; }

// The divisor of the reference's safe_div: the norm, or 1 where it is not positive. A zero norm
// comes with an all-zero vector (the quotient is 0 either way); a NaN norm leaves the vector
// undivided, so its NaN elements stay NaN and its finite ones finite, as in torch.
RATIO_FAST_INLINE float norm_or_one(float norm) { return norm > 0.0f ? norm : 1.0f; }

}  // namespace ratio_fast
