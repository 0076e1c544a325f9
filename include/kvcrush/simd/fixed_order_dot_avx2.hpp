// AVX2 kernel of simd/fixed_order_dot.hpp: the 8 lanes of the reference
// order held in one float vector or two double vectors.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX2
#include <immintrin.h>

#include <type_traits>

#include "kvcrush/simd/fixed_order_dot.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <>
struct fixed_order_dot_kernel<isa::avx2> {
  template <class T>
  static double dot8d(const T* a, const T* b, index_t n) noexcept {
    double lane[8];
    index_t j = 0;
    __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
    for (; j + 8 <= n; j += 8) {
      if constexpr (std::is_same_v<T, float>) {
        const __m256 x = _mm256_loadu_ps(a + j), y = _mm256_loadu_ps(b + j);
        lo = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(x)), _mm256_cvtps_pd(_mm256_castps256_ps128(y)),
                             lo);
        hi = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)), _mm256_cvtps_pd(_mm256_extractf128_ps(y, 1)),
                             hi);
      } else {
        lo = _mm256_fmadd_pd(_mm256_loadu_pd(a + j), _mm256_loadu_pd(b + j), lo);
        hi = _mm256_fmadd_pd(_mm256_loadu_pd(a + j + 4), _mm256_loadu_pd(b + j + 4), hi);
      }
    }
    _mm256_storeu_pd(lane, lo);
    _mm256_storeu_pd(lane + 4, hi);
    for (int l = 0; j + l < n; ++l) lane[l] = std::fma(double(a[j + l]), double(b[j + l]), lane[l]);
    return kvcrush::impl::combine_lanes8(lane);
  }

  template <class T>
  static void dot8d_x4(const T* x, const T* rows, index_t stride, index_t n, double* out) noexcept {
    for (int r = 0; r < 4; ++r) out[r] = dot8d(x, rows + r * stride, n);
  }

  static float dot8f(const float* x, const float* y, index_t n) noexcept {
    __m256 acc = _mm256_setzero_ps();
    index_t j = 0;
    for (; j + 8 <= n; j += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(y + j), acc);
    float lane[8];
    _mm256_storeu_ps(lane, acc);
    for (int l = 0; j + l < n; ++l) lane[l] = std::fma(x[j + l], y[j + l], lane[l]);
    return kvcrush::impl::combine_lanes8(lane);
  }

  static void dot8f_tile4(const float* const* x, const float* rows, index_t stride, index_t n,
                          float (*out)[4]) noexcept {
    // 16 registers: two passes of a 2 x 4 tile.
    for (int k0 = 0; k0 < 4; k0 += 2) {
      __m256 acc[2][4];
      for (int k = 0; k < 2; ++k)
        for (int r = 0; r < 4; ++r) acc[k][r] = _mm256_setzero_ps();
      index_t j = 0;
      for (; j + 8 <= n; j += 8) {
        const __m256 x0 = _mm256_loadu_ps(x[k0] + j), x1 = _mm256_loadu_ps(x[k0 + 1] + j);
        for (int r = 0; r < 4; ++r) {
          const __m256 y = _mm256_loadu_ps(rows + r * stride + j);
          acc[0][r] = _mm256_fmadd_ps(x0, y, acc[0][r]);
          acc[1][r] = _mm256_fmadd_ps(x1, y, acc[1][r]);
        }
      }
      for (int k = 0; k < 2; ++k)
        for (int r = 0; r < 4; ++r) {
          float lane[8];
          _mm256_storeu_ps(lane, acc[k][r]);
          const float* row = rows + r * stride;
          for (int l = 0; j + l < n; ++l) lane[l] = std::fma(x[k0 + k][j + l], row[j + l], lane[l]);
          out[k0 + k][r] = kvcrush::impl::combine_lanes8(lane);
        }
    }
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX2
