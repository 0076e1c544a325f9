// Byte masks and bit helpers of the representatives' class passes
// (select/buckets.hpp): which of 64 bytes equal a value, as a 64-bit mask
// (bit j: byte j); bytes set under a mask; pdep and popcount.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "kvcrush/config.hpp"
#include "kvcrush/isa.hpp"

#if KVCRUSH_HAS_AVX2 || KVCRUSH_HAS_AVX512
#include <immintrin.h>
#endif

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <class Isa>
std::uint64_t equal_bytes64(const std::uint8_t* p, std::uint8_t value) noexcept {
#if KVCRUSH_HAS_AVX512
  if constexpr (std::is_same_v<Isa, isa::avx512>) {
    return _cvtmask64_u64(
        _mm512_cmpeq_epi8_mask(_mm512_loadu_si512(p), _mm512_set1_epi8(static_cast<char>(value))));
  }
#endif
#if KVCRUSH_HAS_AVX2
  if constexpr (std::is_same_v<Isa, isa::avx2>) {
    const __m256i v = _mm256_set1_epi8(static_cast<char>(value));
    const auto low = static_cast<std::uint32_t>(_mm256_movemask_epi8(
        _mm256_cmpeq_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), v)));
    const auto high = static_cast<std::uint32_t>(_mm256_movemask_epi8(
        _mm256_cmpeq_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32)), v)));
    return static_cast<std::uint64_t>(high) << 32 | low;
  }
#endif
  std::uint64_t mask = 0;
  for (int j = 0; j < 64; ++j) mask |= static_cast<std::uint64_t>(p[j] == value) << j;
  return mask;
}

// p[j] = value for the bits j < len set in mask.
template <class Isa>
void set_bytes64(std::uint8_t* p, std::uint64_t mask, std::uint8_t value, std::ptrdiff_t len) noexcept {
  if (len < 64) mask &= (std::uint64_t{1} << len) - 1;
#if KVCRUSH_HAS_AVX512
  if constexpr (std::is_same_v<Isa, isa::avx512>) {
    _mm512_mask_storeu_epi8(p, static_cast<__mmask64>(mask), _mm512_set1_epi8(static_cast<char>(value)));
    return;
  }
#endif
  for (; mask != 0; mask &= mask - 1) p[__builtin_ctzll(mask)] = value;
}

#if KVCRUSH_HAS_AVX2
// BMI2's pdep and POPCNT, for the class passes (AVX2 and AVX-512 builds).
inline std::uint64_t deposit_bits64(std::uint64_t bits, std::uint64_t mask) noexcept { return _pdep_u64(bits, mask); }
inline std::ptrdiff_t popcount64_fast(std::uint64_t x) noexcept { return static_cast<std::ptrdiff_t>(_mm_popcnt_u64(x)); }
#endif

// Whether the ISA has vector byte compares and BMI2's pdep, which the class
// passes need to beat the counting sort.
template <class Isa>
constexpr bool has_byte_class_pass() noexcept {
#if KVCRUSH_HAS_AVX512
  if constexpr (std::is_same_v<Isa, isa::avx512>) return true;
#endif
#if KVCRUSH_HAS_AVX2
  if constexpr (std::is_same_v<Isa, isa::avx2>) return true;
#endif
  return false;
}

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
