// AVX2 column bit counts: four words of a row per register, the scalar
// kernel's eight byte counters in each 64-bit lane.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX2
#include <immintrin.h>

#include "kvcrush/simd/column_counts.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <>
struct column_count_kernel<isa::avx2> {
  static void run(const std::uint64_t* KVCRUSH_RESTRICT rows, index_t n, index_t words,
                  index_t* KVCRUSH_RESTRICT counts) noexcept {
    run_strided(rows, n, words, words, counts);
  }

  static void run_strided(const std::uint64_t* KVCRUSH_RESTRICT rows, index_t n, index_t words, index_t row_stride,
                          index_t* KVCRUSH_RESTRICT counts) noexcept {
    const __m256i ones = _mm256_set1_epi8(1);
    // Four words per register first.
    const index_t whole = words / 4 * 4;
    for (index_t w = 0; w < whole; w += 4) {
      for (index_t start = 0; start < n; start += column_count_chunk) {
        const index_t end = n - start < column_count_chunk ? n : start + column_count_chunk;
        __m256i acc[8];
        for (auto& a : acc) a = _mm256_setzero_si256();
        for (index_t r = start; r < end; ++r) {
          const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows + r * row_stride + w));
          acc[0] = _mm256_add_epi8(acc[0], _mm256_and_si256(x, ones));
          acc[1] = _mm256_add_epi8(acc[1], _mm256_and_si256(_mm256_srli_epi64(x, 1), ones));
          acc[2] = _mm256_add_epi8(acc[2], _mm256_and_si256(_mm256_srli_epi64(x, 2), ones));
          acc[3] = _mm256_add_epi8(acc[3], _mm256_and_si256(_mm256_srli_epi64(x, 3), ones));
          acc[4] = _mm256_add_epi8(acc[4], _mm256_and_si256(_mm256_srli_epi64(x, 4), ones));
          acc[5] = _mm256_add_epi8(acc[5], _mm256_and_si256(_mm256_srli_epi64(x, 5), ones));
          acc[6] = _mm256_add_epi8(acc[6], _mm256_and_si256(_mm256_srli_epi64(x, 6), ones));
          acc[7] = _mm256_add_epi8(acc[7], _mm256_and_si256(_mm256_srli_epi64(x, 7), ones));
        }
        alignas(32) std::uint64_t lanes[8][4];
        for (int k = 0; k < 8; ++k) _mm256_store_si256(reinterpret_cast<__m256i*>(lanes[k]), acc[k]);
        for (int l = 0; l < 4; ++l) {
          const std::uint64_t word_acc[8] = {lanes[0][l], lanes[1][l], lanes[2][l], lanes[3][l],
                                             lanes[4][l], lanes[5][l], lanes[6][l], lanes[7][l]};
          flush_byte_counters(word_acc, counts + (w + l) * 64);
        }
      }
    }
    // The last words (fewer than four) of every row.
    if (whole < words) {
      column_count_kernel<isa::scalar>::run_columns(rows, n, words, row_stride, whole, counts);
    }
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX2
