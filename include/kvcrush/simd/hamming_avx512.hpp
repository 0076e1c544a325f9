// AVX-512 Hamming kernel: vpopcntq on 8 single-word signatures at a time
// (VPOPCNTDQ), narrowed to 32-bit distances; multi-word signatures take one
// masked load of up to 8 words per token.
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
    for (index_t t = 0; t < n; ++t) {
      const std::uint64_t* s = sig + t * words;
      __m512i total = _mm512_setzero_si512();
      for (index_t w = 0; w < words; w += 8) {
        const index_t len = words - w < 8 ? words - w : 8;
        const auto m = static_cast<__mmask8>((1u << len) - 1u);
        const __m512i x = _mm512_xor_si512(_mm512_maskz_loadu_epi64(m, s + w), _mm512_maskz_loadu_epi64(m, anchor + w));
        total = _mm512_add_epi64(total, _mm512_popcnt_epi64(x));
      }
      out[t] = static_cast<std::uint32_t>(avx512_util::sum_u64(total));
    }
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX512
