// Bucketed representatives (SPEC 4.3): candidates ordered by (distance,
// position) with a counting sort over the possible distances, then one
// representative per bucket by the chosen rule.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kvcrush/select/options.hpp"
#include "kvcrush/simd/byte_masks.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

// Index into the ordered candidate list of the i-th of k representatives
// among n candidates (0 <= i < k <= n).
constexpr index_t representative_index(representative_rule rule, index_t i, index_t n, index_t k) noexcept {
  switch (rule) {
    case representative_rule::bucket_start:
      return i * n / k;
    case representative_rule::bucket_center: {
      const index_t lo = i * n / k;
      const index_t next = (i + 1) * n / k;  // lo_k = n
      return lo + (next - lo - 1) / 2;
    }
    case representative_rule::linspace:
      return k == 1 ? 0 : i * (n - 1) / (k - 1);
    case representative_rule::stride:
      return i * (n / k);
  }
  return 0;
}

// floor(i * num / den) for i = 0, 1, 2, ... with one division in all: num =
// q * den + r, so the value grows by q each step plus a carry whenever the
// running remainder i * r passes a multiple of den.
class floor_ratio_walk {
 public:
  constexpr floor_ratio_walk(index_t num, index_t den) noexcept : q_(num / den), r_(num % den), den_(den) {}
  constexpr index_t value() const noexcept { return value_; }
  // Without a branch: the carry comes every den / r steps or so, a pattern
  // the branch predictor misses about as often as it hits.
  constexpr void next() noexcept {
    acc_ += r_;
    const bool carry = acc_ >= den_;
    value_ += q_ + carry;
    acc_ = carry ? acc_ - den_ : acc_;  // a conditional move: a short dependency chain
  }

 private:
  index_t q_, r_, den_, value_ = 0, acc_ = 0;
};

// Calls f(representative_index(rule, i, n, k)) for i = 0..k-1, in order,
// without the divisions of a call per representative (k can be tens of
// thousands; a 64-bit division costs more than everything else per item).
// f is taken by value, so that a stateful f's state can live in registers.
template <class F>
void for_each_representative_index(representative_rule rule, index_t n, index_t k, F f) noexcept(noexcept(f(0))) {
  if (k <= 0) return;
  switch (rule) {
    case representative_rule::stride: {
      const index_t step = n / k;
      for (index_t i = 0; i < k; ++i) f(i * step);
      return;
    }
    case representative_rule::linspace: {
      if (k == 1) {
        f(0);
        return;
      }
      floor_ratio_walk p(n - 1, k - 1);
      for (index_t i = 0; i < k; ++i, p.next()) f(p.value());
      return;
    }
    case representative_rule::bucket_start:
    case representative_rule::bucket_center: {
      floor_ratio_walk lo(n, k);
      for (index_t i = 0; i < k; ++i) {
        const index_t start = lo.value();
        lo.next();
        f(rule == representative_rule::bucket_start ? start : start + (lo.value() - start - 1) / 2);
      }
      return;
    }
  }
}

// Entries of the histogram buffer mark_representatives needs.
constexpr std::size_t representative_histogram_size(index_t max_distance) noexcept {
  return 4 * (static_cast<std::size_t>(max_distance) + 2);
}

