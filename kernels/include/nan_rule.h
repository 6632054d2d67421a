// The NaN rule of the fused ops (stated in the docstring of ratio_fast/ops/pgd_step.py::pgd_step),
// in the two operations where C++ and CUDA would otherwise break it. Shared by the CPU and CUDA
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

// The divisor of the reference's safe_div: the norm, or 1 where it is not positive. A zero norm
// comes with an all-zero vector (the quotient is 0 either way); a NaN norm leaves the vector
// undivided, so its NaN elements stay NaN and its finite ones finite, as in torch.
RATIO_FAST_INLINE float norm_or_one(float norm) { return norm > 0.0f ? norm : 1.0f; }

}  // namespace ratio_fast
