// AVX-512 vectors for simd/dot8_lanes.hpp: 16 floats or 8 doubles, one item per lane.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX512
#include <immintrin.h>

#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd::impl::lanes_avx512 {

struct f32x16 {
  using type = __m512;
  using scalar = float;
  static constexpr index_t lanes = 16;
  static type zero() noexcept { return _mm512_setzero_ps(); }
  static type broadcast(float v) noexcept { return _mm512_set1_ps(v); }
  static type load(const float* p) noexcept { return _mm512_loadu_ps(p); }
  static type add(type a, type b) noexcept { return _mm512_add_ps(a, b); }
  static type fmadd(type a, type b, type c) noexcept { return _mm512_fmadd_ps(a, b, c); }
};

struct f64x8 {
  using type = __m512d;
  using scalar = double;
  static constexpr index_t lanes = 8;
  static type zero() noexcept { return _mm512_setzero_pd(); }
  static type broadcast(double v) noexcept { return _mm512_set1_pd(v); }
  static type load(const double* p) noexcept { return _mm512_loadu_pd(p); }
  static type add(type a, type b) noexcept { return _mm512_add_pd(a, b); }
  static type fmadd(type a, type b, type c) noexcept { return _mm512_fmadd_pd(a, b, c); }
};

}  // namespace simd::impl::lanes_avx512
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX512
