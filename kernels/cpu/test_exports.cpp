// The storage conversions of the CPU kernels, exported for tests/test_native.py by the test-only
// library ratio_fast_cpu_tests (CMakeLists.txt), which is built for the tests and never installed.
#include "ratio_fast_kernels.h"
#include "storage_types.h"

// Converts count values of src_dtype to dst_dtype (rf_dtype codes) as the kernels load and store
// them: round to nearest even.
extern "C" RATIO_FAST_API int ratio_fast_cpu_convert(const void* src, int src_dtype, void* dst, int dst_dtype,
                                                     int64_t count) {
  using namespace ratio_fast;
  if (count < 0) return RF_ERROR_ARGUMENT;
  return Storage::with_pair(src_dtype, dst_dtype, [&](auto src_type, auto dst_type) {
    using S = decltype(src_type);
    using D = decltype(dst_type);
    for (int64_t i = 0; i < count; ++i) static_cast<D*>(dst)[i] = from_float<D>(to_float(static_cast<const S*>(src)[i]));
  }) ? 0 : RF_ERROR_DTYPE;
}
