// Head-behaviour signatures (SPEC 4.1): one bit per head and token, set when
// the token is in the head's top half (median mode) or above the head's mean
// (mean mode). Token-major: token i of the range owns words
// [i * words, (i + 1) * words), bit h in word h / 64 at bit h % 64.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "kvcrush/error.hpp"
#include "kvcrush/select/bracketed_median.hpp"
#include "kvcrush/select/options.hpp"
#include "kvcrush/select/order_statistics.hpp"
#include "kvcrush/select/selection_scratch.hpp"
#include "kvcrush/simd/column_counts.hpp"
#include "kvcrush/simd/head_bits.hpp"
#include "kvcrush/simd/head_bits_distances.hpp"
#include "kvcrush/simd/nan_scan.hpp"
#include "kvcrush/simd/signature.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

constexpr index_t signature_words(index_t bits) noexcept { return (bits + 63) / 64; }

inline namespace KVCRUSH_TARGET_NS {
namespace impl {

// Rows of a score matrix as the kernels want them: contiguous along tokens.
struct score_rows {
  const float* data = nullptr;
  index_t row_stride = 0;
  index_t rows = 0;
  index_t tokens = 0;
  const float* row(index_t r) const noexcept { return data + r * row_stride; }
};

// Views with unit token stride are used in place; others (and negative row
// strides) are gathered into `copy`, which must hold rows * tokens floats.
inline score_rows as_rows(matrix_view<const float> m, float* copy) noexcept {
  const index_t rows = m.extent(0);
  const index_t tokens = m.extent(1);
  if (m.stride(1) == 1 || tokens <= 1) {
    return {m.data(), rows > 1 ? m.stride(0) : tokens, rows, tokens};
  }
  for (index_t r = 0; r < rows; ++r) {
    const float* src = m.data() + r * m.stride(0);
    for (index_t t = 0; t < tokens; ++t) copy[r * tokens + t] = src[t * m.stride(1)];
  }
  return {copy, tokens, rows, tokens};
}

inline bool needs_copy(matrix_view<const float> m) noexcept {
  return m.stride(1) != 1 && m.extent(1) > 1;
}

// Largest float not above x, so that (float v > result) <=> (v > x) for every
// float v: the mean threshold compared in float but decided as in double.
inline float float_at_or_below(double x) noexcept {
  auto f = static_cast<float>(x);
  if (static_cast<double>(f) > x) f = std::nextafter(f, -std::numeric_limits<float>::infinity());
  return f;
}

// Mean of v[0, n) in double, summed in eight interleaved lanes combined as a
// fixed tree: one well-defined order, so every build computes the same bits.
inline double canonical_mean(const float* v, index_t n) noexcept {
  double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (index_t i = 0; i < n; ++i) lane[i & 7] += static_cast<double>(v[i]);
  const double total = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
  return total / static_cast<double>(n);
}

// Head h's median threshold over row[0, n): the k-th largest, k = n / 2,
// and the tie quota (see compute_thresholds). Needs n >= 2.
template <class Isa>
float median_threshold(const float* row, index_t n, index_t& ties, float* buf_a, float* buf_b) noexcept {
  const index_t k = n / 2;
  const kth_result kth = kth_largest<Isa>(row, n, k, buf_a, buf_b, /*detect_nan=*/false);
  const index_t quota = k - kth.above;
  ties = kth.equal > quota ? quota : -1;
  return kth.value;
}

// Per-row threshold over tokens [begin, end), and for median mode the tie
// quota: ties[h] >= 0 is how many tokens equal to the threshold head h takes
// (the first ones by position) when more than that many tie; -1 when every
// tie is taken. A row with nothing to take gets a NaN threshold (ordered
// comparisons with NaN are false). NaN in the rows is left to the signature
// pass, which reports it.
template <class Isa>
void compute_thresholds(const score_rows& s, index_t begin, index_t end, threshold_mode mode, float* thresholds,
                        index_t* ties, float* buf_a, float* buf_b) noexcept {
  const index_t n = end - begin;
  for (index_t h = 0; h < s.rows; ++h) {
    const float* row = s.row(h) + begin;
    ties[h] = -1;
    if (mode == threshold_mode::median) {
      thresholds[h] = n >= 2 ? median_threshold<Isa>(row, n, ties[h], buf_a, buf_b)
                             : std::numeric_limits<float>::quiet_NaN();
    } else {
      thresholds[h] = n > 0 ? float_at_or_below(canonical_mean(row, n)) : std::numeric_limits<float>::quiet_NaN();
    }
  }
}

// Token-major signatures from the head-major bits of every head.
template <class Isa>
void head_bits_to_signatures(std::uint16_t* bits, index_t heads, index_t stride, index_t n, std::uint64_t* signatures,
                             std::uint16_t* scratch) noexcept {
  if (heads == 1) {
    simd::expand_one_head<Isa>(bits, stride, n, signatures);
    return;
  }
  if (heads <= 8) {
    simd::transpose_few_heads<Isa>(bits, heads, stride, n, signatures);
    return;
  }
  simd::head_bits_zero_padding(heads, stride, n, bits);
  simd::head_bits_kernel<Isa>::transpose(bits, stride, n, signatures, signature_words(heads), scratch);
}

// Median bits one head at a time, head-major (simd/head_bits.hpp): the
// threshold, then the head's bits (and its share of the sums over heads)
// while its row is still in L2. Ties are left to the caller, as from the
// token-major pass. bits_out receives the bits (in ws.head_bits, followed
// by 32 * stride spare elements). Returns true on NaN.
template <class Isa>
bool median_head_bits(const score_rows& s, index_t begin, index_t end, float* thresholds, index_t* ties, float* sums,
                      selection_scratch& ws, std::uint16_t*& bits_out) noexcept {
  using kernel = simd::head_bits_kernel<Isa>;
  const index_t n = end - begin;
  const index_t stride = simd::head_bits_stride(s.rows);
  const index_t size = simd::head_bits_size(s.rows, n);
  std::uint16_t* bits = ws.head_bits(static_cast<std::size_t>(size + 32 * stride));
  bits_out = bits;
  float* buf_a = ws.floats_a(static_cast<std::size_t>(n + 64));
  float* buf_b = ws.floats_b(static_cast<std::size_t>(n + 64));
  bool nan = false;
  if constexpr (simd::has_bracket_pass<Isa>::value) {
    if (n >= bracketed_median_min_tokens) {
      // ws.order is free until the representatives are ranked.
      auto* words = reinterpret_cast<std::uint64_t*>(ws.order(static_cast<std::size_t>(bracketed_median_words(n))));
      simd::deferred_settle deferred;
      for (index_t h = 0; h < s.rows; ++h) {
        nan |= bracketed_median_bits<Isa>(s.row(h) + begin, n, h, s.rows, stride, bits, sums, thresholds[h], ties[h],
                                          buf_a, buf_b, words, deferred);
      }
      if (deferred.row) kernel::settle_deferred(deferred, n, stride, bits);
      return nan;
    }
  }
  for (index_t h = 0; h < s.rows; ++h) {
    const float* row = s.row(h) + begin;
    ties[h] = -1;
    thresholds[h] = n >= 2 ? median_threshold<Isa>(row, n, ties[h], buf_a, buf_b)
                           : std::numeric_limits<float>::quiet_NaN();
    nan |= simd::head_bits_row<kernel>(row, n, thresholds[h], h, s.rows, stride, bits, sums);
  }
  return nan;
}

// Median signatures through the head-major bits and one transpose to
// token-major words. Returns true on NaN.
template <class Isa>
bool median_signatures_by_head(const score_rows& s, index_t begin, index_t end, float* thresholds, index_t* ties,
                               std::uint64_t* signatures, float* sums, selection_scratch& ws) noexcept {
  std::uint16_t* bits = nullptr;
  const bool nan = median_head_bits<Isa>(s, begin, end, thresholds, ties, sums, ws, bits);
  head_bits_to_signatures<Isa>(bits, s.rows, simd::head_bits_stride(s.rows), end - begin, signatures,
                               bits + simd::head_bits_size(s.rows, end - begin));
  return nan;
}

inline bool has_nan(const score_rows& s, index_t begin, index_t end) noexcept {
  bool nan = false;
  for (index_t h = 0; h < s.rows; ++h) {
    nan |= simd::any_nan(s.row(h) + begin, end - begin);
  }
  return nan;
}

// Median mode sets every token equal to the threshold; where more tie than
// the head may take, keep the first ones by position (the SPEC's order).
// Every head then has exactly n / 2 bits set.
inline void trim_surplus_ties(const score_rows& s, index_t begin, index_t end, const float* thresholds,
                              const index_t* ties, std::uint64_t* signatures, index_t* bit_counts) noexcept {
  const index_t words = signature_words(s.rows);
  for (index_t h = 0; h < s.rows; ++h) {
    if (bit_counts) bit_counts[h] = (end - begin) / 2;
    if (ties[h] < 0) continue;
    const float* row = s.row(h);
    const float threshold = thresholds[h];
    const std::uint64_t bit = std::uint64_t{1} << (h % 64);
    index_t taken = 0;
    for (index_t t = begin; t < end; ++t) {
      if (row[t] == threshold && taken++ >= ties[h]) signatures[(t - begin) * words + h / 64] &= ~bit;
    }
  }
}

// As trim_surplus_ties, on head-major bits (simd/head_bits.hpp).
inline void trim_surplus_ties_head_major(const score_rows& s, index_t begin, index_t end, const float* thresholds,
                                         const index_t* ties, std::uint16_t* bits, index_t* bit_counts) noexcept {
  const index_t stride = simd::head_bits_stride(s.rows);
  for (index_t h = 0; h < s.rows; ++h) {
    if (bit_counts) bit_counts[h] = (end - begin) / 2;
    if (ties[h] < 0) continue;
    const float* row = s.row(h);
    const float threshold = thresholds[h];
    index_t taken = 0;
    for (index_t t = begin; t < end; ++t) {
      if (row[t] == threshold && taken++ >= ties[h]) {
        const index_t g = (t - begin) / 16;
        bits[((g / 32) * stride + h) * 32 + g % 32] &= static_cast<std::uint16_t>(~(1u << ((t - begin) % 16)));
      }
    }
  }
}

// Whether the selection takes its distances from head-major median bits
// (build_head_major_median_bits, then head_major_distances) instead of
// token-major signatures: on ISAs with both kernels, in median mode, in
// token mode and for blocks that tile the 512-token tiles of the bits
// (block sizes that divide 512).
template <class Isa>
constexpr bool has_head_major_distances(threshold_mode mode, index_t heads, index_t block_size = 1) noexcept {
  return simd::has_head_bits<Isa>::value && simd::has_head_bits_distances<Isa>::value &&
         mode == threshold_mode::median && heads <= simd::head_bits_distances_max_heads && block_size >= 1 &&
         block_size <= simd::head_bits_tile_tokens && simd::head_bits_tile_tokens % block_size == 0;
}

// Median bits of tokens [begin, end), head-major, ties trimmed (for the ISAs
// of has_head_major_distances). bit_counts and sums optional, as for
// build_signatures. Returns nullptr on NaN.
template <class Isa>
const std::uint16_t* build_head_major_median_bits(const score_rows& s, index_t begin, index_t end,
                                                  index_t* bit_counts, float* sums, selection_scratch& ws) noexcept {
  if constexpr (simd::has_head_bits<Isa>::value) {
    float* thresholds = ws.thresholds(static_cast<std::size_t>(s.rows));
    index_t* ties = ws.ties(static_cast<std::size_t>(s.rows));
    std::uint16_t* bits = nullptr;
    if (median_head_bits<Isa>(s, begin, end, thresholds, ties, sums, ws, bits)) return nullptr;
    trim_surplus_ties_head_major(s, begin, end, thresholds, ties, bits, bit_counts);
    return bits;
  } else {
    (void)s, (void)begin, (void)end, (void)bit_counts, (void)sums, (void)ws;
    return nullptr;
  }
}

// Bit k of an anchor (signature_words(bits) words, k < bits).
inline std::uint64_t anchor_bit(const std::uint64_t* anchor, index_t k) noexcept {
  return (anchor[k / 64] >> (k % 64)) & 1u;
}

// Each head's anchor pattern for the distance kernels (head_pattern_words
// words per head): bit m of head h's pattern is the anchor bit that token m
// of a tile meets, the bit of position m % b within its block (SPEC 4.4:
// token i of a block owns bits [i * heads, (i + 1) * heads)); b divides 512.
inline void head_anchor_patterns(const std::uint64_t* anchor, index_t heads, index_t b,
                                 std::uint64_t* patterns) noexcept {
  constexpr index_t words = simd::head_pattern_words;
  for (index_t h = 0; h < heads; ++h) {
    std::uint64_t* pattern = patterns + words * h;
    if (b <= 64) {
      // One block's bits, doubled until they fill a word (b divides 64).
      std::uint64_t field = 0;
      for (index_t i = 0; i < b; ++i) field |= anchor_bit(anchor, i * heads + h) << i;
      for (index_t width = b; width < 64; width *= 2) field |= field << width;
      for (index_t w = 0; w < words; ++w) pattern[w] = field;
    } else {
      for (index_t w = 0; w < b / 64; ++w) pattern[w] = 0;
      for (index_t i = 0; i < b; ++i) pattern[i / 64] |= anchor_bit(anchor, i * heads + h) << (i % 64);
      for (index_t w = b / 64; w < words; ++w) pattern[w] = pattern[w % (b / 64)];
    }
  }
}

// Distances to the anchor of units [0, units) (tokens, or blocks of b
// tokens) from build_head_major_median_bits' bits, for the ISAs and block
// sizes of has_head_major_distances. A block's distance is the sum of its
// tokens' distances to the anchor bits of their positions. dist holds
// units * b elements; patterns head_pattern_words * heads words.
template <class Isa>
void head_major_distances(const std::uint16_t* bits, index_t heads, index_t units, index_t b,
                          const std::uint64_t* anchor, std::uint64_t* patterns, std::uint32_t* dist) noexcept {
  if constexpr (simd::has_head_bits_distances<Isa>::value) {
    head_anchor_patterns(anchor, heads, b, patterns);
    simd::head_bits_distances_kernel<Isa>::run(bits, heads, simd::head_bits_stride(heads), units * b, patterns, dist);
    if (b == 1) return;
    // In place: block j reads tokens [j b, j b + b), at or past j.
    for (index_t j = 0; j < units; ++j) {
      std::uint32_t sum = 0;
      for (index_t i = 0; i < b; ++i) sum += dist[j * b + i];
      dist[j] = sum;
    }
  } else {
    (void)bits, (void)heads, (void)units, (void)b, (void)anchor, (void)patterns, (void)dist;
  }
}

// The mean anchor's counts of block signatures (SPEC 4.4) from head-major
// bits: counts[i * heads + h] = how many of the `units` blocks of b tokens
// have head h's bit set at position i, for b dividing 512. Each head's
// tiles are counted column by column (bit m of every tile, into `columns`,
// 512 elements), and the 512 columns fold onto the b positions. Padding
// past the last token is zero.
template <class Isa>
void head_major_block_bit_counts(const std::uint16_t* bits, index_t heads, index_t units, index_t b,
                                 index_t* columns, index_t* counts) noexcept {
  constexpr index_t tile_words = simd::head_bits_tile_tokens / 64;
  const index_t stride = simd::head_bits_stride(heads);
  const index_t tiles = (units * b + simd::head_bits_tile_tokens - 1) / simd::head_bits_tile_tokens;
  // The kernels load words with unaligned vector loads (tile_words is a
  // multiple of their register width), as the distance kernels do.
  const auto* words = reinterpret_cast<const std::uint64_t*>(bits);
  for (index_t h = 0; h < heads; ++h) {
    for (index_t m = 0; m < simd::head_bits_tile_tokens; ++m) columns[m] = 0;
    simd::column_count_kernel<Isa>::run_strided(words + tile_words * h, tiles, tile_words, tile_words * stride,
                                                columns);
    // Fold in place by halves (b is a power of two): each level's adds are
    // independent, where adding block after block onto the first would
    // wait on the previous store every time.
    for (index_t width = simd::head_bits_tile_tokens / 2; width >= b; width /= 2) {
      for (index_t i = 0; i < width; ++i) columns[i] += columns[i + width];
    }
    for (index_t i = 0; i < b; ++i) counts[i * heads + h] = columns[i];
  }
}

// The signature kernel's job over tokens [begin, end) of every row, with
// nothing to compute yet: the caller asks for thresholds, sums or counts.
inline simd::signature_job rows_job(const score_rows& s, index_t begin, index_t end) noexcept {
  simd::signature_job job;
  job.scores = s.data;
  job.row_stride = s.row_stride;
  job.heads = s.rows;
  job.begin = begin;
  job.end = end;
  return job;
}

// Thresholds + the fused pass. signatures: [(end - begin) * words]; sums and
// bit_counts optional. Returns false on NaN.
template <class Isa>
bool build_signatures(const score_rows& s, index_t begin, index_t end, threshold_mode mode,
                      std::uint64_t* signatures, index_t* bit_counts, float* sums, selection_scratch& ws) noexcept {
  float* thresholds = ws.thresholds(static_cast<std::size_t>(s.rows));
  index_t* ties = ws.ties(static_cast<std::size_t>(s.rows));
  const auto n = static_cast<std::size_t>(end - begin);
  const bool median = mode == threshold_mode::median;
  if constexpr (simd::has_head_bits<Isa>::value) {
    if (median) {
      if (median_signatures_by_head<Isa>(s, begin, end, thresholds, ties, signatures, sums, ws)) return false;
      trim_surplus_ties(s, begin, end, thresholds, ties, signatures, bit_counts);
      return true;
    }
  }
  compute_thresholds<Isa>(s, begin, end, mode, thresholds, ties, ws.floats_a(n + 64), ws.floats_b(n + 64));
  simd::signature_job job = rows_job(s, begin, end);
  job.thresholds = thresholds;
  job.inclusive = median;
  job.signatures = signatures;
  job.words = signature_words(s.rows);
  // Median mode sets exactly floor(n / 2) bits per head: no need to count.
  job.bit_counts = median ? nullptr : bit_counts;
  job.sums = sums;
  if (bit_counts && !median) {
    for (index_t h = 0; h < s.rows; ++h) bit_counts[h] = 0;
  }
  if (simd::signature_kernel<Isa>::run(job)) return false;
  if (median) trim_surplus_ties(s, begin, end, thresholds, ties, signatures, bit_counts);
  return true;
}

// out[t] (= 0 when First) + rows[0][t] + ... + rows[K - 1][t], added in that
// order, for t < len. The rows are read, out is written: no row is out.
template <int K, bool First>
inline void add_rows(float* KVCRUSH_RESTRICT out, const float* const* rows, index_t len) noexcept {
  const float* KVCRUSH_RESTRICT r[K];
  for (int k = 0; k < K; ++k) r[k] = rows[k];
  for (index_t t = 0; t < len; ++t) {
    float acc = First ? r[0][t] : out[t] + r[0][t];
    for (int k = 1; k < K; ++k) acc += r[k][t];
    out[t] = acc;
  }
}

// Sums over rows in row order for tokens [begin, end). Returns false on NaN
// (in a score, or an inf - inf on the way: NaN stays NaN under addition, so
// the finished sums tell).
template <class Isa>
bool sum_rows(const score_rows& s, index_t begin, index_t end, float* sums) noexcept {
  // Blocks of 1024 tokens, every row in turn, up to eight rows per sweep:
  // each row streams once, the block's sums stay in L1 and are loaded and
  // stored once per sweep, and each token's are still added in row order.
  // The token-major kernel, whose tiles draw on every row at once, is 2x
  // slower on AVX2. On AVX-512 (Zen 4) it is 5-10% faster at 2-8 heads
  // and keeps them; with more heads it is up to 1.5x slower (rows a
  // multiple of 4 KiB apart put its tile loads in the same cache sets), and
  // at one head it is a copy with overhead.
  if constexpr (std::is_same_v<Isa, isa::avx512>) {
    if (s.rows >= 2 && s.rows <= 8) {
      simd::signature_job job = rows_job(s, begin, end);
      job.sums = sums;
      return !simd::signature_kernel<Isa>::run(job);
    }
  }
  const index_t n = end - begin;
  constexpr index_t block = 1024;
  for (index_t start = 0; start < n; start += block) {
    const index_t len = n - start < block ? n - start : block;
    float* out = sums + start;
    const float* rows[8];
    index_t h = 0;
    while (h < s.rows) {
      const index_t sweep = s.rows - h >= 8 ? 8 : (s.rows - h >= 4 ? 4 : 1);
      for (index_t k = 0; k < sweep; ++k) rows[k] = s.row(h + k) + begin + start;
      if (sweep == 8) {
        h == 0 ? add_rows<8, true>(out, rows, len) : add_rows<8, false>(out, rows, len);
      } else if (sweep == 4) {
        h == 0 ? add_rows<4, true>(out, rows, len) : add_rows<4, false>(out, rows, len);
      } else {
        h == 0 ? add_rows<1, true>(out, rows, len) : add_rows<1, false>(out, rows, len);
      }
      h += sweep;
    }
  }
  return !simd::any_nan(sums, n);
}

}  // namespace impl

// Signatures of the tokens [begin, end) of a (heads, tokens) score matrix.
// out is (end - begin, signature_words(heads)), row-major and contiguous.
// bit_counts, when given, receives per head the number of tokens whose bit
// is set (what the mean/inv_mean anchors need).
template <class Isa = isa::active>
void compute_signatures(matrix_view<const float> scores, index_t begin, index_t end, threshold_mode mode,
                        matrix_view<std::uint64_t> out, selection_scratch& ws,
                        vector_view<index_t> bit_counts = {}) {
  const index_t heads = scores.extent(0);
  const index_t tokens = scores.extent(1);
  const index_t words = signature_words(heads);
  kvcrush::detail::require(heads >= 1, "compute_signatures: scores need at least one head (got ", heads, ")");
  kvcrush::detail::require(0 <= begin && begin <= end && end <= tokens, "compute_signatures: token range [", begin,
                           ", ", end, ") outside [0, ", tokens, ")");
  kvcrush::detail::require(out.extent(0) == end - begin && out.extent(1) == words,
                           "compute_signatures: output must be (", end - begin, ", ", words, "), got (",
                           out.extent(0), ", ", out.extent(1), ")");
  kvcrush::detail::require(out.extent(0) == 0 || (out.stride(1) == 1 && (out.extent(0) <= 1 || out.stride(0) == words)),
                           "compute_signatures: output must be row-major contiguous");
  kvcrush::detail::require(bit_counts.extent(0) == 0 || bit_counts.extent(0) == heads,
                           "compute_signatures: bit_counts must have one entry per head");
  const auto s = impl::as_rows(scores, impl::needs_copy(scores)
                                             ? ws.row_copy(static_cast<std::size_t>(heads * tokens))
                                             : nullptr);
  index_t* counts = nullptr;
  if (bit_counts.extent(0) > 0) counts = ws.bit_counts(static_cast<std::size_t>(heads));
  if (!impl::build_signatures<Isa>(s, begin, end, mode, out.data(), counts, nullptr, ws)) {
    kvcrush::detail::throw_invalid("compute_signatures: scores contain NaN");
  }
  for (index_t h = 0; h < bit_counts.extent(0); ++h) bit_counts[h] = counts[h];
}

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