inline namespace KVCRUSH_TARGET_NS {
namespace impl {

// Among the items t in [0, n) with flags[t] == candidate (in position
// order), ordered by (dist[t], t), sets flags = mark on the k representatives.
// dist[t] <= max_distance. histogram holds representative_histogram_size
// (max_distance) entries, order n.
//
// The counting sort runs on four contiguous quarters of [0, n) at once, each
// with its own counters: one counter per distance would chain every step to
// the previous one through memory (consecutive tokens often share a
// distance). Quarter c's items of distance d land after those of quarters
// < c, so the order is the same stable (distance, position) order.
inline void mark_representatives(const std::uint32_t* dist, std::uint8_t* flags, index_t n,
                                 std::uint8_t candidate, std::uint8_t mark, index_t k,
                                 representative_rule rule, index_t max_distance, index_t* histogram,
                                 index_t* order) noexcept {
  if (k <= 0) return;
  constexpr index_t parts = 4;
  const index_t bins = max_distance + 2;
  const index_t quarter = (n + parts - 1) / parts;
  index_t* h[parts] = {histogram, histogram + bins, histogram + 2 * bins, histogram + 3 * bins};
  for (index_t i = 0; i < parts * bins; ++i) histogram[i] = 0;
  index_t end[parts];
  for (index_t c = 0; c < parts; ++c) end[c] = std::min(n, (c + 1) * quarter);
  // Counts per quarter and distance (the last quarter may be short).
  for (index_t i = 0; i < quarter; ++i) {
    for (index_t c = 0; c < parts; ++c) {
      const index_t t = c * quarter + i;
      if (t < end[c]) h[c][dist[t]] += flags[t] == candidate;
    }
  }
  // Start of each (quarter, distance) run in the sorted order.
  index_t count = 0;
  for (index_t d = 0; d <= max_distance; ++d) {
    for (index_t c = 0; c < parts; ++c) {
      const index_t items = h[c][d];
      h[c][d] = count;
      count += items;
    }
  }
  for (index_t i = 0; i < quarter; ++i) {
    for (index_t c = 0; c < parts; ++c) {
      const index_t t = c * quarter + i;
      if (t < end[c] && flags[t] == candidate) order[h[c][dist[t]]++] = t;
    }
  }
  for_each_representative_index(rule, count, k, [&](index_t p) noexcept { flags[order[p]] = mark; });
}

// Entries (index_t) of the scratch mark_representatives_by_class needs.
constexpr std::size_t representative_class_scratch(index_t n) noexcept {
  return static_cast<std::size_t>(3 * (n / 64) + 8) + 2 * (static_cast<std::size_t>(n + 128 + 7) / 8);
}

// Whether mark_representatives_by_class handles these sizes: a pass per
// distance class beats the counting sort up to about 100 classes (at H = 128
// the two cost the same: buckets rows of bench_kernels), and needs a block
// of items to pay for itself.
template <class Isa>
constexpr bool uses_class_passes(index_t n, index_t max_distance) noexcept {
  return simd::has_byte_class_pass<Isa>() && max_distance <= 100 && n >= 64;
}

#if KVCRUSH_HAS_AVX2
// The same representatives as mark_representatives, found without sorting:
// the representatives' places in the (distance, position) order are known
// before any item is placed (for_each_representative_index), so they are
// set as bits of a map over that order. Then one pass per distance class
// over the items in position order: class d's j-th candidate sits at place
// start_d + j, so a block of 64 items takes its class members' bits of the
// map, a window of popcount(members) places, and pdep spreads them onto the
// members. No data-dependent branch and no scatter; a pass costs a few
// instructions per 64 items, and only the classes between the smallest and
// largest candidate distance are passed over. scratch holds
// representative_class_scratch(n) entries.
template <class Isa>
void mark_representatives_by_class(const std::uint32_t* dist, std::uint8_t* flags, index_t n, std::uint8_t candidate,
                                   std::uint8_t mark, index_t k, representative_rule rule, index_t* scratch) noexcept {
  if (k <= 0) return;
  const index_t blocks = (n + 63) / 64;
  auto* members = reinterpret_cast<std::uint64_t*>(scratch);  // candidates per block
  std::uint64_t* marks = members + blocks;
  std::uint64_t* places = marks + blocks;  // the representatives' places, as bits
  auto* classes = reinterpret_cast<std::uint8_t*>(places + blocks + 2);
  // Distances as bytes (the tail padded with a value no class takes), and
  // their range: classes outside it are empty. (Simple loops, so that the
  // compiler vectorises them.)
  for (index_t t = 0; t < n; ++t) classes[t] = static_cast<std::uint8_t>(dist[t]);
  for (index_t t = n; t < 64 * blocks; ++t) classes[t] = 255;
  std::uint8_t smallest = 255, largest = 0;
  for (index_t t = 0; t < n; ++t) {
    smallest = std::min(smallest, classes[t]);
    largest = std::max(largest, classes[t]);
  }
  index_t count = 0;
  for (index_t b = 0; b < blocks; ++b) {
    const index_t len = n - 64 * b < 64 ? n - 64 * b : 64;
    if (len == 64) {
      members[b] = simd::equal_bytes64<Isa>(flags + 64 * b, candidate);
    } else {
      std::uint8_t tail[64];
      for (index_t j = 0; j < 64; ++j) tail[j] = j < len ? flags[64 * b + j] : static_cast<std::uint8_t>(~candidate);
      members[b] = simd::equal_bytes64<Isa>(tail, candidate);
    }
    marks[b] = 0;
    count += simd::popcount64_fast(members[b]);
  }
  if (count == 0) return;
  // The places as bytes first (plain stores: setting bits would chain each
  // place to the previous one through the same word), then packed.
  std::uint8_t* place_bytes = classes + 64 * blocks;
  std::memset(place_bytes, 0, static_cast<std::size_t>(count / 64 + 2) * 64);
  for_each_representative_index(rule, count, k, [place_bytes](index_t p) noexcept { place_bytes[p] = 1; });
  for (index_t w = 0; w < count / 64 + 2; ++w) places[w] = simd::equal_bytes64<Isa>(place_bytes + 64 * w, 1);
  index_t place = 0;
  for (unsigned d = smallest; d <= largest && place < count; ++d) {
    const auto value = static_cast<std::uint8_t>(d);
    for (index_t b = 0; b < blocks; ++b) {
      const std::uint64_t in_class = simd::equal_bytes64<Isa>(classes + 64 * b, value) & members[b];
      const index_t shift = place % 64;
      // The 64 places from `place` on; (x << 1) << (63 - shift) is x << (64 -
      // shift) without the undefined shift by 64.
      const std::uint64_t window = places[place / 64] >> shift | (places[place / 64 + 1] << 1) << (63 - shift);
      marks[b] |= simd::deposit_bits64(window, in_class);
      place += simd::popcount64_fast(in_class);
    }
  }
  for (index_t b = 0; b < blocks; ++b) {
    const index_t len = n - 64 * b < 64 ? n - 64 * b : 64;
    simd::set_bytes64<Isa>(flags + 64 * b, marks[b], mark, len);
  }
}
#endif

// The representatives by whichever of the two is faster here.
template <class Isa>
void select_representatives(const std::uint32_t* dist, std::uint8_t* flags, index_t n, std::uint8_t candidate,
                            std::uint8_t mark, index_t k, representative_rule rule, index_t max_distance,
                            index_t* histogram, index_t* scratch) noexcept {
#if KVCRUSH_HAS_AVX2
  if constexpr (simd::has_byte_class_pass<Isa>()) {
    if (uses_class_passes<Isa>(n, max_distance)) {
      mark_representatives_by_class<Isa>(dist, flags, n, candidate, mark, k, rule, scratch);
      return;
    }
  }
#endif
  mark_representatives(dist, flags, n, candidate, mark, k, rule, max_distance, histogram, scratch);
}

}  // namespace impl
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
