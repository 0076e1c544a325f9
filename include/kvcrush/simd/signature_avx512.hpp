// AVX-512 signature kernel: tiles of 16 tokens. Per head: one (masked) load,
// one compare into a k-mask, and two masked ORs of the head's bit into the 16
// token signatures (two zmm accumulators of 8 words): about three
// instructions per 16 scores.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX512
#include <immintrin.h>

#include "kvcrush/simd/signature.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <>
struct signature_kernel<isa::avx512> {
  static bool run(const signature_job& job) noexcept {
    const bool with_sig = job.signatures != nullptr;
    const bool inclusive = job.inclusive;
    __mmask16 nan = 0;
    for (index_t t0 = job.begin; t0 < job.end; t0 += 16) {
      const index_t len = job.end - t0 < 16 ? job.end - t0 : 16;
      const auto tail = static_cast<__mmask16>((1u << len) - 1u);
      __m512 sum = _mm512_setzero_ps();
      const index_t word_count = with_sig ? job.words : 1;
      for (index_t w = 0; w < word_count; ++w) {
        __m512i acc_lo = _mm512_setzero_si512();
        __m512i acc_hi = _mm512_setzero_si512();
        const index_t h_begin = with_sig ? w * 64 : 0;
        const index_t h_end = with_sig ? (h_begin + 64 < job.heads ? h_begin + 64 : job.heads) : job.heads;
        for (index_t h = h_begin; h < h_end; ++h) {
          const __m512 v = _mm512_maskz_loadu_ps(tail, job.scores + h * job.row_stride + t0);
          if (job.sums) {
            sum = h == 0 ? v : _mm512_add_ps(sum, v);
          } else {
            nan |= _mm512_mask_cmp_ps_mask(tail, v, v, _CMP_UNORD_Q);
          }
          if (!with_sig) continue;
          const __m512 threshold = _mm512_set1_ps(job.thresholds[h]);
          const __mmask16 take = inclusive ? _mm512_mask_cmp_ps_mask(tail, v, threshold, _CMP_GE_OQ)
                                           : _mm512_mask_cmp_ps_mask(tail, v, threshold, _CMP_GT_OQ);
          if (job.bit_counts) job.bit_counts[h] += _mm_popcnt_u32(take);
          const __m512i bit = _mm512_set1_epi64(static_cast<long long>(std::uint64_t{1} << (h & 63)));
          acc_lo = _mm512_mask_or_epi64(acc_lo, static_cast<__mmask8>(take), acc_lo, bit);
          acc_hi = _mm512_mask_or_epi64(acc_hi, static_cast<__mmask8>(take >> 8), acc_hi, bit);
        }
        if (!with_sig) continue;
        std::uint64_t* out = job.signatures + (t0 - job.begin) * job.words + w;
        if (job.words == 1) {
          _mm512_mask_storeu_epi64(out, static_cast<__mmask8>(tail), acc_lo);
          _mm512_mask_storeu_epi64(out + 8, static_cast<__mmask8>(tail >> 8), acc_hi);
        } else {
          const __m512i stride = _mm512_mullo_epi64(_mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7),
                                                    _mm512_set1_epi64(job.words));
          _mm512_mask_i64scatter_epi64(out, static_cast<__mmask8>(tail), stride, acc_lo, 8);
          _mm512_mask_i64scatter_epi64(out + 8 * job.words, static_cast<__mmask8>(tail >> 8), stride, acc_hi, 8);
        }
      }
      if (job.sums) {
        _mm512_mask_storeu_ps(job.sums + (t0 - job.begin), tail, sum);
        nan |= _mm512_mask_cmp_ps_mask(tail, sum, sum, _CMP_UNORD_Q);
      }
    }
    return nan != 0;
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX512
