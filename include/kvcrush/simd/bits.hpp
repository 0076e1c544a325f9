// Portable bit helpers for the scalar kernels (no POPCNT/BMI assumed).
#pragma once

#include <cstdint>

namespace kvcrush::simd {

// SWAR population count: what the scalar kernels use, so that the baseline
// build needs no POPCNT instruction.
constexpr unsigned popcount64(std::uint64_t x) noexcept {
  x = x - ((x >> 1) & 0x5555555555555555ull);
  x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
  x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
  return static_cast<unsigned>((x * 0x0101010101010101ull) >> 56);
}

constexpr unsigned count_trailing_zeros64(std::uint64_t x) noexcept {
  unsigned n = 0;
  while (x && !(x & 1u)) {
    x >>= 1;
    ++n;
  }
  return n;
}

}  // namespace kvcrush::simd
