// The C ABI of the native kernels, loaded from Python with ctypes (ratio_fast/ops/native.py).
//
// Every tensor is a dense batch: sample i occupies elements [i * d, (i + 1) * d) of each array,
// in the same element order for all arrays (the caller makes them contiguous in one memory
// format, NCHW or channels_last). Per-sample eps, step and scale are fp32 arrays of n values.
// Results are written to caller-allocated outputs; the kernels never allocate.
//
// Semantics are those of the plain-torch references (pgd_step_ref, random_start_ref), computed
// in fp32 whatever the storage type. Functions return 0 on success, a RF_ERROR_* code for a bad
// argument, or (CUDA) the cudaError_t of the launch.
#ifndef RATIO_FAST_KERNELS_H
#define RATIO_FAST_KERNELS_H

#include <stdint.h>

// The library is built with hidden visibility; only these functions are exported.
#if defined(RATIO_FAST_BUILDING) && defined(__GNUC__)
#define RATIO_FAST_API __attribute__((visibility("default")))
#else
#define RATIO_FAST_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

// Bumped whenever a signature below changes, so Python can refuse a stale library.
#define RATIO_FAST_ABI_VERSION 1

// Storage types of x / x_out and of the gradient (delta, velocity, noise are always fp32).
enum rf_dtype { RF_FLOAT32 = 0, RF_FLOAT16 = 1, RF_BFLOAT16 = 2 };

enum rf_error { RF_ERROR_DTYPE = -1, RF_ERROR_ARGUMENT = -2 };

RATIO_FAST_API int ratio_fast_abi_version(void);

// --- CPU backend (OpenMP over samples; num_threads <= 0 uses the OpenMP default) ---

// Projected L2 PGD step. velocity / velocity_out may be NULL (no momentum buffer).
RATIO_FAST_API int ratio_fast_cpu_pgd_step(const void* x, int x_dtype, const float* delta, const void* grad,
                                           int grad_dtype, const float* velocity, const float* eps,
                                           const float* step, void* x_out, float* delta_out, float* velocity_out,
                                           int64_t n, int64_t d, float momentum, int num_threads);

// Random start: delta = noise * scale / ||noise||, clipped so that x + delta stays in [0,1].
RATIO_FAST_API int ratio_fast_cpu_random_start(const void* x, int x_dtype, const float* noise, const float* scale,
                                               void* x_out, float* delta_out, int64_t n, int64_t d,
                                               int num_threads);

// The storage conversions the CPU kernels use (round to nearest even), exported for tests.
RATIO_FAST_API int ratio_fast_cpu_convert(const void* src, int src_dtype, void* dst, int dst_dtype, int64_t count);

// --- CUDA backend: one block per sample, launched on `stream` (a cudaStream_t) of `device` ---
// Asynchronous and capturable in CUDA graphs. block > 0 forces the looping path with that many
// threads per block (a multiple of 32, at most 1024; for tests); 0 picks the fastest path.

RATIO_FAST_API int ratio_fast_cuda_pgd_step(const void* x, int x_dtype, const float* delta, const void* grad,
                                            int grad_dtype, const float* velocity, const float* eps,
                                            const float* step, void* x_out, float* delta_out, float* velocity_out,
                                            int64_t n, int64_t d, float momentum, int block, int device,
                                            void* stream);

RATIO_FAST_API int ratio_fast_cuda_random_start(const void* x, int x_dtype, const float* noise, const float* scale,
                                                void* x_out, float* delta_out, int64_t n, int64_t d, int block,
                                                int device, void* stream);

// The message of a CUDA error code returned above.
RATIO_FAST_API const char* ratio_fast_cuda_error_string(int code);

#ifdef __cplusplus
}
#endif

#endif  // RATIO_FAST_KERNELS_H
