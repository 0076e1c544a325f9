// AVX2 partition kernel: 8 floats per step; the inside lanes are packed with
// a permutation computed from the compare mask by PDEP/PEXT (no table).
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX2
#include <immintrin.h>

#include "kvcrush/simd/partition.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

namespace detail_avx2 {

// Indices of the set bits of an 8-bit mask, packed to the front, as the
// permutation operand of vpermps.
inline __m256i compress_permutation(unsigned mask) noexcept {
  // One byte per lane, 0xff where the lane is selected.
  const std::uint64_t spread = _pdep_u64(mask, 0x0101010101010101ull) * 0xffu;
  const std::uint64_t indices = _pext_u64(0x0706050403020100ull, spread);
  return _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(indices)));
}

}  // namespace detail_avx2

template <>
struct partition_kernel<isa::avx2> {
  template <bool CountBelow = true>
  static partition_counts run(const float* KVCRUSH_RESTRICT src, index_t n, float lo, float hi,
                              float* KVCRUSH_RESTRICT dst) noexcept {
    const __m256 vlo = _mm256_set1_ps(lo);
    const __m256 vhi = _mm256_set1_ps(hi);
    partition_counts c;
    index_t i = 0;
    for (; i + 8 <= n; i += 8) {
      const __m256 v = _mm256_loadu_ps(src + i);
      const unsigned above = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(v, vhi, _CMP_GT_OQ)));
      const unsigned below = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(v, vlo, _CMP_LT_OQ)));
      const __m256 in = _mm256_and_ps(_mm256_cmp_ps(v, vlo, _CMP_GE_OQ), _mm256_cmp_ps(v, vhi, _CMP_LE_OQ));
      const unsigned inside = static_cast<unsigned>(_mm256_movemask_ps(in));
      // Writing all 8 lanes is safe: inside <= i, so dst + inside + 8 <= dst + n.
      _mm256_storeu_ps(dst + c.inside,
                       _mm256_permutevar8x32_ps(v, detail_avx2::compress_permutation(inside)));
      c.inside += _mm_popcnt_u32(inside);
      c.above += _mm_popcnt_u32(above);
      if (CountBelow) c.below += _mm_popcnt_u32(below);
    }
    const partition_counts tail = partition_kernel<isa::scalar>::run<CountBelow>(src + i, n - i, lo, hi, dst + c.inside);
    c.above += tail.above;
    c.below += tail.below;
    c.inside += tail.inside;
    return c;
  }

  static rank_counts count(const float* src, index_t n, float x) noexcept {
    const __m256 vx = _mm256_set1_ps(x);
    rank_counts r;
    index_t i = 0;
    for (; i + 8 <= n; i += 8) {
      const __m256 v = _mm256_loadu_ps(src + i);
      r.greater += _mm_popcnt_u32(static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(v, vx, _CMP_GT_OQ))));
      r.equal += _mm_popcnt_u32(static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(v, vx, _CMP_EQ_OQ))));
    }
    const rank_counts tail = partition_kernel<isa::scalar>::count(src + i, n - i, x);
    r.greater += tail.greater;
    r.equal += tail.equal;
    return r;
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX2
