// Column bit counts (a "positional popcount"): counts[w * 64 + k] += how
// many of n rows of `words` 64-bit words have bit k of word w set (rows
// consecutive, or row_stride words apart with run_strided). Block
// mode's mean anchor needs one count per bit of signatures that are
// hundreds of bits wide, so counting set bits one at a time would cost
// more than the rest of the selection.
//
// Every kernel keeps eight byte-wide counters per 64-bit word, one per bit
// position modulo 8: byte j of acc[k] counts bit 8j + k. A byte holds at
// most 255, so rows go in chunks of 255 and the bytes are flushed into the
// index_t counts after each chunk. Integer sums: every ISA gives the same
// counts.
#pragma once

#include <cstdint>

#include "kvcrush/isa.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace simd {

// Rows per chunk: the most a byte counter can count.
constexpr index_t column_count_chunk = 255;

// Adds the eight byte counters of one word (acc[0..8), as 64-bit lanes) to
// the 64 counts of that word.
inline void flush_byte_counters(const std::uint64_t* acc, index_t* counts) noexcept {
  for (int k = 0; k < 8; ++k) {
    for (int j = 0; j < 8; ++j) counts[8 * j + k] += static_cast<index_t>((acc[k] >> (8 * j)) & 0xffu);
  }
}

template <class Isa>
struct column_count_kernel {
  static_assert(isa::compiled_v<Isa>,
                "column count kernel requested for an ISA this translation unit is not compiled for");
};

template <>
struct column_count_kernel<isa::scalar> {
  static void run(const std::uint64_t* KVCRUSH_RESTRICT rows, index_t n, index_t words,
                  index_t* KVCRUSH_RESTRICT counts) noexcept {
    run_columns(rows, n, words, words, 0, counts);
  }

  // Rows that start row_stride words apart (row_stride >= words).
  static void run_strided(const std::uint64_t* KVCRUSH_RESTRICT rows, index_t n, index_t words, index_t row_stride,
                          index_t* KVCRUSH_RESTRICT counts) noexcept {
    run_columns(rows, n, words, row_stride, 0, counts);
  }

  // Only words [first_word, words) of each row: the SIMD kernels' tails.
  static void run_columns(const std::uint64_t* KVCRUSH_RESTRICT rows, index_t n, index_t words, index_t row_stride,
                          index_t first_word, index_t* KVCRUSH_RESTRICT counts) noexcept {
    constexpr std::uint64_t ones = 0x0101010101010101ull;
    for (index_t w = first_word; w < words; ++w) {
      for (index_t start = 0; start < n; start += column_count_chunk) {
        const index_t end = n - start < column_count_chunk ? n : start + column_count_chunk;
        std::uint64_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (index_t r = start; r < end; ++r) {
          const std::uint64_t x = rows[r * row_stride + w];
          for (int k = 0; k < 8; ++k) acc[k] += (x >> k) & ones;
        }
        flush_byte_counters(acc, counts + w * 64);
      }
    }
  }
};

}  // namespace simd
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush

#include "kvcrush/simd/column_counts_avx2.hpp"
#include "kvcrush/simd/column_counts_avx512.hpp"
