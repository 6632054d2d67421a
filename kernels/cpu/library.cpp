// What the CPU library says about itself, and its storage conversions exported for the tests.
#include "ratio_fast_kernels.h"
#include "storage_types.h"

extern "C" int ratio_fast_abi_version(void) { return RATIO_FAST_ABI_VERSION; }

extern "C" int ratio_fast_cpu_convert(const void* src, int src_dtype, void* dst, int dst_dtype, int64_t count) {
  using namespace ratio_fast;
  if (count < 0) return RF_ERROR_ARGUMENT;
  bool known = false;
  with_storage_type(src_dtype, [&](auto src_type) {
    known = with_storage_type(dst_dtype, [&](auto dst_type) {
      using S = decltype(src_type);
      using D = decltype(dst_type);
      for (int64_t i = 0; i < count; ++i) static_cast<D*>(dst)[i] = from_float<D>(to_float(static_cast<const S*>(src)[i]));
    });
  });
  return known ? 0 : RF_ERROR_DTYPE;
}
