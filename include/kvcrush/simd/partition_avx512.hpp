// AVX-512 partition kernel: 16 floats per step, packed with vcompressps into
// a register and stored whole (compress-to-memory is microcoded and slow on
// AMD Zen 4); the tail uses masked loads and a masked store.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX512
#include <immintrin.h>

#include "kvcrush/simd/partition.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <>
struct partition_kernel<isa::avx512> {
  static partition_counts run(const float* KVCRUSH_RESTRICT src, index_t n, float lo, float hi,
                              float* KVCRUSH_RESTRICT dst) noexcept {
    const __m512 vlo = _mm512_set1_ps(lo);
    const __m512 vhi = _mm512_set1_ps(hi);
    partition_counts c;
    index_t i = 0;
    for (; i + 16 <= n; i += 16) {
      const __m512 v = _mm512_loadu_ps(src + i);
      const __mmask16 above = _mm512_cmp_ps_mask(v, vhi, _CMP_GT_OQ);
      const __mmask16 below = _mm512_cmp_ps_mask(v, vlo, _CMP_LT_OQ);
      const __mmask16 inside = _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(v, vlo, _CMP_GE_OQ), v, vhi, _CMP_LE_OQ);
      // Whole-vector store is safe: inside <= i, so dst + inside + 16 <= dst + n.
      _mm512_storeu_ps(dst + c.inside, _mm512_maskz_compress_ps(inside, v));
      c.inside += _mm_popcnt_u32(inside);
      c.above += _mm_popcnt_u32(above);
      c.below += _mm_popcnt_u32(below);
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
      c.below += _mm_popcnt_u32(below);
    }
    return c;
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX512
