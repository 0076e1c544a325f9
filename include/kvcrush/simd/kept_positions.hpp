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

#if KVCRUSH_HAS_AVX2
// For each 4-bit mask of kept lanes: the 32-bit lane indices that move the
// kept 64-bit lanes to the front (for vpermd), and the store mask of their
// count.
struct kept_lane_tables {
  alignas(32) std::int32_t pack[16][8];
  alignas(32) std::int64_t store[5][4];
};

constexpr kept_lane_tables make_kept_lane_tables() noexcept {
  kept_lane_tables t{};
  for (int mask = 0; mask < 16; ++mask) {
    int kept = 0;
    for (int lane = 0; lane < 4; ++lane) {
      if (mask >> lane & 1) {
        t.pack[mask][2 * kept] = 2 * lane;
        t.pack[mask][2 * kept + 1] = 2 * lane + 1;
        ++kept;
      }
    }
  }
  for (int count = 0; count <= 4; ++count)
    for (int lane = 0; lane < 4; ++lane) t.store[count][lane] = lane < count ? -1 : 0;
  return t;
}

inline constexpr kept_lane_tables kept_lanes = make_kept_lane_tables();
#endif

template <class Isa>
index_t kept_positions(const std::uint8_t* flags, index_t n, index_t offset, index_t* out) noexcept {
#if KVCRUSH_HAS_AVX2
  if constexpr (std::is_same_v<Isa, isa::avx2>) {
    // 32 flags tested at once, their positions packed four at a time by a
    // table permutation and stored with a mask of exactly their count.
    index_t j = 0;
    index_t i = 0;
    const __m256i four = _mm256_set1_epi64x(4);
    __m256i at = _mm256_add_epi64(_mm256_set1_epi64x(offset), _mm256_setr_epi64x(0, 1, 2, 3));
    for (; i + 32 <= n; i += 32) {
      const __m256i chunk = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(flags + i));
      const auto kept = ~static_cast<std::uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(chunk, _mm256_setzero_si256())));
      for (int g = 0; g < 8; ++g) {
        const unsigned group = kept >> (4 * g) & 15u;
        const auto count = static_cast<index_t>(_mm_popcnt_u32(group));
        const __m256i packed = _mm256_permutevar8x32_epi32(
            at, _mm256_load_si256(reinterpret_cast<const __m256i*>(kept_lanes.pack[group])));
        _mm256_maskstore_epi64(reinterpret_cast<long long*>(out + j),
                               _mm256_load_si256(reinterpret_cast<const __m256i*>(kept_lanes.store[count])), packed);
        j += count;
        at = _mm256_add_epi64(at, four);
      }
    }
    return j + kept_positions_scalar(flags + i, n - i, offset + i, out + j);
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
