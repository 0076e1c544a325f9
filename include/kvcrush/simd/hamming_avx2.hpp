// AVX2 Hamming kernel: popcount by the nibble lookup table (vpshufb) and
// per-word byte sums with vpsadbw; 4 single-word signatures per register,
// and two-word ones (65..128 heads) 8 tokens per step.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX2
#include <immintrin.h>

#include "kvcrush/simd/hamming.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <>
struct hamming_kernel<isa::avx2> {
  static __m256i popcount_words(__m256i x) noexcept {
    const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                           0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low_nibbles = _mm256_set1_epi8(0x0f);
    const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(x, low_nibbles));
    const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(x, 4), low_nibbles));
    return _mm256_sad_epu8(_mm256_add_epi8(lo, hi), _mm256_setzero_si256());
  }

  static void run(const std::uint64_t* KVCRUSH_RESTRICT sig, index_t n, index_t words,
                  const std::uint64_t* KVCRUSH_RESTRICT anchor, std::uint32_t* KVCRUSH_RESTRICT out) noexcept {
    if (words == 2) {
      run_two_words(sig, n, anchor, out);
      return;
    }
    if (words != 1) {
      for (index_t t = 0; t < n; ++t) {
        std::uint64_t d = 0;
        for (index_t w = 0; w < words; ++w) d += static_cast<std::uint64_t>(_mm_popcnt_u64(sig[t * words + w] ^ anchor[w]));
        out[t] = static_cast<std::uint32_t>(d);
      }
      return;
    }
    const __m256i a = _mm256_set1_epi64x(static_cast<long long>(anchor[0]));
    // Gathers the low 32 bits of each 64-bit count into the low 128 bits.
    const __m256i pack = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    index_t t = 0;
    for (; t + 8 <= n; t += 8) {
      const __m256i c0 = popcount_words(_mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sig + t)), a));
      const __m256i c1 = popcount_words(_mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sig + t + 4)), a));
      // Counts fit in 32 bits: interleave the two halves into one vector of 8.
      const __m256i both = _mm256_or_si256(c0, _mm256_slli_epi64(c1, 32));
      const __m256i ordered = _mm256_permutevar8x32_epi32(both, pack);
      // ordered = c0[0..3] (lanes 0-3), c1[0..3] (lanes 4-7)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + t), ordered);
    }
    for (; t < n; ++t) out[t] = static_cast<std::uint32_t>(_mm_popcnt_u64(sig[t] ^ anchor[0]));
  }

  // Two words per token (65..128 heads): 8 tokens per step. unpacklo/hi
  // pair word 0 with word 1 of the same token across two registers, which
  // leaves tokens in the order 0 2 1 3; the final 32-bit permute restores it.
  static void run_two_words(const std::uint64_t* KVCRUSH_RESTRICT sig, index_t n, const std::uint64_t* anchor,
                            std::uint32_t* KVCRUSH_RESTRICT out) noexcept {
    const __m256i a = _mm256_setr_epi64x(static_cast<long long>(anchor[0]), static_cast<long long>(anchor[1]),
                                         static_cast<long long>(anchor[0]), static_cast<long long>(anchor[1]));
    const __m256i order = _mm256_setr_epi32(0, 4, 2, 6, 1, 5, 3, 7);
    auto four = [&](const std::uint64_t* s) {
      const __m256i p0 = popcount_words(_mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)), a));
      const __m256i p1 = popcount_words(_mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 4)), a));
      return _mm256_add_epi64(_mm256_unpacklo_epi64(p0, p1), _mm256_unpackhi_epi64(p0, p1));  // tokens 0 2 1 3
    };
    index_t t = 0;
    for (; t + 8 <= n; t += 8) {
      const __m256i lo = four(sig + 2 * t), hi = four(sig + 2 * t + 8);
      const __m256i both = _mm256_or_si256(lo, _mm256_slli_epi64(hi, 32));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + t), _mm256_permutevar8x32_epi32(both, order));
    }
    for (; t < n; ++t) {
      out[t] = static_cast<std::uint32_t>(_mm_popcnt_u64(sig[2 * t] ^ anchor[0]) + _mm_popcnt_u64(sig[2 * t + 1] ^ anchor[1]));
    }
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX2
