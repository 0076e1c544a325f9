// AVX2 kernel of simd/quadratic_logits.hpp: 4 keys per block, one ymm register per partial sum.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX2
#include <immintrin.h>

#include "kvcrush/simd/quadratic_logits.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <>
struct quadratic_logits_kernel<isa::avx2> {
  static constexpr index_t lanes = 4;

  // dot8<double> of each lane's key with coefficients coef(j): element j
  // into partial sum j mod 8, each from +0, combined as
  // ((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7)). Named registers,
  // not an array: GCC keeps an array indexed by j & 7 on the stack.
  template <class Coef>
  static __m256d dot_lanes(const double* kt, index_t d, Coef coef) noexcept {
    __m256d p0 = _mm256_setzero_pd(), p1 = p0, p2 = p0, p3 = p0, p4 = p0, p5 = p0, p6 = p0, p7 = p0;
    auto add = [&](index_t j, __m256d& part) { part = _mm256_fmadd_pd(coef(j), _mm256_loadu_pd(kt + j * 4), part); };
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
    return _mm256_add_pd(_mm256_add_pd(_mm256_add_pd(p0, p1), _mm256_add_pd(p2, p3)),
                        _mm256_add_pd(_mm256_add_pd(p4, p5), _mm256_add_pd(p6, p7)));
  }

  static void block(const double* kt, index_t d, const double* mean, const double* sigma, double s, double half_s2,
                    double* work, double* z) noexcept {
    const __m256d linear = dot_lanes(kt, d, [&](index_t j) { return _mm256_set1_pd(mean[j]); });
    __m256d logit = _mm256_mul_pd(_mm256_set1_pd(s), linear);
    if (sigma != nullptr) {
      for (index_t i = 0; i < d; ++i) {
        const double* row = sigma + i * d;
        _mm256_storeu_pd(work + i * 4, dot_lanes(kt, d, [&](index_t j) { return _mm256_set1_pd(row[j]); }));
      }
      const __m256d quad = dot_lanes(kt, d, [&](index_t j) { return _mm256_loadu_pd(work + j * 4); });
      logit = _mm256_fmadd_pd(_mm256_set1_pd(half_s2), quad, logit);
    }
    _mm256_storeu_pd(z, logit);
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX2
