// Portable bit helpers for the scalar kernels (no POPCNT/BMI assumed).
#pragma once

#include <cstdint>

#include "kvcrush/config.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

// SWAR population count: what the scalar kernels use, so that the baseline
// build needs no POPCNT instruction.
constexpr unsigned popcount64(std::uint64_t x) noexcept {
  x = x - ((x >> 1) & 0x5555555555555555ull);
  x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
  x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
  return static_cast<unsigned>((x * 0x0101010101010101ull) >> 56);
}

// Index of the lowest set bit of x != 0 (bsf is baseline x86-64).
constexpr unsigned count_trailing_zeros64(std::uint64_t x) noexcept {
#if defined(__GNUC__) || defined(__clang__)
  return x ? static_cast<unsigned>(__builtin_ctzll(x)) : 0u;
#endif
  unsigned n = 0;
  while (x && !(x & 1u)) {
    x >>= 1;
    ++n;
  }
  return n;
}

// Bit j set when byte j of x (little-endian) is nonzero: eight flags tested
// at once, without a branch per flag.
constexpr unsigned nonzero_bytes8(std::uint64_t x) noexcept {
  constexpr std::uint64_t low7 = 0x7f7f7f7f7f7f7f7full;
  const std::uint64_t high = (((x & low7) + low7) | x) & ~low7;  // 0x80 in each nonzero byte
  return static_cast<unsigned>(((high >> 7) * 0x0102040810204080ull) >> 56);
}

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
