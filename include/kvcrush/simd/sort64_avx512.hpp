// Sorts 16, 32 or 64 NaN-free floats held in one, two or four AVX-512
// registers, ascending: a bitonic network, so no branch depends on the data.
// Used where a selection needs order statistics of at most 64 values (the
// samples that bracket a median and the last round of the O(N) k-th
// largest). For 64 values the network is 21 dependent stages of about 8
// cycles (a shuffle, min and max side by side, a blend); ranking every value
// against every other issues 256 compares into mask registers, which Intel
// cores run on one port only.
//
// Stage (k, j) of the network compares each element g with g ^ j and sorts
// runs of k ascending where g & k is clear and descending where it is set,
// for k = 2, 4, ..., 16 * Regs and j = k / 2, ..., 1. Partners less than 16
// apart share a register (a lane permute); the others are whole registers.
// NaN would break the min/max comparators' total order; callers screen it.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX512
#include <immintrin.h>

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {
namespace impl::sort64_avx512 {

// Lanes of one register whose index has `bit` set.
constexpr __mmask16 lanes_with(int bit) noexcept {
  unsigned mask = 0;
  for (int i = 0; i < 16; ++i) mask |= (i & bit) != 0 ? 1u << i : 0u;
  return static_cast<__mmask16>(mask);
}

// Lane i ^ J of v in lane i. Partners within a 128-bit lane take an in-lane
// shuffle (one cycle), the others a full permute.
template <int J>
KVCRUSH_ALWAYS_INLINE __m512 partner(__m512 v) noexcept {
  if constexpr (J == 1) return _mm512_shuffle_ps(v, v, 0xb1);
  if constexpr (J == 2) return _mm512_shuffle_ps(v, v, 0x4e);
  if constexpr (J == 4) return _mm512_shuffle_f32x4(v, v, 0xb1);
  if constexpr (J == 8) return _mm512_shuffle_f32x4(v, v, 0x4e);
}

// One stage (K, J) over r[0, Regs), then the stages of the same K with
// smaller J.
template <int Regs, int K, int J>
KVCRUSH_ALWAYS_INLINE void stage(__m512* r) noexcept {
  if constexpr (J >= 16) {
    constexpr int apart = J / 16;
#pragma GCC unroll 4
    for (int q = 0; q < Regs; ++q) {
      if ((q & apart) != 0) continue;  // q is the lower register of its pair
      const bool descending = ((16 * q) & K) != 0;
      const __m512 low = _mm512_min_ps(r[q], r[q + apart]);
      const __m512 high = _mm512_max_ps(r[q], r[q + apart]);
      r[q] = descending ? high : low;
      r[q + apart] = descending ? low : high;
    }
  } else {
    // An ascending run's upper lane of each pair keeps the larger value; a
    // descending run's lower lane does.
    constexpr auto upper = lanes_with(J);
    constexpr auto in_register_direction = static_cast<__mmask16>(K < 16 ? lanes_with(K) : 0);
#pragma GCC unroll 4
    for (int q = 0; q < Regs; ++q) {
      const bool descending = K >= 16 && ((16 * q) & K) != 0;
      const auto take_max = static_cast<__mmask16>(upper ^ in_register_direction ^ (descending ? 0xffffu : 0u));
      const __m512 other = partner<J>(r[q]);
      // min and max side by side, then a blend: a stage's latency is the
      // permute's, one compare's and the blend's.
      // The blend is done on integers: GCC folds a float blend of max into a
      // masked max that waits for the min.
      const __m512i low = _mm512_castps_si512(_mm512_min_ps(r[q], other));
      const __m512i high = _mm512_castps_si512(_mm512_max_ps(r[q], other));
      r[q] = _mm512_castsi512_ps(_mm512_mask_blend_epi32(take_max, low, high));
    }
  }
  if constexpr (J > 1) stage<Regs, K, J / 2>(r);
}

// Sorts r[0, Regs) ascending, lane 0 of r[0] first (Regs = 1, 2 or 4).
template <int Regs, int K = 2>
KVCRUSH_ALWAYS_INLINE void sort(__m512* r) noexcept {
  static_assert(Regs == 1 || Regs == 2 || Regs == 4, "one, two or four registers");
  stage<Regs, K, K / 2>(r);
  if constexpr (K < 16 * Regs) sort<Regs, 2 * K>(r);
}

}  // namespace impl::sort64_avx512
}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX512
