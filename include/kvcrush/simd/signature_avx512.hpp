// AVX-512 signature kernel: tiles of 64 tokens. Per head: four (masked)
// loads, four compares into k-masks, and eight masked ORs of the head's bit
// into the 64 token signatures (eight zmm accumulators of 8 words). Four
// cache lines per row per visit, rather than one, keep the hardware
// prefetchers effective even when every row starts on the same cache set
// (rows a power of two apart, as engines allocate them): measured 2.1x
// faster than 16-token tiles there, 1.3x on padded rows.
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
    constexpr index_t tile = 64;
    const bool with_sig = job.signatures != nullptr;
    const bool inclusive = job.inclusive;
    const index_t words = job.words;
    const __m512i word_stride = _mm512_mullo_epi64(_mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7), _mm512_set1_epi64(words));
    __mmask16 nan = 0;
    for (index_t t0 = job.begin; t0 < job.end; t0 += tile) {
      const index_t len = job.end - t0 < tile ? job.end - t0 : tile;
      __mmask16 lanes[4];
      for (index_t j = 0; j < 4; ++j) {
        const index_t n = len - 16 * j;
        lanes[j] = static_cast<__mmask16>(n >= 16 ? 0xffffu : (n > 0 ? (1u << n) - 1u : 0u));
      }
      __m512 sums[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
      const index_t word_count = with_sig ? words : 1;
      for (index_t w = 0; w < word_count; ++w) {
        __m512i acc[8];
        for (auto& a : acc) a = _mm512_setzero_si512();
        const index_t h_begin = with_sig ? w * 64 : 0;
        const index_t h_end = with_sig ? (h_begin + 64 < job.heads ? h_begin + 64 : job.heads) : job.heads;
        for (index_t h = h_begin; h < h_end; ++h) {
          const float* row = job.scores + h * job.row_stride + t0;
          __m512 v[4];
          for (index_t j = 0; j < 4; ++j) v[j] = _mm512_maskz_loadu_ps(lanes[j], row + 16 * j);
          if (job.sums) {
            for (index_t j = 0; j < 4; ++j) sums[j] = h == 0 ? v[j] : _mm512_add_ps(sums[j], v[j]);
          } else {
            for (index_t j = 0; j < 4; ++j) nan |= _mm512_mask_cmp_ps_mask(lanes[j], v[j], v[j], _CMP_UNORD_Q);
          }
          if (!with_sig) continue;
          const __m512 threshold = _mm512_set1_ps(job.thresholds[h]);
          const __m512i bit = _mm512_set1_epi64(static_cast<long long>(std::uint64_t{1} << (h & 63)));
          unsigned count = 0;
          for (index_t j = 0; j < 4; ++j) {
            const __mmask16 take = inclusive ? _mm512_mask_cmp_ps_mask(lanes[j], v[j], threshold, _CMP_GE_OQ)
                                             : _mm512_mask_cmp_ps_mask(lanes[j], v[j], threshold, _CMP_GT_OQ);
            if (job.bit_counts) count += _mm_popcnt_u32(take);
            acc[2 * j] = _mm512_mask_or_epi64(acc[2 * j], static_cast<__mmask8>(take), acc[2 * j], bit);
            acc[2 * j + 1] = _mm512_mask_or_epi64(acc[2 * j + 1], static_cast<__mmask8>(take >> 8), acc[2 * j + 1], bit);
          }
          if (job.bit_counts) job.bit_counts[h] += count;
        }
        if (!with_sig) continue;
        std::uint64_t* out = job.signatures + (t0 - job.begin) * words + w;
        for (index_t j = 0; j < 8; ++j) {
          const auto m = static_cast<__mmask8>(j % 2 == 0 ? lanes[j / 2] : lanes[j / 2] >> 8);
          if (!m) break;
          if (words == 1) {
            _mm512_mask_storeu_epi64(out + 8 * j, m, acc[j]);
          } else {
            _mm512_mask_i64scatter_epi64(out + 8 * j * words, m, word_stride, acc[j], 8);
          }
        }
      }
      if (job.sums) {
        for (index_t j = 0; j < 4; ++j) {
          if (!lanes[j]) break;
          _mm512_mask_storeu_ps(job.sums + (t0 - job.begin) + 16 * j, lanes[j], sums[j]);
          nan |= _mm512_mask_cmp_ps_mask(lanes[j], sums[j], sums[j], _CMP_UNORD_Q);
        }
      }
    }
    return nan != 0;
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX512
