// AVX2 kernel of simd/similarity_sums.hpp: 8 tokens per block, the 8
// partial sums of each similarity in 8 ymm registers, the double sums in two.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX2
#include <immintrin.h>

#include <cstdint>

#include "kvcrush/simd/dot8_lanes.hpp"
#include "kvcrush/simd/lane_vectors_avx2.hpp"
#include "kvcrush/simd/similarity_sums.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <>
struct similarity_sums_kernel<isa::avx2> {
  using lane_vector = impl::lanes_avx2::f32x8;  // dot8 per lane: dot8_lanes.hpp
  static constexpr index_t lanes = lane_vector::lanes;

  static void block(const float* units, index_t m, index_t d, const float* ut, index_t valid, index_t self_base,
                    float threshold, float* found, double* acc) noexcept {
    const __m256 bar = _mm256_set1_ps(threshold);
    const std::uint32_t in_block = (1u << valid) - 1u;
    const __m256i lane_bit = _mm256_setr_epi64x(1, 2, 4, 8);
    __m256d low = _mm256_setzero_pd(), high = _mm256_setzero_pd();
    for (index_t i = 0; i < m; ++i) {
      const float* uc = units + i * d;
      const __m256 sim = impl::dot8_lanes<lane_vector>(ut, d, [&](index_t j) { return lane_vector::broadcast(uc[j]); });
      const index_t self = self_base - i;
      const auto self_bit = static_cast<std::uint32_t>(self >= 0 && self < 8 ? 1u << self : 0u);
      std::uint32_t counted = in_block & ~self_bit;
      const std::uint32_t similar =
          counted & static_cast<std::uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(sim, bar, _CMP_GT_OQ)));
      // last(c): the lowest similar lane (the newest token), unless met in an
      // earlier block. Selects, not branches: whether a lane is similar is
      // data, and mispredicts cost more than the few scalar operations.
      const bool open = found[i] == 0.0f;
      counted &= ~(open ? similar & (0u - similar) : 0u);
      found[i] = open && similar == 0 ? 0.0f : 1.0f;
      // Lanes not counted add +0: the sums start at +0 and only a -0 + -0
      // makes -0, so adding +0 leaves every sum's bits as they are.
      const __m256d keep_low = _mm256_castsi256_pd(
          _mm256_cmpeq_epi64(_mm256_and_si256(_mm256_set1_epi64x(counted & 15u), lane_bit), lane_bit));
      const __m256d keep_high = _mm256_castsi256_pd(
          _mm256_cmpeq_epi64(_mm256_and_si256(_mm256_set1_epi64x(counted >> 4), lane_bit), lane_bit));
      low = _mm256_add_pd(low, _mm256_and_pd(keep_low, _mm256_cvtps_pd(_mm256_castps256_ps128(sim))));
      high = _mm256_add_pd(high, _mm256_and_pd(keep_high, _mm256_cvtps_pd(_mm256_extractf128_ps(sim, 1))));
    }
    _mm256_storeu_pd(acc, low);
    _mm256_storeu_pd(acc + 4, high);
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX2
