// Small AVX-512 helpers shared by the kernels.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX512
#include <immintrin.h>

#include <cstdint>

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd::avx512_util {

// Horizontal sums built from zero-masked extracts: GCC 12's unmasked
// reductions start from _mm256_undefined_*(), which it then reports as
// maybe-uninitialized under -Wall.
inline std::uint64_t sum_u64(__m512i x) noexcept {
  const __m256i half = _mm256_add_epi64(_mm512_maskz_extracti64x4_epi64(0xf, x, 0), _mm512_maskz_extracti64x4_epi64(0xf, x, 1));
  const __m128i quarter = _mm_add_epi64(_mm256_castsi256_si128(half), _mm256_extracti128_si256(half, 1));
  return static_cast<std::uint64_t>(_mm_cvtsi128_si64(quarter)) + static_cast<std::uint64_t>(_mm_extract_epi64(quarter, 1));
}

inline std::int64_t sum_i32(__m512i x) noexcept {
  const __m256i half = _mm256_add_epi32(_mm512_maskz_extracti32x8_epi32(0xff, x, 0), _mm512_maskz_extracti32x8_epi32(0xff, x, 1));
  __m128i q = _mm_add_epi32(_mm256_castsi256_si128(half), _mm256_extracti128_si256(half, 1));
  q = _mm_add_epi32(q, _mm_shuffle_epi32(q, 0x4e));
  q = _mm_add_epi32(q, _mm_shuffle_epi32(q, 0xb1));
  return _mm_cvtsi128_si32(q);
}

// Narrowing of 8 x 64-bit lanes to 8 x 32-bit lanes (zero-masked form, for
// the same reason).
inline __m256i narrow_u64_to_u32(__m512i x) noexcept { return _mm512_maskz_cvtepi64_epi32(0xff, x); }

}  // namespace simd::avx512_util
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX512
