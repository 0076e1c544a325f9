// Hamming distances to an anchor straight from head-major bits (the layout
// of simd/head_bits.hpp), without transposing them to token-major words.
//
// A token's distance is the number of heads whose bit differs from the
// anchor's: the sum, over heads, of the head's row XOR the anchor bit. Each
// 512-token tile of rows is one register per head, and the sums are kept
// bit-sliced: counter plane p holds bit p of every token's count, and a row
// is added with a ripple of AND/XOR across the planes. The planes then
// become byte counts 64 tokens at a time (one masked byte move per plane)
// and those are widened to uint32. For 32 heads this is about a tenth of the
// work of the transpose and the popcounts it replaces.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX512
#include <immintrin.h>

#include <cstdint>

#include "kvcrush/simd/head_bits.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

// Most heads the kernel counts: the counts are bytes.
constexpr index_t head_bits_distances_max_heads = 255;

namespace impl::head_bits_distances_avx512 {

template <int Planes>
void run(const std::uint16_t* bits, index_t heads, index_t stride, index_t n, const std::uint64_t* anchor,
         std::uint32_t* dist) noexcept {
  for (index_t tile_start = 0; tile_start < n; tile_start += head_bits_tile_tokens) {
    const std::uint16_t* rows = bits + tile_start / head_bits_tile_tokens * stride * 32;
    __m512i count[Planes];
#pragma GCC unroll 8
    for (int p = 0; p < Planes; ++p) count[p] = _mm512_setzero_si512();
    for (index_t h = 0; h < heads; ++h) {
      const auto differs = -static_cast<long long>((anchor[h / 64] >> (h % 64)) & 1u);
      __m512i carry = _mm512_xor_si512(_mm512_loadu_si512(rows + h * 32), _mm512_set1_epi64(differs));
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

// dist[t] = number of heads h < heads whose bit for token t differs from
// anchor bit h, for t < n. 1 <= heads <= head_bits_distances_max_heads;
// bits in the head-major layout with the given stride.
inline void head_bits_distances(const std::uint16_t* bits, index_t heads, index_t stride, index_t n,
                                const std::uint64_t* anchor, std::uint32_t* dist) noexcept {
  namespace k = impl::head_bits_distances_avx512;
  // Planes enough for a count of `heads`.
  if (heads < 2) return k::run<1>(bits, heads, stride, n, anchor, dist);
  if (heads < 4) return k::run<2>(bits, heads, stride, n, anchor, dist);
  if (heads < 8) return k::run<3>(bits, heads, stride, n, anchor, dist);
  if (heads < 16) return k::run<4>(bits, heads, stride, n, anchor, dist);
  if (heads < 32) return k::run<5>(bits, heads, stride, n, anchor, dist);
  if (heads < 64) return k::run<6>(bits, heads, stride, n, anchor, dist);
  if (heads < 128) return k::run<7>(bits, heads, stride, n, anchor, dist);
  return k::run<8>(bits, heads, stride, n, anchor, dist);
}

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX512
