// Positions of the kept units: out[j++] = offset + i for every flags[i] != 0,
// in order. What turns a selection's flags into its keep set; over N = 32768
// flags with a quarter kept, the scalar walk spends most of its time on
// branches whose outcome (how many kept in a chunk) cannot be predicted.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kvcrush/config.hpp"
#include "kvcrush/isa.hpp"
#include "kvcrush/simd/bits.hpp"
#include "kvcrush/simd/partition.hpp"
#include "kvcrush/tensor_view.hpp"

#if KVCRUSH_HAS_AVX2
#include <immintrin.h>
#endif

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

// Eight flags at a time, walked by their set bits. Returns the count.
inline index_t kept_positions_scalar(const std::uint8_t* flags, index_t n, index_t offset, index_t* out) noexcept {
  index_t j = 0;
  index_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::uint64_t chunk;
    std::memcpy(&chunk, flags + i, sizeof chunk);
    for (unsigned kept = nonzero_bytes8(chunk); kept != 0; kept &= kept - 1) {
      out[j++] = offset + i + count_trailing_zeros64(kept);
    }
  }
  for (; i < n; ++i) {
    if (flags[i] != 0) out[j++] = offset + i;
  }
  return j;
}


template <class Isa>
index_t kept_positions(const std::uint8_t* flags, index_t n, index_t offset, index_t* out) noexcept {
#if KVCRUSH_HAS_AVX2
  if constexpr (std::is_same_v<Isa, isa::avx2>) {
    // 32 flags tested at once. Each byte of eight flags looks up the lane
    // numbers of its kept flags, packed to the front (the partition
    // kernel's table); two zero-extensions to 64 bits and a base give eight
    // positions. A first pass counts the kept flags, so that every store
    // ending at or before that count is a plain one: lanes past a group's
    // own count are rewritten by the groups after it. The last groups,
    // which would reach past the count, are written position by position
    // (vpmaskmovq costs a dozen cycles per store on Zen 4; it was 60% of an
    // AVX2 top-k selection).
    const index_t vector_end = n / 32 * 32;
    index_t total = 0;
    for (index_t i = 0; i < vector_end; i += 32) {
      const __m256i chunk = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(flags + i));
      total += _mm_popcnt_u32(~static_cast<std::uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(chunk, _mm256_setzero_si256()))));
    }
    index_t j = 0;
    for (index_t i = 0; i < vector_end; i += 32) {
      const __m256i chunk = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(flags + i));
      const auto kept = ~static_cast<std::uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(chunk, _mm256_setzero_si256())));
      for (int g = 0; g < 4; ++g) {
        const unsigned group = kept >> (8 * g) & 0xffu;
        const index_t first = offset + i + 8 * g;
        if (j + 8 <= total) {
          const std::uint64_t lanes = impl::partition_avx2::compress.indices[group];
          const __m256i base = _mm256_set1_epi64x(first);
          const __m256i low = _mm256_cvtepu8_epi64(_mm_cvtsi32_si128(static_cast<int>(lanes)));
          const __m256i high = _mm256_cvtepu8_epi64(_mm_cvtsi32_si128(static_cast<int>(lanes >> 32)));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j), _mm256_add_epi64(base, low));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j + 4), _mm256_add_epi64(base, high));
          j += _mm_popcnt_u32(group);
        } else {
          for (unsigned rest = group; rest != 0; rest &= rest - 1) out[j++] = first + count_trailing_zeros64(rest);
        }
      }
    }
    return j + kept_positions_scalar(flags + vector_end, n - vector_end, offset + vector_end, out + j);
  }
#endif
#if KVCRUSH_HAS_AVX512
  if constexpr (std::is_same_v<Isa, isa::avx512>) {
    // 64 flags tested at once; each group of eight positions packed in a
    // register (compress to memory is slow on Zen 4) and stored with a mask
    // of exactly its count, so nothing is written past the last position.
    index_t j = 0;
    index_t i = 0;
    const __m512i eight = _mm512_set1_epi64(8);
    __m512i at = _mm512_add_epi64(_mm512_set1_epi64(offset), _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
    for (; i + 64 <= n; i += 64) {
      const __m512i chunk = _mm512_loadu_si512(flags + i);
      const std::uint64_t kept = _cvtmask64_u64(_mm512_test_epi8_mask(chunk, chunk));
      for (int g = 0; g < 8; ++g) {
        const auto group = static_cast<__mmask8>(kept >> (8 * g));
        const auto count = static_cast<index_t>(_mm_popcnt_u32(group));
        _mm512_mask_storeu_epi64(out + j, static_cast<__mmask8>((1u << count) - 1u),
                                 _mm512_maskz_compress_epi64(group, at));
        j += count;
        at = _mm512_add_epi64(at, eight);
      }
    }
    return j + kept_positions_scalar(flags + i, n - i, offset + i, out + j);
  }
#endif
  return kept_positions_scalar(flags, n, offset, out);
}

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
