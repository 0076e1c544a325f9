// Small AVX-512 helpers shared by the kernels.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX512
#include <immintrin.h>

#include <cstdint>

#include "kvcrush/tensor_view.hpp"

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

inline float min_ps(__m512 x) noexcept {
  const __m256 half = _mm256_min_ps(_mm512_castps512_ps256(x), _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xf, _mm512_castps_pd(x), 1)));
  __m128 q = _mm_min_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
  q = _mm_min_ps(q, _mm_movehl_ps(q, q));
  q = _mm_min_ss(q, _mm_shuffle_ps(q, q, 1));
  return _mm_cvtss_f32(q);
}

// Narrowing of 8 x 64-bit lanes to 8 x 32-bit lanes (zero-masked form, for
// the same reason).
inline __m256i narrow_u64_to_u32(__m512i x) noexcept { return _mm512_maskz_cvtepi64_epi32(0xff, x); }

// The four 16-lane masks of a 64-value step as one 64-bit mask, lane j of
// mask q at bit 16 q + j.
inline std::uint64_t join4(const __mmask16 m[4]) noexcept {
  return _cvtmask64_u64(_mm512_kunpackd(_mm512_kunpackw(m[3], m[2]), _mm512_kunpackw(m[1], m[0])));
}

// Set lanes of four 16-lane masks, counted with one popcount.
inline index_t popcount4(const __mmask16 m[4]) noexcept {
  return static_cast<index_t>(_mm_popcnt_u64(join4(m)));
}

}  // namespace simd::avx512_util
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX512
