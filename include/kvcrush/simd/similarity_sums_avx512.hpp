// AVX-512 kernel of simd/similarity_sums.hpp: 16 tokens per block, the 8
// partial sums of each similarity in 8 zmm registers, the double sums in two.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX512
#include <immintrin.h>

#include <cstdint>

#include "kvcrush/simd/dot8_lanes.hpp"
#include "kvcrush/simd/lane_vectors_avx512.hpp"
#include "kvcrush/simd/similarity_sums.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <>
struct similarity_sums_kernel<isa::avx512> {
  using lane_vector = impl::lanes_avx512::f32x16;  // dot8 per lane: dot8_lanes.hpp
  static constexpr index_t lanes = lane_vector::lanes;

  static void block(const float* units, index_t m, index_t d, const float* ut, index_t valid, index_t self_base,
                    float threshold, float* found, double* acc) noexcept {
    const __m512 bar = _mm512_set1_ps(threshold);
    const __mmask16 in_block = static_cast<__mmask16>((1u << valid) - 1u);
    __m512d low = _mm512_setzero_pd(), high = _mm512_setzero_pd();
    for (index_t i = 0; i < m; ++i) {
      const float* uc = units + i * d;
      const __m512 sim = impl::dot8_lanes<lane_vector>(ut, d, [&](index_t j) { return lane_vector::broadcast(uc[j]); });
      const index_t self = self_base - i;
      const auto self_bit = static_cast<std::uint32_t>(self >= 0 && self < 16 ? 1u << self : 0u);
      std::uint32_t counted = in_block & ~self_bit;
      const std::uint32_t similar = _mm512_mask_cmp_ps_mask(static_cast<__mmask16>(counted), sim, bar, _CMP_GT_OQ);
      // last(c): the lowest similar lane (the newest token), unless met in an
      // earlier block. Selects, not branches: whether a lane is similar is
      // data, and mispredicts cost more than the few scalar operations.
      const bool open = found[i] == 0.0f;
      counted &= ~(open ? similar & (0u - similar) : 0u);
      found[i] = open && similar == 0 ? 0.0f : 1.0f;
      // maskz conversions, as fixed_order_dot_avx512.hpp: the plain one starts
      // from an undefined vector (a GCC 12 warning) and has no SIMDe mapping
      // in the emulated test build.
      const __m256 sim_high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(sim), 1));
      low = _mm512_mask_add_pd(low, static_cast<__mmask8>(counted), low,
                               _mm512_maskz_cvtps_pd(0xff, _mm512_castps512_ps256(sim)));
      high = _mm512_mask_add_pd(high, static_cast<__mmask8>(counted >> 8), high, _mm512_maskz_cvtps_pd(0xff, sim_high));
    }
    _mm512_storeu_pd(acc, low);
    _mm512_storeu_pd(acc + 8, high);
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX512
