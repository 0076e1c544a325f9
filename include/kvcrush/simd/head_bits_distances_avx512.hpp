// AVX-512 distances from head-major bits (simd/head_bits_distances.hpp):
// each 512-token tile of a head's bits is one register, and the planes
// become byte counts 64 tokens at a time with one masked byte move each.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX512
#include <immintrin.h>

#include <cstdint>

#include "kvcrush/simd/head_bits_distances.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

namespace impl::head_bits_distances_avx512 {

template <int Planes>
void run(const std::uint16_t* bits, index_t heads, index_t stride, index_t n, const std::uint64_t* patterns,
         std::uint32_t* dist) noexcept {
  for (index_t tile_start = 0; tile_start < n; tile_start += head_bits_tile_tokens) {
    const std::uint16_t* rows = bits + tile_start / head_bits_tile_tokens * stride * 32;
    __m512i count[Planes];
#pragma GCC unroll 8
    for (int p = 0; p < Planes; ++p) count[p] = _mm512_setzero_si512();
    for (index_t h = 0; h < heads; ++h) {
      __m512i carry =
          _mm512_xor_si512(_mm512_loadu_si512(rows + h * 32), _mm512_loadu_si512(patterns + head_pattern_words * h));
#pragma GCC unroll 8
      for (int p = 0; p < Planes; ++p) {
        const __m512i next = _mm512_and_si512(count[p], carry);
        count[p] = _mm512_xor_si512(count[p], carry);
        carry = next;
      }
    }
    alignas(64) std::uint64_t plane[Planes][8];
#pragma GCC unroll 8
    for (int p = 0; p < Planes; ++p) _mm512_store_si512(plane[p], count[p]);
    for (index_t q = 0; q < 8 && tile_start + 64 * q < n; ++q) {
      __m512i bytes = _mm512_setzero_si512();
#pragma GCC unroll 8
      for (int p = 0; p < Planes; ++p) {
        const __m512i weight = _mm512_set1_epi8(static_cast<char>(1u << p));
        bytes = _mm512_or_si512(bytes, _mm512_maskz_mov_epi8(plane[p][q], weight));
      }
      const __m128i part[4] = {_mm512_castsi512_si128(bytes), _mm512_extracti32x4_epi32(bytes, 1),
                               _mm512_extracti32x4_epi32(bytes, 2), _mm512_extracti32x4_epi32(bytes, 3)};
      const index_t at = tile_start + 64 * q;
      for (index_t i = 0; i < 4 && at + 16 * i < n; ++i) {
        const index_t left = n - at - 16 * i;
        const auto lanes = static_cast<__mmask16>(left >= 16 ? 0xffffu : (1u << left) - 1u);
        _mm512_mask_storeu_epi32(dist + at + 16 * i, lanes, _mm512_cvtepu8_epi32(part[i]));
      }
    }
  }
}

}  // namespace impl::head_bits_distances_avx512

template <>
struct head_bits_distances_kernel<isa::avx512> {
  static void run(const std::uint16_t* bits, index_t heads, index_t stride, index_t n, const std::uint64_t* patterns,
                  std::uint32_t* dist) noexcept {
    namespace k = impl::head_bits_distances_avx512;
    with_planes_for(heads,
                    [&](auto planes) { k::run<decltype(planes)::value>(bits, heads, stride, n, patterns, dist); });
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX512
