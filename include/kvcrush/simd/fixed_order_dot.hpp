// Sums of products in one fixed order, for the score sources that read keys,
// queries or values directly (KeyDiff, Expected Attention, R-KV redundancy).
//
// Why: a dot product added up "naturally" is added in a different order by
// every SIMD width, and GCC contracts a * b + c into a fused multiply-add in
// builds with FMA enabled and not in the baseline build, so the scalar, AVX2
// and AVX-512 builds would disagree in the last bit and, through ties, in
// the keep sets. Here every product is added with an explicit std::fma into
// one of 8 lanes (element j into lane j mod 8, each lane starting from +0),
// and the lanes are combined as ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)).
// That order is SPEC 7's order for mean thresholds; it is fixed whatever the
// ISA. dot8d (double lanes) and dot8f (float lanes), and their 4-at-a-time
// forms, compute the same sums with AVX2 or AVX-512 vectors holding the 8
// lanes (a vector FMA rounds each lane as std::fma does), so they are fast
// and still bit-identical to the scalar loop.
#pragma once

#include <cmath>
#include <type_traits>

#include "kvcrush/float16.hpp"
#include "kvcrush/kv_view.hpp"
#include "kvcrush/isa.hpp"
#include "kvcrush/tensor_view.hpp"

#if KVCRUSH_HAS_AVX2
#include <immintrin.h>
#endif

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace impl {

// Element conversions for dot8: exact widening, nothing else.
inline double to_acc(double v) noexcept { return v; }
inline float to_acc(float v) noexcept { return v; }
inline float to_acc(float16 v) noexcept { return to_float(v); }
inline float to_acc(bfloat16 v) noexcept { return to_float(v); }

template <class Acc>
inline Acc combine_lanes8(const Acc* lane) noexcept {
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

// sum_j a[j] * b[j] in Acc (float or double), the order above. A and B may
// be float, float16, bfloat16 or double; they are converted to Acc exactly
// (every float is a double; float16 and bfloat16 go through to_float).
template <class Acc, class A, class B>
inline Acc dot8(const A* a, const B* b, index_t n) noexcept {
  Acc lane[8] = {Acc(0), Acc(0), Acc(0), Acc(0), Acc(0), Acc(0), Acc(0), Acc(0)};
  index_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int l = 0; l < 8; ++l) {
      lane[l] = std::fma(static_cast<Acc>(to_acc(a[j + l])), static_cast<Acc>(to_acc(b[j + l])), lane[l]);
    }
  }
  for (int l = 0; j + l < n; ++l) {
    lane[l] = std::fma(static_cast<Acc>(to_acc(a[j + l])), static_cast<Acc>(to_acc(b[j + l])), lane[l]);
  }
  return combine_lanes8(lane);
}

// dot8<double> of two float or two double arrays with the ISA's vectors:
// lane l of the vector accumulator is lane l above, and a vector FMA rounds
// each lane exactly as std::fma does, so the bits are dot8's.
template <class Isa, class T>
inline double dot8d(const T* a, const T* b, index_t n) noexcept {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "dot8d reads float or double");
  [[maybe_unused]] double lane[8];
  [[maybe_unused]] index_t j = 0;
#if KVCRUSH_HAS_AVX512
  if constexpr (std::is_same_v<Isa, isa::avx512>) {
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
    return combine_lanes8(lane);
  }
#endif
#if KVCRUSH_HAS_AVX2
  if constexpr (std::is_same_v<Isa, isa::avx2> || std::is_same_v<Isa, isa::avx512>) {
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
    return combine_lanes8(lane);
  }
#endif
  return dot8<double>(a, b, n);
}

// out[r] = dot8d(x, rows + r * stride, n) for r = 0..3, each with its own
// lanes in the order above (so the same bits as four dot8d calls), computed
// together so that the four dependency chains overlap.
template <class Isa, class T>
inline void dot8d_x4(const T* x, const T* rows, index_t stride, index_t n, double* out) noexcept {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "dot8d_x4 reads float or double");
#if KVCRUSH_HAS_AVX512
  if constexpr (std::is_same_v<Isa, isa::avx512>) {
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
      out[r] = combine_lanes8(lane);
    }
    return;
  }
#endif
  for (int r = 0; r < 4; ++r) out[r] = dot8d<Isa>(x, rows + r * stride, n);
}

// dot8<float>(x, y, n) with one 8-lane AVX2 vector: the same bits.
template <class Isa>
inline float dot8f(const float* x, const float* y, index_t n) noexcept {
#if KVCRUSH_HAS_AVX2
  if constexpr (std::is_same_v<Isa, isa::avx2> || std::is_same_v<Isa, isa::avx512>) {
    __m256 acc = _mm256_setzero_ps();
    index_t j = 0;
    for (; j + 8 <= n; j += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(y + j), acc);
    float lane[8];
    _mm256_storeu_ps(lane, acc);
    for (int l = 0; j + l < n; ++l) lane[l] = std::fma(x[j + l], y[j + l], lane[l]);
    return combine_lanes8(lane);
  }
#endif
  return dot8<float>(x, y, n);
}

// out[k][r] = dot8<float>(x[k], rows + r * stride, n) for k, r = 0..3: a
// 4 x 4 tile of float dots, each in its own lanes (so the same bits as 16
// dot8<float> calls). Every vector loaded serves four products, which
// keeps the loop out of the cache's way.
template <class Isa>
inline void dot8f_tile4(const float* const* x, const float* rows, index_t stride, index_t n,
                        float (*out)[4]) noexcept {
#if KVCRUSH_HAS_AVX2
  if constexpr (std::is_same_v<Isa, isa::avx2>) {
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
          out[k0 + k][r] = combine_lanes8(lane);
        }
    }
    return;
  }
  if constexpr (std::is_same_v<Isa, isa::avx512>) {
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
        out[k][r] = combine_lanes8(lane);
      }
    return;
  }
#endif
  for (int k = 0; k < 4; ++k)
    for (int r = 0; r < 4; ++r) out[k][r] = dot8<float>(x[k], rows + r * stride, n);
}

// sum_j a[j]^2, the same order.
template <class Acc, class A>
inline Acc sum_squares8(const A* a, index_t n) noexcept {
  return dot8<Acc>(a, a, n);
}

// The first non-finite element (NaN or +-inf) of a kv_view's tokens
// [begin, end), searched head by head, token by token, dim by dim. Returns
// false when every element is finite; otherwise sets head, token and value.
template <class T>
inline bool find_non_finite(kv_view<const T> v, index_t begin, index_t end, index_t& head, index_t& token,
                            float& value) noexcept {
  if (v.head_dim() == 0) return false;
  for (index_t h = 0; h < v.heads(); ++h) {
    for (index_t t = begin; t < end; ++t) {
      const T* row = v.row(h, t);
      for (index_t j = 0; j < v.head_dim(); ++j) {
        const float x = to_float(row[j]);
        if (!std::isfinite(x)) {
          head = h;
          token = t;
          value = x;
          return true;
        }
      }
    }
  }
  return false;
}

}  // namespace impl
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
