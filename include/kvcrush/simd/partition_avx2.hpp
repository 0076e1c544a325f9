// AVX2 partition kernel: 8 floats per vector; the inside lanes are packed
// by vpermps with a permutation looked up from the compare mask.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX2
#include <immintrin.h>

#include <cstdint>
#include <limits>

#include "kvcrush/simd/partition.hpp"
#include "kvcrush/simd/sort64_avx2.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

namespace impl::partition_avx2 {

// For every 8-bit mask, the indices of its set bits packed to the front,
// one byte each: the permutation operand of vpermps, widened on load. (A
// table beats computing it with PDEP/PEXT, which are microcoded on AMD
// before Zen 3.)
struct compress_table {
  alignas(64) std::uint64_t indices[256];
};

constexpr compress_table make_compress_table() noexcept {
  compress_table t{};
  for (unsigned mask = 0; mask < 256; ++mask) {
    std::uint64_t packed = 0;
    int slot = 0;
    for (int lane = 0; lane < 8; ++lane) {
      if (mask >> lane & 1u) packed |= static_cast<std::uint64_t>(lane) << (8 * slot++);
    }
    t.indices[mask] = packed;
  }
  return t;
}

inline constexpr compress_table compress = make_compress_table();

inline __m256i compress_permutation(unsigned mask) noexcept {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(&compress.indices[mask])));
}

inline index_t sum_lanes(__m256i counts) noexcept {
  __m128i q = _mm_add_epi32(_mm256_castsi256_si128(counts), _mm256_extracti128_si256(counts, 1));
  q = _mm_add_epi32(q, _mm_shuffle_epi32(q, 0x4e));
  q = _mm_add_epi32(q, _mm_shuffle_epi32(q, 0xb1));
  return _mm_cvtsi128_si32(q);
}

}  // namespace impl::partition_avx2

template <>
struct partition_kernel<isa::avx2> {
  // Four vectors per step. The above and below counts accumulate in vector
  // lanes (a compare mask is -1 per lane): vmovmskps has one port on
  // common AMD and Intel cores, and the inside mask already needs it.
  // Without the below count (CountBelow = false) the inside mask is the
  // complement of above-or-below, one compare fewer; a NaN then counts as
  // inside, which callers that skip the below count accept (they vouch for
  // NaN-free input, see kth_largest).
  template <bool CountBelow = true>
  static partition_counts run(const float* KVCRUSH_RESTRICT src, index_t n, float lo, float hi,
                              float* KVCRUSH_RESTRICT dst) noexcept {
    const __m256 vlo = _mm256_set1_ps(lo);
    const __m256 vhi = _mm256_set1_ps(hi);
    __m256i above = _mm256_setzero_si256();
    __m256i below = _mm256_setzero_si256();
    index_t inside = 0;
    auto classify = [&](const __m256 v) -> unsigned {
      const __m256 over = _mm256_cmp_ps(v, vhi, _CMP_GT_OQ);
      const __m256 under = _mm256_cmp_ps(v, vlo, _CMP_LT_OQ);
      above = _mm256_sub_epi32(above, _mm256_castps_si256(over));
      if (CountBelow) {
        below = _mm256_sub_epi32(below, _mm256_castps_si256(under));
        const __m256 in = _mm256_and_ps(_mm256_cmp_ps(v, vlo, _CMP_GE_OQ), _mm256_cmp_ps(v, vhi, _CMP_LE_OQ));
        return static_cast<unsigned>(_mm256_movemask_ps(in));
      }
      return ~static_cast<unsigned>(_mm256_movemask_ps(_mm256_or_ps(over, under))) & 0xffu;
    };
    // Writing all 8 lanes is safe: inside <= i, so dst + inside + 8 <= dst + n.
    auto pack = [&](const __m256 v, unsigned mask) {
      _mm256_storeu_ps(dst + inside, _mm256_permutevar8x32_ps(v, impl::partition_avx2::compress_permutation(mask)));
      inside += _mm_popcnt_u32(mask);
    };
    index_t i = 0;
    for (; i + 32 <= n; i += 32) {
      const __m256 v0 = _mm256_loadu_ps(src + i);
      const __m256 v1 = _mm256_loadu_ps(src + i + 8);
      const __m256 v2 = _mm256_loadu_ps(src + i + 16);
      const __m256 v3 = _mm256_loadu_ps(src + i + 24);
      const unsigned m0 = classify(v0), m1 = classify(v1), m2 = classify(v2), m3 = classify(v3);
      pack(v0, m0);
      pack(v1, m1);
      pack(v2, m2);
      pack(v3, m3);
    }
    for (; i + 8 <= n; i += 8) {
      const __m256 v = _mm256_loadu_ps(src + i);
      pack(v, classify(v));
    }
    partition_counts c;
    c.above = impl::partition_avx2::sum_lanes(above);
    c.below = CountBelow ? impl::partition_avx2::sum_lanes(below) : 0;
    c.inside = inside;
    const partition_counts tail = partition_kernel<isa::scalar>::run<CountBelow>(src + i, n - i, lo, hi, dst + c.inside);
    c.above += tail.above;
    c.below += tail.below;
    c.inside += tail.inside;
    return c;
  }

