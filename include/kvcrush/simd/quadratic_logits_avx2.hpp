// AVX2 kernel of simd/quadratic_logits.hpp: 4 keys per block, one ymm register per partial sum.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX2
#include <immintrin.h>

#include "kvcrush/simd/dot8_lanes.hpp"
#include "kvcrush/simd/lane_vectors_avx2.hpp"
#include "kvcrush/simd/quadratic_logits.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <>
struct quadratic_logits_kernel<isa::avx2> {
  using lane_vector = impl::lanes_avx2::f64x4;  // dot8 per lane: dot8_lanes.hpp
  static constexpr index_t lanes = lane_vector::lanes;

  static void block(const double* kt, index_t d, const double* mean, const double* sigma, double s, double half_s2,
                    double* work, double* z) noexcept {
    // Coefficients: one scalar per key element (broadcast), or one per key (a row of work).
    auto broadcast_from = [](const double* c) { return [c](index_t j) { return lane_vector::broadcast(c[j]); }; };
    auto per_key = [work](index_t j) { return lane_vector::load(work + j * lanes); };
    const __m256d linear = impl::dot8_lanes<lane_vector>(kt, d, broadcast_from(mean));
    __m256d logit = _mm256_mul_pd(_mm256_set1_pd(s), linear);
    if (sigma != nullptr) {
      for (index_t i = 0; i < d; ++i) {
        const double* row = sigma + i * d;
        _mm256_storeu_pd(work + i * 4, impl::dot8_lanes<lane_vector>(kt, d, broadcast_from(row)));
      }
      const __m256d quad = impl::dot8_lanes<lane_vector>(kt, d, per_key);
      logit = _mm256_fmadd_pd(_mm256_set1_pd(half_s2), quad, logit);
    }
    _mm256_storeu_pd(z, logit);
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX2
