// What every C entry point does before it runs a kernel, shared by the CPU and CUDA backends
// (internal: not part of the C ABI in ratio_fast_kernels.h): check the argument struct, and map
// its rf_dtype codes to the backend's storage types.
#pragma once

#include "ratio_fast_kernels.h"

namespace ratio_fast {

inline bool valid_norm(int norm) { return norm == RF_NORM_L2 || norm == RF_NORM_LINF; }

inline bool valid(const PgdStepArgs& a) {
  return a.n >= 0 && a.d >= 0 && (!a.velocity || a.velocity_out) && valid_norm(a.norm);
}

inline bool valid(const RandomStartArgs& a) { return a.n >= 0 && a.d >= 0 && valid_norm(a.norm); }

// The storage types of a backend: float and its own fp16 and bf16 types (the CPU's in
// cpu/storage_types.h; CUDA's __half and __nv_bfloat16).
template <typename Half, typename BFloat16>
struct StorageTypes {
  // Calls f(T{}) with T the storage type of an rf_dtype code; false for an unknown code.
  template <typename F>
  static bool with(int dtype, F&& f) {
    switch (dtype) {
      case RF_FLOAT32: f(float{}); return true;
      case RF_FLOAT16: f(Half{}); return true;
      case RF_BFLOAT16: f(BFloat16{}); return true;
      default: return false;
    }
  }

  // Calls f(A{}, B{}) with the storage types of two codes; false if either is unknown.
  template <typename F>
  static bool with_pair(int dtype_a, int dtype_b, F&& f) {
    bool known = false;
    with(dtype_a, [&](auto a) { known = with(dtype_b, [&](auto b) { f(a, b); }); });
    return known;
  }
};

}  // namespace ratio_fast
