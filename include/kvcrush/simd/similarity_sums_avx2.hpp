// AVX2 kernel of simd/similarity_sums.hpp: 8 tokens per block, the 8
// partial sums of each similarity in 8 ymm registers, the double sums in two.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX2
#include <immintrin.h>

#include <cstdint>

#include "kvcrush/simd/similarity_sums.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <>
struct similarity_sums_kernel<isa::avx2> {
  static constexpr index_t lanes = 8;

  static void block(const float* units, index_t m, index_t d, const float* ut, index_t valid, index_t self_base,
                    float threshold, float* found, double* acc) noexcept {
    const __m256 bar = _mm256_set1_ps(threshold);
    const std::uint32_t in_block = (1u << valid) - 1u;
    const __m256i lane_bit = _mm256_setr_epi64x(1, 2, 4, 8);
    __m256d low = _mm256_setzero_pd(), high = _mm256_setzero_pd();
    for (index_t i = 0; i < m; ++i) {
      const float* uc = units + i * d;
      // Named registers, not an array: GCC keeps an array indexed by j & 7
      // on the stack.
      __m256 p0 = _mm256_setzero_ps(), p1 = p0, p2 = p0, p3 = p0, p4 = p0, p5 = p0, p6 = p0, p7 = p0;
      auto add = [&](index_t j, __m256& part) {
        part = _mm256_fmadd_ps(_mm256_set1_ps(uc[j]), _mm256_loadu_ps(ut + j * 8), part);
      };
      index_t j = 0;
      for (; j + 8 <= d; j += 8) {
        add(j, p0), add(j + 1, p1), add(j + 2, p2), add(j + 3, p3);
        add(j + 4, p4), add(j + 5, p5), add(j + 6, p6), add(j + 7, p7);
      }
      const index_t rest = d - j;
      if (rest > 0) add(j, p0);
      if (rest > 1) add(j + 1, p1);
      if (rest > 2) add(j + 2, p2);
      if (rest > 3) add(j + 3, p3);
      if (rest > 4) add(j + 4, p4);
      if (rest > 5) add(j + 5, p5);
      if (rest > 6) add(j + 6, p6);
      const __m256 sim = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(p0, p1), _mm256_add_ps(p2, p3)),
                                     _mm256_add_ps(_mm256_add_ps(p4, p5), _mm256_add_ps(p6, p7)));
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
