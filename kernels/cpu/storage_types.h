// The storage types of the CPU kernels: fp16 / bf16 <-> fp32 conversions, bit-exact with torch's
// .to(dtype) (round to nearest even), and the CPU's StorageTypes (entry_point.h).
//
// Plain integer and float arithmetic (no _Float16, no intrinsics), so any C++17 compiler builds
// it and the conversion loops stay vectorizable. Needs IEEE fp32 without flush-to-zero: do not
// build with -ffast-math.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "entry_point.h"

namespace ratio_fast {

struct Half {  // IEEE binary16 storage
  uint16_t bits;
};
struct BFloat16 {  // the top 16 bits of an fp32
  uint16_t bits;
};

inline uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline float to_float(float v) { return v; }

inline float to_float(BFloat16 v) { return float_of(uint32_t(v.bits) << 16); }

inline float to_float(Half v) {
  const uint32_t sign = uint32_t(v.bits & 0x8000u) << 16;
  const uint32_t magnitude = v.bits & 0x7fffu;  // 5 exponent bits, 10 mantissa bits
  const uint32_t exponent = magnitude >> 10;
  // Normal: shift into fp32 position and rebias the exponent from 15 to 127.
  const uint32_t normal = (magnitude << 13) + ((127u - 15u) << 23);
  // Inf / NaN: all-ones exponent, mantissa kept, a NaN made quiet (as the hardware converts).
  const uint32_t quiet = (magnitude & 0x3ffu) ? 0x00400000u : 0u;
  const uint32_t special = (magnitude << 13) | 0x7f800000u | quiet;
  // Zero / subnormal: mantissa * 2^-24, exact in fp32.
  const uint32_t tiny = bits_of(float(magnitude) * 0x1p-24f);
  const uint32_t body = exponent == 0 ? tiny : (exponent == 31 ? special : normal);
  return float_of(sign | body);
}

template <typename T>
T from_float(float f);

template <>
inline float from_float<float>(float f) {
  return f;
}

template <>
inline BFloat16 from_float<BFloat16>(float f) {
  const uint32_t u = bits_of(f);
  if (std::isnan(f)) return BFloat16{uint16_t((u >> 16) | 0x0040u)};  // quiet NaN, sign kept
  const uint32_t round_to_even = 0x7fffu + ((u >> 16) & 1u);
  return BFloat16{uint16_t((u + round_to_even) >> 16)};
}

template <>
inline Half from_float<Half>(float f) {
  const uint32_t u = bits_of(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t magnitude = u & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return Half{uint16_t(sign | 0x7e00u)};  // NaN
  if (magnitude >= 0x477ff000u) return Half{uint16_t(sign | 0x7c00u)};  // >= 65520 rounds to inf
  if (magnitude >= 0x38800000u) {  // >= 2^-14: a normal half
    const uint32_t round_to_even = 0xfffu + ((magnitude >> 13) & 1u);
    return Half{uint16_t(sign | ((magnitude + round_to_even - ((127u - 15u) << 23)) >> 13))};
  }
  // Subnormal or zero: the mantissa is |f| / 2^-24 rounded to nearest even (1024 carries into
  // the exponent field and encodes 2^-14 correctly).
  const float units = std::nearbyint(float_of(magnitude) * 0x1p24f);
  return Half{uint16_t(sign | uint16_t(units))};
}

using Storage = StorageTypes<Half, BFloat16>;  // the rf_dtype codes' types on the CPU

}  // namespace ratio_fast
