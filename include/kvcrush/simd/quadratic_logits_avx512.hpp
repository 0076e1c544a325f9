// AVX512 kernel of simd/quadratic_logits.hpp: 8 keys per block, one zmm register per partial sum.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX512
#include <immintrin.h>

#include "kvcrush/simd/dot8_lanes.hpp"
#include "kvcrush/simd/lane_vectors_avx512.hpp"
#include "kvcrush/simd/quadratic_logits.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <>
struct quadratic_logits_kernel<isa::avx512> {
  using lane_vector = impl::lanes_avx512::f64x8;  // dot8 per lane: dot8_lanes.hpp
  static constexpr index_t lanes = lane_vector::lanes;

  static void block(const double* kt, index_t d, const double* mean, const double* sigma, double s, double half_s2,
                    double* work, double* z) noexcept {
    // Coefficients: one scalar per key element (broadcast), or one per key (a row of work).
    auto broadcast_from = [](const double* c) { return [c](index_t j) { return lane_vector::broadcast(c[j]); }; };
    auto per_key = [work](index_t j) { return lane_vector::load(work + j * lanes); };
    const __m512d linear = impl::dot8_lanes<lane_vector>(kt, d, broadcast_from(mean));
    __m512d logit = _mm512_mul_pd(_mm512_set1_pd(s), linear);
    if (sigma != nullptr) {
      for (index_t i = 0; i < d; ++i) {
        const double* row = sigma + i * d;
        _mm512_storeu_pd(work + i * 8, impl::dot8_lanes<lane_vector>(kt, d, broadcast_from(row)));
      }
      const __m512d quad = impl::dot8_lanes<lane_vector>(kt, d, per_key);
      logit = _mm512_fmadd_pd(_mm512_set1_pd(half_s2), quad, logit);
    }
    _mm512_storeu_pd(z, logit);
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX512
