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

// Rows of permutex2var indices: row k keeps lanes [0, k) of the first
// operand and appends the second's (index 16 + j is its lane j).
struct append_index_table {
  alignas(64) std::int32_t lanes[17][16];
};

constexpr append_index_table make_append_index_table() noexcept {
  append_index_table t{};
  for (int kept = 0; kept <= 16; ++kept) {
    for (int lane = 0; lane < 16; ++lane) t.lanes[kept][lane] = lane < kept ? lane : 16 + lane - kept;
  }
  return t;
}

inline constexpr append_index_table append_indices = make_append_index_table();

// Index for _mm512_permutex2var_ps(a, index, b) that keeps a's first `kept`
// lanes and fills the rest with b's first lanes.
inline __m512i append_index(index_t kept) noexcept { return _mm512_load_si512(append_indices.lanes[kept]); }

// Packs the lanes of v[0..3] selected by m[0..3], in order, to out; returns
// their count. `selected` is join4(m), which the caller has at hand. Writes
// whole vectors: out needs room for 64 floats past its start whatever the
// count. When the selected lanes fit one vector (the usual case where a
// bracket holds a few percent of the values), the four compressed vectors
// are merged with permutes and stored once: with the source streaming from
// L3, four stores at data-dependent addresses cost 1.35x the time of this
// (measured on Zen 4). Compress-to-memory is microcoded and slow on Zen 4.
KVCRUSH_ALWAYS_INLINE index_t compress_store4(const __m512 v[4], const __mmask16 m[4], std::uint64_t selected, float* out) noexcept {
  const auto after0 = static_cast<index_t>(_mm_popcnt_u64(selected & 0xffffu));
  const auto after1 = static_cast<index_t>(_mm_popcnt_u64(selected & 0xffffffffu));
  const auto after2 = static_cast<index_t>(_mm_popcnt_u64(selected & 0xffffffffffffu));
  const auto count = static_cast<index_t>(_mm_popcnt_u64(selected));
  if (count <= 16) {
    __m512 merged = _mm512_maskz_compress_ps(m[0], v[0]);
    merged = _mm512_permutex2var_ps(merged, append_index(after0), _mm512_maskz_compress_ps(m[1], v[1]));
    merged = _mm512_permutex2var_ps(merged, append_index(after1), _mm512_maskz_compress_ps(m[2], v[2]));
    merged = _mm512_permutex2var_ps(merged, append_index(after2), _mm512_maskz_compress_ps(m[3], v[3]));
    _mm512_storeu_ps(out, merged);
  } else {
    _mm512_storeu_ps(out, _mm512_maskz_compress_ps(m[0], v[0]));
    _mm512_storeu_ps(out + after0, _mm512_maskz_compress_ps(m[1], v[1]));
    _mm512_storeu_ps(out + after1, _mm512_maskz_compress_ps(m[2], v[2]));
    _mm512_storeu_ps(out + after2, _mm512_maskz_compress_ps(m[3], v[3]));
  }
  return count;
}

}  // namespace simd::avx512_util
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX512
