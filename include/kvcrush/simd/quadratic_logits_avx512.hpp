// AVX512 kernel of simd/quadratic_logits.hpp: 8 keys per block, one zmm register per partial sum.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX512
#include <immintrin.h>

#include "kvcrush/simd/quadratic_logits.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <>
struct quadratic_logits_kernel<isa::avx512> {
  static constexpr index_t lanes = 8;

  // dot8<double> of each lane's key with coefficients coef(j): element j
  // into partial sum j mod 8, each from +0, combined as
  // ((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7)). Named registers,
  // not an array: GCC keeps an array indexed by j & 7 on the stack.
  template <class Coef>
  static __m512d dot_lanes(const double* kt, index_t d, Coef coef) noexcept {
    __m512d p0 = _mm512_setzero_pd(), p1 = p0, p2 = p0, p3 = p0, p4 = p0, p5 = p0, p6 = p0, p7 = p0;
    auto add = [&](index_t j, __m512d& part) { part = _mm512_fmadd_pd(coef(j), _mm512_loadu_pd(kt + j * 8), part); };
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
    return _mm512_add_pd(_mm512_add_pd(_mm512_add_pd(p0, p1), _mm512_add_pd(p2, p3)),
                        _mm512_add_pd(_mm512_add_pd(p4, p5), _mm512_add_pd(p6, p7)));
  }

  static void block(const double* kt, index_t d, const double* mean, const double* sigma, double s, double half_s2,
                    double* work, double* z) noexcept {
    const __m512d linear = dot_lanes(kt, d, [&](index_t j) { return _mm512_set1_pd(mean[j]); });
    __m512d logit = _mm512_mul_pd(_mm512_set1_pd(s), linear);
    if (sigma != nullptr) {
      for (index_t i = 0; i < d; ++i) {
        const double* row = sigma + i * d;
        _mm512_storeu_pd(work + i * 8, dot_lanes(kt, d, [&](index_t j) { return _mm512_set1_pd(row[j]); }));
      }
      const __m512d quad = dot_lanes(kt, d, [&](index_t j) { return _mm512_loadu_pd(work + j * 8); });
      logit = _mm512_fmadd_pd(_mm512_set1_pd(half_s2), quad, logit);
    }
    _mm512_storeu_pd(z, logit);
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX512
