// AVX2 signature kernel: tiles of 8 tokens. Per head: one load, one compare,
// a movemask, and the 8-bit mask widened to 64-bit lanes to OR the head's
// bit into the 8 token signatures (two ymm accumulators of 4 words).
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX2
#include <immintrin.h>

#include "kvcrush/simd/signature.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <>
struct signature_kernel<isa::avx2> {
  static bool run(const signature_job& job) noexcept {
    const __m256i lane_index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i select_lo = _mm256_setr_epi64x(1, 2, 4, 8);
    const __m256i select_hi = _mm256_setr_epi64x(16, 32, 64, 128);
    const bool with_sig = job.signatures != nullptr;
    unsigned nan = 0;
    for (index_t t0 = job.begin; t0 < job.end; t0 += 8) {
      const index_t len = job.end - t0 < 8 ? job.end - t0 : 8;
      const unsigned tail_bits = (1u << len) - 1u;
      const __m256i load_mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(len)), lane_index);
      __m256 sum = _mm256_setzero_ps();
      const index_t word_count = with_sig ? job.words : 1;
      for (index_t w = 0; w < word_count; ++w) {
        __m256i acc_lo = _mm256_setzero_si256();
        __m256i acc_hi = _mm256_setzero_si256();
        const index_t h_begin = with_sig ? w * 64 : 0;
        const index_t h_end = with_sig ? (h_begin + 64 < job.heads ? h_begin + 64 : job.heads) : job.heads;
        for (index_t h = h_begin; h < h_end; ++h) {
          const float* row = job.scores + h * job.row_stride + t0;
          const __m256 v = len == 8 ? _mm256_loadu_ps(row) : _mm256_maskload_ps(row, load_mask);
          if (job.sums) {
            sum = h == 0 ? v : _mm256_add_ps(sum, v);
          } else {
            nan |= static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
          }
          if (!with_sig) continue;
          const __m256 threshold = _mm256_set1_ps(job.thresholds[h]);
          const __m256 passed = job.inclusive ? _mm256_cmp_ps(v, threshold, _CMP_GE_OQ)
                                              : _mm256_cmp_ps(v, threshold, _CMP_GT_OQ);
          const unsigned take = static_cast<unsigned>(_mm256_movemask_ps(passed)) & tail_bits;
          if (job.bit_counts) job.bit_counts[h] += _mm_popcnt_u32(take);
          const __m256i take_vec = _mm256_set1_epi64x(take);
          const __m256i bit = _mm256_set1_epi64x(static_cast<long long>(std::uint64_t{1} << (h & 63)));
          acc_lo = _mm256_or_si256(acc_lo, _mm256_and_si256(_mm256_cmpeq_epi64(_mm256_and_si256(take_vec, select_lo), select_lo), bit));
          acc_hi = _mm256_or_si256(acc_hi, _mm256_and_si256(_mm256_cmpeq_epi64(_mm256_and_si256(take_vec, select_hi), select_hi), bit));
        }
        if (!with_sig) continue;
        std::uint64_t* out = job.signatures + (t0 - job.begin) * job.words + w;
        if (job.words == 1 && len == 8) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), acc_lo);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 4), acc_hi);
        } else {
          alignas(32) std::uint64_t lanes[8];
          _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc_lo);
          _mm256_store_si256(reinterpret_cast<__m256i*>(lanes + 4), acc_hi);
          for (index_t i = 0; i < len; ++i) out[i * job.words] = lanes[i];
        }
      }
      if (job.sums) {
        if (len == 8) {
          _mm256_storeu_ps(job.sums + (t0 - job.begin), sum);
        } else {
          _mm256_maskstore_ps(job.sums + (t0 - job.begin), load_mask, sum);
        }
        nan |= static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(sum, sum, _CMP_UNORD_Q)));
      }
    }
    return nan != 0;
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX2
