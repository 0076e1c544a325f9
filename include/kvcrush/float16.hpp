// 16-bit storage types for K/V caches: IEEE binary16 (float16) and bfloat16.
//
// They are storage only: arithmetic happens in float. Conversion from float
// rounds to nearest, ties to even, for every finite value (overflow goes to
// ±inf exactly where IEEE says), keeps ±inf, and maps NaN to a quiet NaN of
// the same sign keeping the top payload bits. Conversion to float is exact.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kvcrush/isa.hpp"

namespace kvcrush {

struct float16 {
  std::uint16_t bits = 0;
  friend constexpr bool operator==(float16 a, float16 b) noexcept { return a.bits == b.bits; }
  friend constexpr bool operator!=(float16 a, float16 b) noexcept { return a.bits != b.bits; }
};

struct bfloat16 {
  std::uint16_t bits = 0;
  friend constexpr bool operator==(bfloat16 a, bfloat16 b) noexcept { return a.bits == b.bits; }
  friend constexpr bool operator!=(bfloat16 a, bfloat16 b) noexcept { return a.bits != b.bits; }
};

namespace detail {

inline std::uint32_t float_bits(float f) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_float(std::uint32_t u) noexcept {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// value >> shift, rounded to nearest with ties to even.
constexpr std::uint32_t shift_round_even(std::uint32_t value, unsigned shift) noexcept {
  const std::uint32_t kept = value >> shift;
  const std::uint32_t rest = value & ((1u << shift) - 1u);
  const std::uint32_t half = 1u << (shift - 1u);
  return kept + ((rest > half || (rest == half && (kept & 1u))) ? 1u : 0u);
}

}  // namespace detail

inline float16 to_float16(float value) noexcept {
  const std::uint32_t x = detail::float_bits(value);
  const auto sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  const std::uint32_t magnitude = x & 0x7fffffffu;
  if (magnitude >= 0x7f800000u) {
    if (magnitude == 0x7f800000u) return {static_cast<std::uint16_t>(sign | 0x7c00u)};
    return {static_cast<std::uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu))};
  }
  // 65520 is half-way between the largest half (65504, odd mantissa) and
  // 65536; ties to even send it to infinity.
  if (magnitude >= 0x477ff000u) return {static_cast<std::uint16_t>(sign | 0x7c00u)};
  if (magnitude >= 0x38800000u) {  // normal half: |value| >= 2^-14
    const std::uint32_t rebased = magnitude - 0x38000000u;  // exponent bias 127 -> 15
    return {static_cast<std::uint16_t>(sign | detail::shift_round_even(rebased, 13))};
  }
  // 2^-25 is half-way between zero and the smallest subnormal; ties to even
  // (zero).
  if (magnitude <= 0x33000000u) return {sign};
  const std::uint32_t exponent = magnitude >> 23;  // 102..112
  const std::uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
  // Subnormal half m * 2^-24 with m = mantissa * 2^(exponent - 150 + 24).
  const auto shift = static_cast<unsigned>(126u - exponent);  // 14..24
  return {static_cast<std::uint16_t>(sign | detail::shift_round_even(mantissa, shift))};
}

inline float to_float(float16 value) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(value.bits & 0x8000u) << 16;
  const std::uint32_t exponent = (value.bits >> 10) & 0x1fu;
  std::uint32_t mantissa = value.bits & 0x3ffu;
  if (exponent == 0x1fu) return detail::bits_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent != 0) return detail::bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  if (mantissa == 0) return detail::bits_float(sign);
  // Subnormal: normalise the mantissa.
  std::uint32_t e = 113;
  while ((mantissa & 0x400u) == 0) {
    mantissa <<= 1;
    --e;
  }
  return detail::bits_float(sign | (e << 23) | ((mantissa & 0x3ffu) << 13));
}

inline bfloat16 to_bfloat16(float value) noexcept {
  const std::uint32_t x = detail::float_bits(value);
  if ((x & 0x7fffffffu) > 0x7f800000u) {
    return {static_cast<std::uint16_t>((x >> 16) | 0x0040u)};
  }
  // Adding 0x7fff plus the lowest kept bit rounds to nearest even; a carry
  // out of the mantissa bumps the exponent, up to infinity, as it should.
  const std::uint32_t rounded = x + 0x7fffu + ((x >> 16) & 1u);
  return {static_cast<std::uint16_t>(rounded >> 16)};
}

inline float to_float(bfloat16 value) noexcept {
  return detail::bits_float(static_cast<std::uint32_t>(value.bits) << 16);
}

inline float to_float(float value) noexcept { return value; }

// Conversion into a storage type chosen by template argument.
template <class Storage>
Storage from_float(float value) noexcept {
  if constexpr (std::is_same_v<Storage, float16>) {
    return to_float16(value);
  } else if constexpr (std::is_same_v<Storage, bfloat16>) {
    return to_bfloat16(value);
  } else {
    static_assert(std::is_same_v<Storage, float>, "storage must be float, float16 or bfloat16");
    return value;
  }
}

template <class T>
inline constexpr bool is_storage_type_v = std::is_same_v<std::remove_cv_t<T>, float> ||
                                          std::is_same_v<std::remove_cv_t<T>, float16> ||
                                          std::is_same_v<std::remove_cv_t<T>, bfloat16>;

inline namespace KVCRUSH_TARGET_NS {

// Bulk conversions over n elements; src and dst may not overlap.
template <class From, class To, class Isa = isa::active>
void convert(const From* src, To* dst, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) dst[i] = from_float<To>(to_float(src[i]));
}

// One head vector (n elements) from one storage type into another: the
// library's only row copy, used by every cache and quantized store. A plain
// memcpy when the types agree; otherwise each element goes through float and
// is rounded to nearest even, as convert() does.
template <class From, class To>
void copy_row(const From* src, To* dst, std::ptrdiff_t n) noexcept {
  if constexpr (std::is_same_v<std::remove_cv_t<From>, To>) {
    if (n > 0) std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(To));
  } else {
    convert<std::remove_cv_t<From>, To>(src, dst, n > 0 ? static_cast<std::size_t>(n) : 0);
  }
}

}  // namespace KVCRUSH_TARGET_NS

}  // namespace kvcrush
