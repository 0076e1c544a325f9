// AVX-512 kernel of simd/fixed_order_dot.hpp: the 8 double lanes of the
// reference order in one zmm register; float dots keep 8-lane ymm vectors
// (the order has 8 lanes), with the 32 registers holding a whole 4 x 4 tile.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX512
#include <immintrin.h>

#include <type_traits>

#include "kvcrush/simd/fixed_order_dot.hpp"
#include "kvcrush/simd/fixed_order_dot_avx2.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <>
struct fixed_order_dot_kernel<isa::avx512> {
  template <class T>
  static double dot8d(const T* a, const T* b, index_t n) noexcept {
    double lane[8];
    index_t j = 0;
    __m512d acc = _mm512_setzero_pd();
    for (; j + 8 <= n; j += 8) {
      if constexpr (std::is_same_v<T, float>) {
        // maskz: the plain conversion starts from _mm512_undefined_pd(), which
        // GCC 12 reports as maybe-uninitialized under -Wall.
        acc = _mm512_fmadd_pd(_mm512_maskz_cvtps_pd(0xff, _mm256_loadu_ps(a + j)),
                              _mm512_maskz_cvtps_pd(0xff, _mm256_loadu_ps(b + j)), acc);
      } else {
        acc = _mm512_fmadd_pd(_mm512_loadu_pd(a + j), _mm512_loadu_pd(b + j), acc);
      }
    }
    _mm512_storeu_pd(lane, acc);
    for (int l = 0; j + l < n; ++l) lane[l] = std::fma(double(a[j + l]), double(b[j + l]), lane[l]);
    return kvcrush::impl::combine_lanes8(lane);
  }

  template <class T>
  static void dot8d_x4(const T* x, const T* rows, index_t stride, index_t n, double* out) noexcept {
    __m512d acc[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd()};
    index_t j = 0;
    for (; j + 8 <= n; j += 8) {
      if constexpr (std::is_same_v<T, float>) {
        const __m512d xv = _mm512_maskz_cvtps_pd(0xff, _mm256_loadu_ps(x + j));
        for (int r = 0; r < 4; ++r) {
          acc[r] = _mm512_fmadd_pd(xv, _mm512_maskz_cvtps_pd(0xff, _mm256_loadu_ps(rows + r * stride + j)), acc[r]);
        }
      } else {
        const __m512d xv = _mm512_loadu_pd(x + j);
        for (int r = 0; r < 4; ++r) acc[r] = _mm512_fmadd_pd(xv, _mm512_loadu_pd(rows + r * stride + j), acc[r]);
      }
    }
    for (int r = 0; r < 4; ++r) {
      double lane[8];
      _mm512_storeu_pd(lane, acc[r]);
      const T* row = rows + r * stride;
      // x first, as in dot8d(x, row): the product is the same either way.
      for (int l = 0; j + l < n; ++l) lane[l] = std::fma(double(x[j + l]), double(row[j + l]), lane[l]);
      out[r] = kvcrush::impl::combine_lanes8(lane);
    }
  }

  static float dot8f(const float* x, const float* y, index_t n) noexcept {
    return fixed_order_dot_kernel<isa::avx2>::dot8f(x, y, n);
  }

  static void dot8f_tile4(const float* const* x, const float* rows, index_t stride, index_t n,
                          float (*out)[4]) noexcept {
    // 32 registers: the whole 4 x 4 tile.
    __m256 acc[4][4];
    for (int k = 0; k < 4; ++k)
      for (int r = 0; r < 4; ++r) acc[k][r] = _mm256_setzero_ps();
    index_t j = 0;
    for (; j + 8 <= n; j += 8) {
      const __m256 x0 = _mm256_loadu_ps(x[0] + j), x1 = _mm256_loadu_ps(x[1] + j);
      const __m256 x2 = _mm256_loadu_ps(x[2] + j), x3 = _mm256_loadu_ps(x[3] + j);
      for (int r = 0; r < 4; ++r) {
        const __m256 y = _mm256_loadu_ps(rows + r * stride + j);
        acc[0][r] = _mm256_fmadd_ps(x0, y, acc[0][r]);
        acc[1][r] = _mm256_fmadd_ps(x1, y, acc[1][r]);
        acc[2][r] = _mm256_fmadd_ps(x2, y, acc[2][r]);
        acc[3][r] = _mm256_fmadd_ps(x3, y, acc[3][r]);
      }
    }
    for (int k = 0; k < 4; ++k)
      for (int r = 0; r < 4; ++r) {
        float lane[8];
        _mm256_storeu_ps(lane, acc[k][r]);
        const float* row = rows + r * stride;
        for (int l = 0; j + l < n; ++l) lane[l] = std::fma(x[k][j + l], row[j + l], lane[l]);
        out[k][r] = kvcrush::impl::combine_lanes8(lane);
      }
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX512
