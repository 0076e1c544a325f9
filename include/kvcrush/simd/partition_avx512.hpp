// AVX-512 partition kernel: 16 floats per step, packed with vcompressps into
// a register and stored whole (compress-to-memory is microcoded and slow on
// AMD Zen 4); the tail uses masked loads and a masked store.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX512
#include <immintrin.h>

#include "kvcrush/simd/avx512_util.hpp"
#include "kvcrush/simd/partition.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <>
struct partition_kernel<isa::avx512> {
  template <bool CountBelow = true>
  static partition_counts run(const float* KVCRUSH_RESTRICT src, index_t n, float lo, float hi,
                              float* KVCRUSH_RESTRICT dst) noexcept {
    const __m512 vlo = _mm512_set1_ps(lo);
    const __m512 vhi = _mm512_set1_ps(hi);
    partition_counts c;
    index_t i = 0;
    // Above/below counts live in vector lanes (one masked add each); only the
    // packed-store offset needs a scalar popcount. Two vectors per step: the
    // second store offset depends only on the first's popcount.
    const __m512i one = _mm512_set1_epi32(1);
    __m512i above_lanes = _mm512_setzero_si512();
    __m512i below_lanes = _mm512_setzero_si512();
    for (; i + 32 <= n; i += 32) {
      const __m512 v0 = _mm512_loadu_ps(src + i);
      const __m512 v1 = _mm512_loadu_ps(src + i + 16);
      const __mmask16 in0 = _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(v0, vlo, _CMP_GE_OQ), v0, vhi, _CMP_LE_OQ);
      const __mmask16 in1 = _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(v1, vlo, _CMP_GE_OQ), v1, vhi, _CMP_LE_OQ);
      const unsigned n0 = _mm_popcnt_u32(in0);
      // Whole-vector stores are safe: inside <= i, so each store ends before src's end.
      _mm512_storeu_ps(dst + c.inside, _mm512_maskz_compress_ps(in0, v0));
      _mm512_storeu_ps(dst + c.inside + n0, _mm512_maskz_compress_ps(in1, v1));
      c.inside += n0 + _mm_popcnt_u32(in1);
      above_lanes = _mm512_mask_add_epi32(above_lanes, _mm512_cmp_ps_mask(v0, vhi, _CMP_GT_OQ), above_lanes, one);
      above_lanes = _mm512_mask_add_epi32(above_lanes, _mm512_cmp_ps_mask(v1, vhi, _CMP_GT_OQ), above_lanes, one);
      if (CountBelow) {
        below_lanes = _mm512_mask_add_epi32(below_lanes, _mm512_cmp_ps_mask(v0, vlo, _CMP_LT_OQ), below_lanes, one);
        below_lanes = _mm512_mask_add_epi32(below_lanes, _mm512_cmp_ps_mask(v1, vlo, _CMP_LT_OQ), below_lanes, one);
      }
    }
    c.above += avx512_util::sum_i32(above_lanes);
    if (CountBelow) c.below += avx512_util::sum_i32(below_lanes);
    for (; i + 16 <= n; i += 16) {
      const __m512 v = _mm512_loadu_ps(src + i);
      const __mmask16 above = _mm512_cmp_ps_mask(v, vhi, _CMP_GT_OQ);
      const __mmask16 below = _mm512_cmp_ps_mask(v, vlo, _CMP_LT_OQ);
      const __mmask16 inside = _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(v, vlo, _CMP_GE_OQ), v, vhi, _CMP_LE_OQ);
      _mm512_storeu_ps(dst + c.inside, _mm512_maskz_compress_ps(inside, v));
      c.inside += _mm_popcnt_u32(inside);
      c.above += _mm_popcnt_u32(above);
      if (CountBelow) c.below += _mm_popcnt_u32(below);
    }
    if (i < n) {
      const auto tail = static_cast<__mmask16>((1u << (n - i)) - 1u);
      const __m512 v = _mm512_maskz_loadu_ps(tail, src + i);
      const __mmask16 above = _mm512_mask_cmp_ps_mask(tail, v, vhi, _CMP_GT_OQ);
      const __mmask16 below = _mm512_mask_cmp_ps_mask(tail, v, vlo, _CMP_LT_OQ);
      const __mmask16 inside = _mm512_mask_cmp_ps_mask(_mm512_mask_cmp_ps_mask(tail, v, vlo, _CMP_GE_OQ), v, vhi, _CMP_LE_OQ);
      const unsigned count = _mm_popcnt_u32(inside);
      _mm512_mask_storeu_ps(dst + c.inside, static_cast<__mmask16>((1u << count) - 1u),
                            _mm512_maskz_compress_ps(inside, v));
      c.inside += count;
      c.above += _mm_popcnt_u32(above);
      if (CountBelow) c.below += _mm_popcnt_u32(below);
    }
    return c;
  }

  static rank_counts count(const float* src, index_t n, float x) noexcept {
    const __m512 vx = _mm512_set1_ps(x);
    rank_counts r;
    for (index_t i = 0; i < n; i += 16) {
      const auto m = static_cast<__mmask16>(n - i >= 16 ? 0xffffu : (1u << (n - i)) - 1u);
      const __m512 v = _mm512_maskz_loadu_ps(m, src + i);
      r.greater += _mm_popcnt_u32(_mm512_mask_cmp_ps_mask(m, v, vx, _CMP_GT_OQ));
      r.equal += _mm_popcnt_u32(_mm512_mask_cmp_ps_mask(m, v, vx, _CMP_EQ_OQ));
    }
    return r;
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX512
