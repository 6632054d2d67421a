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

// Bumped whenever a signature or struct below changes, so Python can refuse a stale library.
#define RATIO_FAST_ABI_VERSION 3

// Storage types of x / x_out and of the gradient (delta, velocity, noise are always fp32).
enum rf_dtype { RF_FLOAT32 = 0, RF_FLOAT16 = 1, RF_BFLOAT16 = 2 };

// The threat model of an op: the L2 ball or the L-infinity box of radius eps around x.
enum rf_norm { RF_NORM_L2 = 0, RF_NORM_LINF = 1 };

enum rf_error { RF_ERROR_DTYPE = -1, RF_ERROR_ARGUMENT = -2 };

// The projected PGD step of a batch in L2 or L-infinity (see ratio_fast/ops/pgd_step.py for the
// math). The entry points take it by pointer; ratio_fast/ops/native.py mirrors it field for field.
typedef struct PgdStepArgs {
  const void* x;          // x_dtype
  const float* delta;
  const void* grad;       // grad_dtype
  const float* velocity;  // NULL: no momentum buffer
  const float* eps;       // n values
  const float* step;      // n values
  void* x_out;            // x_dtype
  float* delta_out;
  float* velocity_out;    // written when velocity is not NULL
  int64_t n;
  int64_t d;
  float momentum;
  int x_dtype;  // rf_dtype
  int grad_dtype;
  int norm;  // rf_norm
} PgdStepArgs;

// The random start of a batch: delta = noise * scale / ||noise|| (the L2 norm, or the L-infinity
// norm max |noise_j|), clipped so that x + delta stays in [0,1]. Mirrored in native.py as
// PgdStepArgs is.
typedef struct RandomStartArgs {
  const void* x;  // x_dtype
  const float* noise;
  const float* scale;  // n values
  void* x_out;         // x_dtype
  float* delta_out;
  int64_t n;
  int64_t d;
  int x_dtype;
  int norm;  // rf_norm
} RandomStartArgs;

RATIO_FAST_API int ratio_fast_abi_version(void);

// --- CPU backend (OpenMP over samples; num_threads <= 0 uses the OpenMP default) ---

RATIO_FAST_API int ratio_fast_cpu_pgd_step(const PgdStepArgs* args, int num_threads);

RATIO_FAST_API int ratio_fast_cpu_random_start(const RandomStartArgs* args, int num_threads);

// --- CUDA backend: one block per sample, launched on `stream` (a cudaStream_t) of `device` ---
// Asynchronous and capturable in CUDA graphs. block > 0 forces the looping path with that many
// threads per block (a multiple of 32, at most 1024; for tests); 0 picks the fastest path.

RATIO_FAST_API int ratio_fast_cuda_pgd_step(const PgdStepArgs* args, int block, int device, void* stream);

RATIO_FAST_API int ratio_fast_cuda_random_start(const RandomStartArgs* args, int block, int device, void* stream);

// The message of a CUDA error code returned above.
RATIO_FAST_API const char* ratio_fast_cuda_error_string(int code);

#ifdef __cplusplus
}
#endif

#endif  // RATIO_FAST_KERNELS_H
