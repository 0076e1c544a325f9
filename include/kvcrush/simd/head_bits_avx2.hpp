// AVX2 head-major bits: one compare and movemask per 8 tokens of a row (plus
// the running sum over heads when asked), and a transpose per 512-token
// tile. In the tile layout of head_bits.hpp a head's 64 bytes are byte j =
// tokens 8 j .. 8 j + 7, so a block of 32 heads is two 32 x 32 byte
// matrices, each transposed as four 16 x 16 ones, one per 128-bit lane
// (AVX2 byte interleaves stay within lanes), whose lanes then pair up into
// 32-head columns. A transposed column holds one byte per
// head; vpmovmskb then peels one token for 32 heads at a time, the top bit
// first, doubling the bytes in between.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX2
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kvcrush/simd/head_bits.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

template <>
struct head_bits_kernel<isa::avx2> {
  // Token-major signatures (words per token) of n tokens from head-major
  // bits. `scratch` holds 32 * stride uint16 (64 bytes per head).
  static void transpose(const std::uint16_t* bits, index_t stride, index_t n, std::uint64_t* signatures, index_t words,
                        std::uint16_t* scratch) noexcept {
    auto* const columns = reinterpret_cast<std::uint8_t*>(scratch);
    const index_t blocks = stride / 32;
    for (index_t t0 = 0; t0 < n; t0 += head_bits_tile_tokens) {
      const auto* tile = reinterpret_cast<const std::uint8_t*>(bits + (t0 / head_bits_tile_tokens) * stride * 32);
      for (index_t b = 0; b < blocks; ++b) {
        for (index_t half = 0; half < 2; ++half) {
          // Heads 32 b .. + 15 (first) and + 16 .. + 31 (second), bytes
          // 32 half .. + 31: each set of 16 rows is two 16 x 16 byte
          // matrices, one per 128-bit lane, transposed in place; the lanes
          // of the two sets then pair up into whole columns.
          __m256i first[16], second[16];
          const std::uint8_t* rows = tile + 32 * b * 64 + 32 * half;
          for (int r = 0; r < 16; ++r) {
            first[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows + r * 64));
            second[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows + (16 + r) * 64));
          }
          transpose_lanes(first);
          transpose_lanes(second);
          // columns: byte group (8 tokens) g of the tile, head h at g * stride + h.
          std::uint8_t* out = columns + 32 * half * stride + 32 * b;
          for (int c = 0; c < 16; ++c) {
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + c * stride),
                                _mm256_permute2x128_si256(first[c], second[c], 0x20));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (16 + c) * stride),
                                _mm256_permute2x128_si256(first[c], second[c], 0x31));
          }
        }
      }
      const index_t len = n - t0 < head_bits_tile_tokens ? n - t0 : head_bits_tile_tokens;
      peel(columns, stride, len, signatures + t0 * words, words);
    }
  }

 private:
  // Transposes the 16 x 16 byte matrix in each 128-bit lane of m[0, 16)
  // (row r = m[r]): four perfect shuffles, each moving the top column bit
  // into the row index and the top row bit into the column index.
  static void transpose_lanes(__m256i* m) noexcept {
    for (int round = 0; round < 4; ++round) {
      __m256i next[16];
      for (int r = 0; r < 8; ++r) {
        next[2 * r] = _mm256_unpacklo_epi8(m[r], m[r + 8]);
        next[2 * r + 1] = _mm256_unpackhi_epi8(m[r], m[r + 8]);
      }
      for (int r = 0; r < 16; ++r) m[r] = next[r];
    }
  }

  // Token-major words from byte-group-major bits: columns[g * stride + h],
  // bit j for token 8 g + j.
  static void peel(const std::uint8_t* columns, index_t stride, index_t n, std::uint64_t* out, index_t words) noexcept {
    const index_t blocks = stride / 32;
    for (index_t g = 0; g * 8 < n; ++g) {
      const index_t len = n - 8 * g < 8 ? n - 8 * g : 8;
      const std::uint8_t* group = columns + g * stride;
      std::uint64_t* tokens = out + 8 * g * words;
      if (blocks == 1) {  // up to 32 heads: one byte per head
        __m256i column = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(group));
        for (index_t j = 7; j >= 0; --j) {
          if (j < len) tokens[j] = static_cast<std::uint32_t>(_mm256_movemask_epi8(column));
          column = _mm256_add_epi8(column, column);
        }
        continue;
      }
      for (index_t w = 0; w < words; ++w) {
        __m256i low = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(group + 64 * w));
        __m256i high = 2 * w + 1 < blocks ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(group + 64 * w + 32))
                                          : _mm256_setzero_si256();
        // Token 7 sits in the top bit of each byte; doubling the bytes
        // brings tokens 6, 5, ... up in turn.
        for (index_t j = 7; j >= 0; --j) {
          if (j < len) {
            tokens[j * words + w] = static_cast<std::uint32_t>(_mm256_movemask_epi8(low)) |
                                    static_cast<std::uint64_t>(static_cast<std::uint32_t>(_mm256_movemask_epi8(high)))
                                        << 32;
          }
          low = _mm256_add_epi8(low, low);
          high = _mm256_add_epi8(high, high);
        }
      }
    }
  }

 public:
  // One head's pass over its row; head_bits_row (head_bits.hpp) picks the mode.
  template <head_sum_mode Mode>
  static bool row_pass(const float* row, index_t n, float threshold, index_t head, index_t stride, std::uint16_t* bits,
                       float* sums) noexcept {
    const __m256 t = _mm256_set1_ps(threshold);
    __m256 nan = _mm256_setzero_ps();
    // One 8-token group: its bits, and the NaN check that this mode needs.
    auto group = [&](index_t at) {
      const __m256 v = _mm256_loadu_ps(row + at);
      if (Mode == head_sum_mode::none) nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
      if (Mode == head_sum_mode::first) _mm256_storeu_ps(sums + at, v);
      if (Mode == head_sum_mode::add || Mode == head_sum_mode::add_last) {
        const __m256 total = _mm256_add_ps(_mm256_loadu_ps(sums + at), v);
        _mm256_storeu_ps(sums + at, total);
        if (Mode == head_sum_mode::add_last) nan = _mm256_or_ps(nan, _mm256_cmp_ps(total, total, _CMP_UNORD_Q));
      }
      return static_cast<std::uint64_t>(static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(v, t, _CMP_GE_OQ))));
    };
    auto* const head_bytes = reinterpret_cast<std::uint8_t*>(bits);
    auto byte_at = [&](index_t i) -> std::uint8_t* {  // the byte of tokens [i, i + 8) of this head
      const index_t g = i / 16;
      return head_bytes + 2 * (((g / 32) * stride + head) * 32 + g % 32) + (i / 8) % 2;
    };
    index_t i = 0;
    for (; i + 64 <= n; i += 64) {
      std::uint64_t word = 0;
      for (int k = 0; k < 8; ++k) word |= group(i + 8 * k) << (8 * k);
      std::memcpy(byte_at(i), &word, sizeof word);
    }
    for (; i + 8 <= n; i += 8) *byte_at(i) = static_cast<std::uint8_t>(group(i));
    bool scalar_nan = false;
    if (i < n) {
      unsigned last = 0;
      for (index_t j = i; j < n; ++j) {
        const float v = row[j];
        float total = v;
        if (Mode == head_sum_mode::first) sums[j] = v;
        if (Mode == head_sum_mode::add || Mode == head_sum_mode::add_last) sums[j] = total = sums[j] + v;
        if (Mode == head_sum_mode::none || Mode == head_sum_mode::add_last) scalar_nan |= total != total;
        last |= static_cast<unsigned>(v >= threshold) << (j - i);
      }
      *byte_at(i) = static_cast<std::uint8_t>(last);
      i += 8;
    }
    // The rest of the last tile reads as zero in the transpose.
    for (; i % head_bits_tile_tokens != 0; i += 8) *byte_at(i) = 0;
    return scalar_nan || _mm256_movemask_ps(nan) != 0;
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX2
