// AVX2 vectors for simd/dot8_lanes.hpp: 8 floats or 4 doubles, one item per lane.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX2
#include <immintrin.h>

#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd::impl::lanes_avx2 {

struct f32x8 {
  using type = __m256;
  using scalar = float;
  static constexpr index_t lanes = 8;
  static type zero() noexcept { return _mm256_setzero_ps(); }
  static type broadcast(float v) noexcept { return _mm256_set1_ps(v); }
  static type load(const float* p) noexcept { return _mm256_loadu_ps(p); }
  static type add(type a, type b) noexcept { return _mm256_add_ps(a, b); }
  static type fmadd(type a, type b, type c) noexcept { return _mm256_fmadd_ps(a, b, c); }
};

struct f64x4 {
  using type = __m256d;
  using scalar = double;
  static constexpr index_t lanes = 4;
  static type zero() noexcept { return _mm256_setzero_pd(); }
  static type broadcast(double v) noexcept { return _mm256_set1_pd(v); }
  static type load(const double* p) noexcept { return _mm256_loadu_pd(p); }
  static type add(type a, type b) noexcept { return _mm256_add_pd(a, b); }
  static type fmadd(type a, type b, type c) noexcept { return _mm256_fmadd_pd(a, b, c); }
};

}  // namespace simd::impl::lanes_avx2
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX2
