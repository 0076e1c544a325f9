// AVX-512 column bit counts: eight words of a row per register (the last
// ones by a masked load), the scalar kernel's eight byte counters in each
// 64-bit lane.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX512
#include <immintrin.h>

#include "kvcrush/simd/column_counts.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <>
struct column_count_kernel<isa::avx512> {
  static void run(const std::uint64_t* KVCRUSH_RESTRICT rows, index_t n, index_t words,
                  index_t* KVCRUSH_RESTRICT counts) noexcept {
    run_strided(rows, n, words, words, counts);
  }

  static void run_strided(const std::uint64_t* KVCRUSH_RESTRICT rows, index_t n, index_t words, index_t row_stride,
                          index_t* KVCRUSH_RESTRICT counts) noexcept {
    const __m512i ones = _mm512_set1_epi8(1);
    for (index_t w = 0; w < words; w += 8) {
      const index_t lanes_used = words - w < 8 ? words - w : 8;
      const auto lanes_mask = static_cast<__mmask8>((1u << lanes_used) - 1u);
      for (index_t start = 0; start < n; start += column_count_chunk) {
        const index_t end = n - start < column_count_chunk ? n : start + column_count_chunk;
        __m512i acc[8];
        for (auto& a : acc) a = _mm512_setzero_si512();
        for (index_t r = start; r < end; ++r) {
          const __m512i x = _mm512_maskz_loadu_epi64(lanes_mask, rows + r * row_stride + w);
          acc[0] = _mm512_add_epi8(acc[0], _mm512_and_si512(x, ones));
          acc[1] = _mm512_add_epi8(acc[1], _mm512_and_si512(_mm512_srli_epi64(x, 1), ones));
          acc[2] = _mm512_add_epi8(acc[2], _mm512_and_si512(_mm512_srli_epi64(x, 2), ones));
          acc[3] = _mm512_add_epi8(acc[3], _mm512_and_si512(_mm512_srli_epi64(x, 3), ones));
          acc[4] = _mm512_add_epi8(acc[4], _mm512_and_si512(_mm512_srli_epi64(x, 4), ones));
          acc[5] = _mm512_add_epi8(acc[5], _mm512_and_si512(_mm512_srli_epi64(x, 5), ones));
          acc[6] = _mm512_add_epi8(acc[6], _mm512_and_si512(_mm512_srli_epi64(x, 6), ones));
          acc[7] = _mm512_add_epi8(acc[7], _mm512_and_si512(_mm512_srli_epi64(x, 7), ones));
        }
        alignas(64) std::uint64_t lanes[8][8];
        for (int k = 0; k < 8; ++k) _mm512_store_si512(lanes[k], acc[k]);
        for (index_t l = 0; l < lanes_used; ++l) {
          const std::uint64_t word_acc[8] = {lanes[0][l], lanes[1][l], lanes[2][l], lanes[3][l],
                                             lanes[4][l], lanes[5][l], lanes[6][l], lanes[7][l]};
          flush_byte_counters(word_acc, counts + (w + l) * 64);
        }
      }
    }
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX512
