// AVX2 distances from head-major bits (simd/head_bits_distances.hpp): half
// a 512-token tile (256 tokens) of a head's bits is one register, so that
// eight planes and the ripple's temporaries fit the sixteen registers. A
// plane's 32 bits become 32 bytes with a byte shuffle, an AND with each
// byte's bit and a compare.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX2
#include <immintrin.h>

#include <cstdint>

#include "kvcrush/simd/head_bits_distances.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

namespace impl::head_bits_distances_avx2 {

template <int Planes>
void run(const std::uint16_t* bits, index_t heads, index_t stride, index_t n, const std::uint64_t* patterns,
         std::uint32_t* dist) noexcept {
  constexpr index_t half_tile = head_bits_tile_tokens / 2;
  // Byte j of a broadcast 32-bit word, shuffled to byte j / 8 of each lane's
  // copy, then tested against bit j % 8.
  const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3,
                                          3, 3, 3, 3, 3, 3);
  const __m256i bit_of_byte = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ull));
  for (index_t start = 0; start < n; start += half_tile) {
    const std::uint16_t* rows =
        bits + start / head_bits_tile_tokens * stride * 32 + start % head_bits_tile_tokens / 16;
    const std::uint64_t* half_patterns = patterns + start % head_bits_tile_tokens / 64;
    __m256i count[Planes];
#pragma GCC unroll 8
    for (int p = 0; p < Planes; ++p) count[p] = _mm256_setzero_si256();
    for (index_t h = 0; h < heads; ++h) {
      __m256i carry = _mm256_xor_si256(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows + h * 32)),
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(half_patterns + head_pattern_words * h)));
#pragma GCC unroll 8
      for (int p = 0; p < Planes; ++p) {
        const __m256i next = _mm256_and_si256(count[p], carry);
        count[p] = _mm256_xor_si256(count[p], carry);
        carry = next;
      }
    }
    alignas(32) std::uint32_t plane[Planes][8];
#pragma GCC unroll 8
    for (int p = 0; p < Planes; ++p) _mm256_store_si256(reinterpret_cast<__m256i*>(plane[p]), count[p]);
    for (index_t q = 0; q < 8 && start + 32 * q < n; ++q) {
      __m256i bytes = _mm256_setzero_si256();
#pragma GCC unroll 8
      for (int p = 0; p < Planes; ++p) {
        const __m256i word = _mm256_set1_epi32(static_cast<int>(plane[p][q]));
        const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(word, spread), bit_of_byte),
                                              bit_of_byte);
        bytes = _mm256_or_si256(bytes, _mm256_and_si256(set, _mm256_set1_epi8(static_cast<char>(1u << p))));
      }
      const __m128i low = _mm256_castsi256_si128(bytes);
      const __m128i high = _mm256_extracti128_si256(bytes, 1);
      const __m256i wide[4] = {_mm256_cvtepu8_epi32(low), _mm256_cvtepu8_epi32(_mm_srli_si128(low, 8)),
                               _mm256_cvtepu8_epi32(high), _mm256_cvtepu8_epi32(_mm_srli_si128(high, 8))};
      const index_t at = start + 32 * q;
      for (index_t i = 0; i < 4 && at + 8 * i < n; ++i) {
        std::uint32_t* out = dist + at + 8 * i;
        const index_t left = n - at - 8 * i;
        if (left >= 8) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), wide[i]);
        } else {
          // Plain stores for the tail: a masked vpmaskmovd is slow on AMD.
          alignas(32) std::uint32_t tail[8];
          _mm256_store_si256(reinterpret_cast<__m256i*>(tail), wide[i]);
          for (index_t j = 0; j < left; ++j) out[j] = tail[j];
        }
      }
    }
  }
}

}  // namespace impl::head_bits_distances_avx2

template <>
struct head_bits_distances_kernel<isa::avx2> {
  static void run(const std::uint16_t* bits, index_t heads, index_t stride, index_t n, const std::uint64_t* patterns,
                  std::uint32_t* dist) noexcept {
    namespace k = impl::head_bits_distances_avx2;
    with_planes_for(heads,
                    [&](auto planes) { k::run<decltype(planes)::value>(bits, heads, stride, n, patterns, dist); });
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX2
