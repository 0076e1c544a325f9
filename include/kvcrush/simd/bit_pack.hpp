// Bit packing of one-bit token signatures into words (block signatures of
// one head, select/block_signatures.hpp).
#pragma once

#include <cstdint>
#include <type_traits>

#include "kvcrush/config.hpp"
#include "kvcrush/isa.hpp"
#include "kvcrush/tensor_view.hpp"

#if KVCRUSH_HAS_AVX2
#include <immintrin.h>
#endif

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

// One-bit signatures (H = 1) packed 64 to a word: bit m of word k is bit 0
// of token 64 k + m; tokens is a multiple of 64. A loop over the tokens costs
// about as much as the rest of a one-head selection; vector tests of bit 0
// take 8 (AVX-512) or 4 (AVX2, via the sign bits of shifted lanes) tokens at
// once.
template <class Isa>
void pack_one_bit_signatures(const std::uint64_t* KVCRUSH_RESTRICT token_sig, index_t tokens,
                             std::uint64_t* KVCRUSH_RESTRICT out) noexcept {
#if KVCRUSH_HAS_AVX512
  if constexpr (std::is_same_v<Isa, isa::avx512>) {
    const __m512i one = _mm512_set1_epi64(1);
    for (index_t k = 0; k < tokens / 64; ++k) {
      std::uint64_t word = 0;
      for (int m = 0; m < 8; ++m) {
        const __m512i v = _mm512_loadu_si512(token_sig + 64 * k + 8 * m);
        word |= static_cast<std::uint64_t>(_mm512_test_epi64_mask(v, one)) << (8 * m);
      }
      out[k] = word;
    }
    return;
  }
#endif
#if KVCRUSH_HAS_AVX2
  if constexpr (std::is_same_v<Isa, isa::avx2>) {
    for (index_t k = 0; k < tokens / 64; ++k) {
      std::uint64_t word = 0;
      for (int m = 0; m < 16; ++m) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(token_sig + 64 * k + 4 * m));
        const auto bits = static_cast<unsigned>(_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_slli_epi64(v, 63))));
        word |= static_cast<std::uint64_t>(bits) << (4 * m);
      }
      out[k] = word;
    }
    return;
  }
#endif
  for (index_t k = 0; k < tokens / 64; ++k) {
    std::uint64_t word = 0;
    for (int m = 0; m < 64; ++m) word |= (token_sig[64 * k + m] & 1u) << m;
    out[k] = word;
  }
}

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
