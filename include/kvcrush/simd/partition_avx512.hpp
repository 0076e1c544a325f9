// AVX-512 partition kernel: 16 floats per step, packed with vcompressps into
// a register and stored whole (compress-to-memory is microcoded and slow on
// AMD Zen 4); the tail uses masked loads and a masked store.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX512
#include <immintrin.h>

#include <cstdint>
#include <limits>

#include "kvcrush/simd/avx512_util.hpp"
#include "kvcrush/simd/partition.hpp"
#include "kvcrush/simd/sort64_avx512.hpp"

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
    // Four vectors per step. Above/below counts live in vector lanes (a
    // masked add each); the four inside masks are joined into one 64-bit
    // word whose prefix popcounts give the offsets, one trip from mask to
    // general registers per step (avx512_util::compress_store4).
    const __m512i one = _mm512_set1_epi32(1);
    __m512i above_lanes = _mm512_setzero_si512();
    __m512i below_lanes = _mm512_setzero_si512();
    for (; i + 64 <= n; i += 64) {
      __m512 v[4];
      __mmask16 inside[4];
      for (int j = 0; j < 4; ++j) {
        v[j] = _mm512_loadu_ps(src + i + 16 * j);
        above_lanes = _mm512_mask_add_epi32(above_lanes, _mm512_cmp_ps_mask(v[j], vhi, _CMP_GT_OQ), above_lanes, one);
        if (CountBelow) {
          below_lanes = _mm512_mask_add_epi32(below_lanes, _mm512_cmp_ps_mask(v[j], vlo, _CMP_LT_OQ), below_lanes, one);
        }
        inside[j] = _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(v[j], vlo, _CMP_GE_OQ), v[j], vhi, _CMP_LE_OQ);
      }
      // Whole-vector stores are safe: inside <= i, so each store ends before src's end.
      c.inside += avx512_util::compress_store4(v, inside, avx512_util::join4(inside), dst + c.inside);
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

  // The r_a-th and r_b-th largest (0-based) of the NaN-free part of v[0, n),
  // n <= 64. A rank not below the number of NaN-free values leaves its
  // output untouched. NaN-free input (every caller's usual case) is sorted
  // by a network in one, two or four registers, padded with -inf, which only
  // ever ranks below the n real values; with NaN, every value is ranked.
  static void small_order_statistics(const float* v, index_t n, index_t r_a, index_t r_b, float& a,
                                     float& b) noexcept {
    const __m512 minus_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    __m512 r[4];
    __mmask16 nan = 0;
    for (int q = 0; q < 4; ++q) {
      const index_t left = n - 16 * q;
      const auto lanes = static_cast<__mmask16>(left >= 16 ? 0xffffu : (left > 0 ? (1u << left) - 1u : 0u));
      const __m512 x = _mm512_maskz_loadu_ps(lanes, v + 16 * q);
      nan |= _mm512_mask_cmp_ps_mask(lanes, x, x, _CMP_UNORD_Q);
      r[q] = _mm512_mask_mov_ps(minus_inf, lanes, x);
    }
    if (nan != 0) {
      rank_order_statistics(v, n, r_a, r_b, a, b);
      return;
    }
    // Ascending: the r-th largest is the r-th from the top of the sorted registers.
    alignas(64) float sorted[64];
    index_t top;
    if (n <= 16) {
      impl::sort64_avx512::sort<1>(r);
      top = 15;
    } else if (n <= 32) {
      impl::sort64_avx512::sort<2>(r);
      top = 31;
    } else {
      impl::sort64_avx512::sort<4>(r);
      top = 63;
    }
    for (int q = 0; q < 4; ++q) _mm512_store_ps(sorted + 16 * q, r[q]);
    if (r_a < n) a = sorted[top - r_a];
    if (r_b < n) b = sorted[top - r_b];
  }

  // As small_order_statistics, for input with NaN: every value's count of
  // larger values is accumulated in vector lanes at once (n broadcasts, four
  // compare-and-add chains), and the r-th largest is the smallest value with
  // at most r larger ones.
  static void rank_order_statistics(const float* v, index_t n, index_t r_a, index_t r_b, float& a,
                                    float& b) noexcept {
    constexpr float inf = std::numeric_limits<float>::infinity();
    __m512 value[4];
    __m512i larger[4];
    __mmask16 valid[4];
    // Always four blocks (empty ones masked off), so that the arrays live in
    // registers.
    constexpr int blocks = 4;
    for (int q = 0; q < blocks; ++q) {
      const index_t left = n - 16 * q;
      const auto lanes = static_cast<__mmask16>(left >= 16 ? 0xffffu : (left > 0 ? (1u << left) - 1u : 0u));
      value[q] = _mm512_maskz_loadu_ps(lanes, v + 16 * q);
      valid[q] = _mm512_mask_cmp_ps_mask(lanes, value[q], value[q], _CMP_ORD_Q);
      larger[q] = _mm512_setzero_si512();
    }
    const __m512i one = _mm512_set1_epi32(1);
    for (index_t j = 0; j < n; ++j) {
      const __m512 x = _mm512_set1_ps(v[j]);
      for (int q = 0; q < blocks; ++q) {
        larger[q] = _mm512_mask_add_epi32(larger[q], _mm512_mask_cmp_ps_mask(valid[q], value[q], x, _CMP_LT_OQ),
                                          larger[q], one);
      }
    }
    const index_t values = avx512_util::popcount4(valid);
    const index_t ranks[2] = {r_a, r_b};
    float* outs[2] = {&a, &b};
    for (int r = 0; r < 2; ++r) {
      if (ranks[r] >= values) continue;
      const __m512i rank = _mm512_set1_epi32(static_cast<int>(ranks[r]));
      __m512 best = _mm512_set1_ps(inf);
      for (int q = 0; q < blocks; ++q) {
        const __mmask16 take = _mm512_mask_cmp_epi32_mask(valid[q], larger[q], rank, _MM_CMPINT_LE);
        best = _mm512_mask_min_ps(best, take, best, value[q]);
      }
      *outs[r] = avx512_util::min_ps(best);
    }
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
