// AVX-512 Hamming kernel: vpopcntq on 8 single-word signatures at a time
// (VPOPCNTDQ), narrowed to 32-bit distances. Multi-word signatures stay
// vectorised across tokens: two words by pairing lanes with permutes, more
// by gathering word w of 8 tokens.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX512
#include <immintrin.h>

#include "kvcrush/simd/avx512_util.hpp"
#include "kvcrush/simd/hamming.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <>
struct hamming_kernel<isa::avx512> {
  static void run(const std::uint64_t* KVCRUSH_RESTRICT sig, index_t n, index_t words,
                  const std::uint64_t* KVCRUSH_RESTRICT anchor, std::uint32_t* KVCRUSH_RESTRICT out) noexcept {
    if (words == 1) {
      const __m512i a = _mm512_set1_epi64(static_cast<long long>(anchor[0]));
      index_t t = 0;
      for (; t + 32 <= n; t += 32) {
        const __m512i c0 = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(sig + t), a));
        const __m512i c1 = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(sig + t + 8), a));
        const __m512i c2 = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(sig + t + 16), a));
        const __m512i c3 = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(sig + t + 24), a));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + t), avx512_util::narrow_u64_to_u32(c0));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + t + 8), avx512_util::narrow_u64_to_u32(c1));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + t + 16), avx512_util::narrow_u64_to_u32(c2));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + t + 24), avx512_util::narrow_u64_to_u32(c3));
      }
      for (; t < n; t += 8) {
        const index_t len = n - t < 8 ? n - t : 8;
        const auto tail = static_cast<__mmask8>((1u << len) - 1u);
        const __m512i c = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_maskz_loadu_epi64(tail, sig + t), a));
        _mm256_mask_storeu_epi32(out + t, tail, avx512_util::narrow_u64_to_u32(c));
      }
      return;
    }
    if (words == 2) {
      run_two_words(sig, n, anchor, out);
      return;
    }
    // Any other width: 8 tokens per step, word w of each gathered (stride
    // `words`), so the counts add up lane by lane with no horizontal sums.
    const __m512i lane = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
    const __m512i stride = _mm512_mullo_epi64(lane, _mm512_set1_epi64(words));
    index_t t = 0;
    for (; t + 8 <= n; t += 8) {
      const std::uint64_t* base = sig + t * words;
      __m512i total = _mm512_setzero_si512();
      for (index_t w = 0; w < words; ++w) {
        const __m512i x = _mm512_i64gather_epi64(stride, reinterpret_cast<const long long*>(base + w), 8);
        total = _mm512_add_epi64(total, _mm512_popcnt_epi64(_mm512_xor_si512(x, _mm512_set1_epi64(static_cast<long long>(anchor[w])))));
      }
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + t), avx512_util::narrow_u64_to_u32(total));
    }
    if (t < n) {
      const auto tail = static_cast<__mmask8>((1u << (n - t)) - 1u);
      const std::uint64_t* base = sig + t * words;
      __m512i total = _mm512_setzero_si512();
      for (index_t w = 0; w < words; ++w) {
        const __m512i x = _mm512_mask_i64gather_epi64(_mm512_setzero_si512(), tail, stride,
                                                      reinterpret_cast<const long long*>(base + w), 8);
        total = _mm512_add_epi64(total, _mm512_popcnt_epi64(_mm512_xor_si512(x, _mm512_set1_epi64(static_cast<long long>(anchor[w])))));
      }
      _mm256_mask_storeu_epi32(out + t, tail, avx512_util::narrow_u64_to_u32(total));
    }
  }

  // Two words per token (65..128 heads): 8 tokens are two contiguous
  // vectors; even and odd lanes (word 0 and word 1 of each token) are
  // paired by one two-source permute each and added.
  static void run_two_words(const std::uint64_t* KVCRUSH_RESTRICT sig, index_t n, const std::uint64_t* anchor,
                            std::uint32_t* KVCRUSH_RESTRICT out) noexcept {
    const __m512i a = _mm512_setr_epi64(static_cast<long long>(anchor[0]), static_cast<long long>(anchor[1]),
                                        static_cast<long long>(anchor[0]), static_cast<long long>(anchor[1]),
                                        static_cast<long long>(anchor[0]), static_cast<long long>(anchor[1]),
                                        static_cast<long long>(anchor[0]), static_cast<long long>(anchor[1]));
    const __m512i even = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
    const __m512i odd = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
    index_t t = 0;
    for (; t + 8 <= n; t += 8) {
      const __m512i c0 = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(sig + 2 * t), a));
      const __m512i c1 = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(sig + 2 * t + 8), a));
      const __m512i d = _mm512_add_epi64(_mm512_permutex2var_epi64(c0, even, c1), _mm512_permutex2var_epi64(c0, odd, c1));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + t), avx512_util::narrow_u64_to_u32(d));
    }
    if (t < n) {
      const index_t words_left = 2 * (n - t);  // 2..14
      const auto low = static_cast<__mmask8>(words_left >= 8 ? 0xffu : (1u << words_left) - 1u);
      const auto high = static_cast<__mmask8>(words_left > 8 ? (1u << (words_left - 8)) - 1u : 0u);
      const __m512i c0 = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_maskz_loadu_epi64(low, sig + 2 * t), a));
      const __m512i c1 = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_maskz_loadu_epi64(high, sig + 2 * t + 8), a));
      const __m512i d = _mm512_add_epi64(_mm512_permutex2var_epi64(c0, even, c1), _mm512_permutex2var_epi64(c0, odd, c1));
      _mm256_mask_storeu_epi32(out + t, static_cast<__mmask8>((1u << (n - t)) - 1u), avx512_util::narrow_u64_to_u32(d));
    }
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX512
