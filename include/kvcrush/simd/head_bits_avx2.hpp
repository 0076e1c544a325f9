// AVX2 head-major bits: one compare and movemask per 8 tokens of a row (plus
// the running sum over heads when asked), the bracket pass of a head's
// median (bracketed_median.hpp), and a transpose per 512-token tile. In the
// tile layout of head_bits.hpp a head's 64 bytes are byte j = tokens
// 8 j .. 8 j + 7, so a block of 32 heads is two 32 x 32 byte matrices, each
// transposed as four 16 x 16 ones, one per 128-bit lane (AVX2 byte
// interleaves stay within lanes), whose lanes then pair up into 32-head
// columns. A transposed column holds one byte per head; vpmovmskb then
// peels one token for 32 heads at a time, the top bit first, doubling the
// bytes in between.
#pragma once

#include "kvcrush/config.hpp"

#if KVCRUSH_HAS_AVX2
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kvcrush/simd/head_bits.hpp"
#include "kvcrush/simd/partition_avx2.hpp"

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
      const __m256 v = load_and_sum<Mode>(row, sums, at, nan);
      return static_cast<std::uint64_t>(static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(v, t, _CMP_GE_OQ))));
    };
    auto byte_of = [&](index_t i) { return byte_at(bits, stride, head, i); };
    index_t i = 0;
    for (; i + 64 <= n; i += 64) {
      std::uint64_t word = 0;
      for (int k = 0; k < 8; ++k) word |= group(i + 8 * k) << (8 * k);
      std::memcpy(byte_of(i), &word, sizeof word);
    }
    for (; i + 8 <= n; i += 8) *byte_of(i) = static_cast<std::uint8_t>(group(i));
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
      *byte_of(i) = static_cast<std::uint8_t>(last);
      i += 8;
    }
    // The rest of the last tile reads as zero in the transpose.
    for (; i % head_bits_tile_tokens != 0; i += 8) *byte_of(i) = 0;
    return scalar_nan || _mm256_movemask_ps(nan) != 0;
  }

  // One head's pass around a bracket [lo, hi] that likely holds its median
  // (bracketed_median.hpp): how many scores lie above hi, and the scores
  // inside [lo, hi] packed in order into `inside` (room for n + 8 floats),
  // whose exact order statistic gives the median. Sums and NaN checks as
  // row_pass. The head's bits wait for the next head's pass (defer_settle):
  // along the way this pass compares the deferred head's row, if any, with
  // its median, 64 tokens per step of its own, and writes all of its bits.
  // bits and inside_words are not written for this head.
  template <head_sum_mode Mode>
  static bracket_counts bracket_pass(const float* row, index_t n, float lo, float hi, index_t /*head*/,
                                     index_t stride, std::uint16_t* bits, std::uint64_t* /*inside_words*/,
                                     float* inside, float* sums, const deferred_settle& deferred) noexcept {
    const __m256 vlo = _mm256_set1_ps(lo);
    const __m256 vhi = _mm256_set1_ps(hi);
    const __m256 median = _mm256_set1_ps(deferred.threshold);
    __m256 nan = _mm256_setzero_ps();
    __m256i above = _mm256_setzero_si256();  // lanes count -1 per score above hi
    index_t packed = 0;
    // One 8-token group: sums, NaN check, the above count, and the inside
    // scores packed (writing all 8 lanes is safe: packed <= at).
    auto group = [&](index_t at) {
      const __m256 v = load_and_sum<Mode>(row, sums, at, nan);
      const __m256 over = _mm256_cmp_ps(v, vhi, _CMP_GT_OQ);
      const __m256 in = _mm256_andnot_ps(over, _mm256_cmp_ps(v, vlo, _CMP_GE_OQ));
      above = _mm256_sub_epi32(above, _mm256_castps_si256(over));
      const auto mask = static_cast<unsigned>(_mm256_movemask_ps(in));
      _mm256_storeu_ps(inside + packed,
                       _mm256_permutevar8x32_ps(v, impl::partition_avx2::compress_permutation(mask)));
      packed += _mm_popcnt_u32(mask);
    };
    index_t i = 0;
    for (; i + 64 <= n; i += 64) {
      if (deferred.row) compare_word(deferred.row + i, median, byte_at(bits, stride, deferred.head, i));
      for (int k = 0; k < 8; ++k) group(i + 8 * k);
    }
    if (deferred.row) compare_rest(deferred, i, n, stride, bits);
    for (; i + 8 <= n; i += 8) group(i);
    bracket_counts c;
    bool scalar_nan = false;
    for (; i < n; ++i) {
      const float v = row[i];
      float total = v;
      if (Mode == head_sum_mode::first) sums[i] = v;
      if (Mode == head_sum_mode::add || Mode == head_sum_mode::add_last) sums[i] = total = sums[i] + v;
      if (Mode == head_sum_mode::none || Mode == head_sum_mode::add_last) scalar_nan |= total != total;
      c.above += v > hi;
      inside[packed] = v;  // overwritten unless v is inside
      packed += v >= lo && v <= hi;
    }
    c.above += impl::partition_avx2::sum_lanes(above);
    c.inside = packed;
    c.nan = scalar_nan || _mm256_movemask_ps(nan) != 0;
    return c;
  }

  // Defers the bits of a head whose bracket held: the next pass (or
  // settle_deferred) compares its row with the median.
  static deferred_settle defer_settle(const float* row, float threshold, index_t head, const float* /*inside*/,
                                      index_t /*count*/, const std::uint64_t* /*inside_words*/,
                                      std::uint64_t* /*ge_words*/) noexcept {
    return deferred_settle{row, threshold, head, nullptr, nullptr};
  }

  // The deferred head's bits on their own (after the last head).
  static void settle_deferred(const deferred_settle& deferred, index_t n, index_t stride,
                              std::uint16_t* bits) noexcept {
    const __m256 median = _mm256_set1_ps(deferred.threshold);
    index_t i = 0;
    for (; i + 64 <= n; i += 64) compare_word(deferred.row + i, median, byte_at(bits, stride, deferred.head, i));
    compare_rest(deferred, i, n, stride, bits);
  }

 private:
  // Scores [at, at + 8) of a head's row, added into the sums over heads as
  // Mode asks, with the NaN check that Mode needs (see head_bits_row)
  // or-ed into `nan`.
  template <head_sum_mode Mode>
  static __m256 load_and_sum(const float* row, float* sums, index_t at, __m256& nan) noexcept {
    const __m256 v = _mm256_loadu_ps(row + at);
    if (Mode == head_sum_mode::none) nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    if (Mode == head_sum_mode::first) _mm256_storeu_ps(sums + at, v);
    if (Mode == head_sum_mode::add || Mode == head_sum_mode::add_last) {
      const __m256 total = _mm256_add_ps(_mm256_loadu_ps(sums + at), v);
      _mm256_storeu_ps(sums + at, total);
      if (Mode == head_sum_mode::add_last) nan = _mm256_or_ps(nan, _mm256_cmp_ps(total, total, _CMP_UNORD_Q));
    }
    return v;
  }

  // The byte of tokens [i, i + 8) of head `head` (i a multiple of 8).
  static std::uint8_t* byte_at(std::uint16_t* bits, index_t stride, index_t head, index_t i) noexcept {
    const index_t g = i / 16;
    return reinterpret_cast<std::uint8_t*>(bits) + 2 * (((g / 32) * stride + head) * 32 + g % 32) + (i / 8) % 2;
  }

  // Bits of 64 tokens (scores >= median) into the 8 bytes at `out`.
  static void compare_word(const float* scores, __m256 median, std::uint8_t* out) noexcept {
    std::uint64_t word = 0;
    for (int k = 0; k < 8; ++k) {
      const __m256 ge = _mm256_cmp_ps(_mm256_loadu_ps(scores + 8 * k), median, _CMP_GE_OQ);
      word |= static_cast<std::uint64_t>(static_cast<unsigned>(_mm256_movemask_ps(ge))) << (8 * k);
    }
    std::memcpy(out, &word, sizeof word);
  }

  // The deferred head's bits of tokens [from, n), from a multiple of 64, and
  // zero for the rest of the last tile (which the transpose reads).
  static void compare_rest(const deferred_settle& deferred, index_t from, index_t n, index_t stride,
                           std::uint16_t* bits) noexcept {
    const __m256 median = _mm256_set1_ps(deferred.threshold);
    index_t i = from;
    for (; i + 8 <= n; i += 8) {
      const __m256 ge = _mm256_cmp_ps(_mm256_loadu_ps(deferred.row + i), median, _CMP_GE_OQ);
      *byte_at(bits, stride, deferred.head, i) = static_cast<std::uint8_t>(_mm256_movemask_ps(ge));
    }
    if (i < n) {
      unsigned last = 0;
      for (index_t j = i; j < n; ++j) last |= static_cast<unsigned>(deferred.row[j] >= deferred.threshold) << (j - i);
      *byte_at(bits, stride, deferred.head, i) = static_cast<std::uint8_t>(last);
      i += 8;
    }
    for (; i % head_bits_tile_tokens != 0; i += 8) *byte_at(bits, stride, deferred.head, i) = 0;
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#endif  // KVCRUSH_HAS_AVX2
