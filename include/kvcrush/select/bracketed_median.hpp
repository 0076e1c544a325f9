// A head's median signature bits in one pass over its scores (SPEC 4.1).
//
// The exact median needs every score once, and the bits need every score
// compared with the finished median: done one after the other, that is two
// passes over the row. Here a sample of the row first gives a bracket
// [lo, hi] that almost surely holds the median. One pass then packs the
// scores of the few tokens inside the bracket, and the exact median is an
// order statistic of those alone. The AVX-512 pass also sets the bits of
// the tokens above hi (they are in the top half whatever the median is) and
// marks the inside tokens, whose bits the median then settles; the AVX2
// pass leaves the bits to a compare of the row with the median from L2.
// Either way that last step runs inside the next head's pass, where it
// overlaps the wait on memory (simd::deferred_settle). When the bracket
// misses (the sample misjudged, or ties fill it), the head takes the
// two-pass route, so the bits are always those of the exact median.
#pragma once

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kvcrush/select/order_statistics.hpp"
#include "kvcrush/simd/head_bits.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {
namespace impl {

// Rows shorter than this take the two-pass route: the sample and the
// bracket's bookkeeping cost more than a second pass over a short row.
constexpr index_t bracketed_median_min_tokens = 2048;

// uint64 words of scratch bracketed_median_bits needs for n tokens: for a
// head and for the one whose settle it defers, the inside marks and the ge
// mask each.
constexpr index_t bracketed_median_words(index_t n) noexcept { return 2 * (2 * (n / 64) + 4); }

// Values at (about) ranks r_hi <= r_lo, largest first, of s[0, m): a
// 64-value subsample brackets them, one partition keeps what lies between,
// and a subsample of that gives the two values. Approximate by design: it
// only has to bracket the row's median with high probability. Returns
// false when the first bracket missed (the caller then asks for the exact
// order statistics).
template <class Isa>
bool approximate_pair(const float* s, index_t m, index_t r_hi, index_t r_lo, float& hi, float& lo,
                      float* scratch) noexcept {
  constexpr index_t sub = 64;
  float pick[sub];
  for (index_t j = 0; j < sub; ++j) pick[j] = s[j * m / sub + m / (2 * sub)];
  // The subsample's ranks around the targets, 2.5 standard deviations out.
  const auto to_sub = [&](index_t r) { return static_cast<double>(r) * sub / static_cast<double>(m); };
  const double spread = 2.5 * std::sqrt(sub * 0.25) + 1.0;
  const auto a = static_cast<index_t>(std::max(0.0, to_sub(r_hi) - spread));
  const auto b = static_cast<index_t>(std::min(static_cast<double>(sub - 1), to_sub(r_lo) + spread));
  float wide_hi, wide_lo;
  small_order_statistics<Isa>(pick, sub, a, b, wide_hi, wide_lo);
  const simd::partition_counts c = simd::partition_kernel<Isa>::template run<false>(s, m, wide_lo, wide_hi, scratch);
  if (r_hi < c.above || r_lo >= c.above + c.inside || c.inside == 0) return false;
  const index_t inside = c.inside;
  if (inside <= sub) {
    small_order_statistics<Isa>(scratch, inside, r_hi - c.above, r_lo - c.above, hi, lo);
    return true;
  }
  for (index_t j = 0; j < sub; ++j) pick[j] = scratch[j * inside / sub];
  const auto x = static_cast<index_t>((r_hi - c.above) * sub / inside);
  const index_t y = std::min<index_t>(((r_lo - c.above) * sub + inside - 1) / inside, sub - 1);
  small_order_statistics<Isa>(pick, sub, x > 0 ? x - 1 : 0, y < sub - 1 ? y + 1 : y, hi, lo);
  return true;
}

// Head `head`'s median bits (threshold: the k-th largest, k = n / 2, bits
// for scores >= it) and its share of the sums over heads, in one pass over
// row[0, n) when the bracket holds; threshold and tie quota as
// median_threshold. values and spare hold n + 64 floats each; words holds
// bracketed_median_words(n). The pass settles the head that `deferred`
// names; the bits of this head's inside tokens are then deferred in turn
// (deferred names it), or set at once when the bracket missed. After the
// last head, settle_deferred finishes. Returns true on NaN, as head_bits_row.
template <class Isa>
bool bracketed_median_bits(const float* row, index_t n, index_t head, index_t heads, index_t stride,
                           std::uint16_t* bits, float* sums, float& threshold, index_t& ties, float* values,
                           float* spare, std::uint64_t* words, simd::deferred_settle& deferred) noexcept {
  using kernel = simd::head_bits_kernel<Isa>;
  const index_t k = n / 2;
  // A sample of 64 runs of 16 consecutive scores (whole cache lines) spread
  // over the row, 1024 scores for long rows and 256 for shorter ones. Its
  // order statistics 2.5 standard deviations either side of the median's
  // rank bracket the median; the bracket holds ~5 / sqrt(sample) of the row.
  const index_t runs = n >= 16384 ? 64 : 16;
  constexpr index_t run = 16;
  const index_t size = runs * run;
  float* sample = spare;
  const index_t step = n / runs;
  for (index_t r = 0; r < runs; ++r)
    for (index_t j = 0; j < run; ++j) sample[r * run + j] = row[r * step + j];
  const sample_bracket ranks = bracketing_ranks(k, n, size);
  const index_t r_hi = ranks.hi_rank, r_lo = ranks.lo_rank;
  float hi, lo;
  if (!approximate_pair<Isa>(sample, size, r_hi, r_lo, hi, lo, spare + size)) {
    hi = kth_largest<Isa>(sample, size, r_hi + 1, spare + size, spare + 2 * size, false).value;
    lo = kth_largest<Isa>(sample, size, r_lo + 1, spare + size, spare + 2 * size, false).value;
  }

  // Consecutive heads alternate between the two halves of words: the
  // deferred head's marks stay intact while this head's pass writes its own.
  std::uint64_t* inside_words = words + (head % 2) * (bracketed_median_words(n) / 2);
  std::uint64_t* ge_words = inside_words + (n + 63) / 64;
  simd::bracket_counts c;
  if (!sums || heads == 1) {
    c = kernel::template bracket_pass<simd::head_sum_mode::none>(row, n, lo, hi, head, stride, bits, inside_words,
                                                                 values, nullptr, deferred);
    if (sums) std::memcpy(sums, row, static_cast<std::size_t>(n) * sizeof(float));
  } else if (head == 0) {
    c = kernel::template bracket_pass<simd::head_sum_mode::first>(row, n, lo, hi, head, stride, bits, inside_words,
                                                                  values, sums, deferred);
  } else if (head + 1 < heads) {
    c = kernel::template bracket_pass<simd::head_sum_mode::add>(row, n, lo, hi, head, stride, bits, inside_words,
                                                                values, sums, deferred);
  } else {
    c = kernel::template bracket_pass<simd::head_sum_mode::add_last>(row, n, lo, hi, head, stride, bits,
                                                                     inside_words, values, sums, deferred);
  }
  // The median lies inside the bracket, and the packed scores leave room for
  // the order statistic's two buffers: settle the inside tokens.
  deferred = simd::deferred_settle{};
  const index_t half = (n + 64) / 2;
  if (!(lo != lo || hi != hi) && c.above < k && k <= c.above + c.inside && c.inside <= half) {
    const kth_result kth = kth_largest<Isa>(values, c.inside, k - c.above, spare, spare + half, false);
    if (!kth.has_nan) {
      threshold = kth.value;
      const index_t above = c.above + kth.above;
      const index_t quota = k - above;
      ties = kth.equal > quota ? quota : -1;
      deferred = kernel::defer_settle(row, threshold, head, values, c.inside, inside_words, ge_words);
      return c.nan;
    }
  }
  // The bracket missed: the exact median of the whole row, then its bits
  // (the sums are done).
  const kth_result kth = kth_largest<Isa>(row, n, k, values, spare, false);
  const index_t quota = k - kth.above;
  ties = kth.equal > quota ? quota : -1;
  threshold = kth.value;
  return kernel::template row_pass<simd::head_sum_mode::none>(row, n, threshold, head, stride, bits, nullptr) ||
         c.nan;
}

}  // namespace impl
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