  // The r_a-th and r_b-th largest (0-based) of the NaN-free part of v[0, n),
  // n <= 64. An unreachable rank leaves a and b as they are. NaN-free input
  // (every caller's usual case) is sorted by a network, padded with -inf,
  // which only ever ranks below the n real values; with NaN, every value is
  // ranked instead.
  static void small_order_statistics(const float* v, index_t n, index_t r_a, index_t r_b, float& a,
                                     float& b) noexcept {
    const __m256 minus_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256 r[8];
    __m256 nan = _mm256_setzero_ps();
    for (int i = 0; i < 8; ++i) {
      if (8 * i >= n) {
        r[i] = minus_inf;
        continue;
      }
      // Lanes past n are neither read (maskload) nor kept (blend).
      const __m256i inside = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n - 8 * i)), lane);
      r[i] = _mm256_blendv_ps(minus_inf, _mm256_maskload_ps(v + 8 * i, inside), _mm256_castsi256_ps(inside));
      nan = _mm256_or_ps(nan, _mm256_cmp_ps(r[i], r[i], _CMP_UNORD_Q));
    }
    if (_mm256_movemask_ps(nan) != 0) {
      rank_order_statistics(v, n, r_a, r_b, a, b);
      return;
    }
    impl::sort64_avx2::sort(r);
    alignas(32) float sorted[64];
    for (int i = 0; i < 8; ++i) _mm256_store_ps(sorted + 8 * i, r[i]);
    if (r_a < n) a = sorted[63 - r_a];
    if (r_b < n) b = sorted[63 - r_b];
  }

  // As small_order_statistics, for input with NaN: each lane counts the
  // values greater than its own, and the answer for rank r is the smallest
  // value with at most r greater ones.
  static void rank_order_statistics(const float* v, index_t n, index_t r_a, index_t r_b, float& a,
                                    float& b) noexcept {
    constexpr float inf = std::numeric_limits<float>::infinity();
    alignas(32) float padded[64];
    for (index_t i = 0; i < 64; ++i) padded[i] = i < n ? v[i] : 0.0f;
    const index_t ranks[2] = {r_a, r_b};
    __m256 best[2] = {_mm256_set1_ps(inf), _mm256_set1_ps(inf)};
    index_t values = 0;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    // Two halves of 32 values, so that values and counts stay in registers.
    for (index_t half = 0; 32 * half < n; ++half) {
      __m256 value[4];
      __m256i larger[4];
      for (int q = 0; q < 4; ++q) {
        value[q] = _mm256_load_ps(padded + 32 * half + 8 * q);
        larger[q] = _mm256_setzero_si256();
      }
      for (index_t j = 0; j < n; ++j) {
        const __m256 x = _mm256_broadcast_ss(v + j);
        for (int q = 0; q < 4; ++q) {
          larger[q] = _mm256_sub_epi32(larger[q], _mm256_castps_si256(_mm256_cmp_ps(value[q], x, _CMP_LT_OQ)));
        }
      }
      for (int q = 0; q < 4; ++q) {
        const __m256i left = _mm256_set1_epi32(static_cast<int>(n - 32 * half - 8 * q));
        const __m256 valid = _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(left, lane)),
                                           _mm256_cmp_ps(value[q], value[q], _CMP_ORD_Q));
        values += _mm_popcnt_u32(static_cast<unsigned>(_mm256_movemask_ps(valid)));
        for (int r = 0; r < 2; ++r) {
          const __m256i rank = _mm256_set1_epi32(static_cast<int>(ranks[r]));
          const __m256 take = _mm256_andnot_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(larger[q], rank)), valid);
          best[r] = _mm256_min_ps(best[r], _mm256_blendv_ps(_mm256_set1_ps(inf), value[q], take));
        }
      }
    }
    float* outs[2] = {&a, &b};
    for (int r = 0; r < 2; ++r) {
      if (ranks[r] >= values) continue;
      __m128 m = _mm_min_ps(_mm256_castps256_ps128(best[r]), _mm256_extractf128_ps(best[r], 1));
      m = _mm_min_ps(m, _mm_movehl_ps(m, m));
      m = _mm_min_ss(m, _mm_shuffle_ps(m, m, 1));
      *outs[r] = _mm_cvtss_f32(m);
    }
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
