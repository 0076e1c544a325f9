// Bucketed representatives (SPEC 4.3): candidates ordered by (distance,
// position) with a counting sort over the possible distances, then one
// representative per bucket by the chosen rule.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kvcrush/select/options.hpp"
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
  constexpr void next() noexcept {
    value_ += q_;
    acc_ += r_;
    if (acc_ >= den_) {
      acc_ -= den_;
      ++value_;
    }
  }

 private:
  index_t q_, r_, den_, value_ = 0, acc_ = 0;
};

// Calls f(representative_index(rule, i, n, k)) for i = 0..k-1, in order,
// without the divisions of a call per representative (k can be tens of
// thousands; a 64-bit division costs more than everything else per item).
template <class F>
void for_each_representative_index(representative_rule rule, index_t n, index_t k, F&& f) noexcept(noexcept(f(0))) {
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

}  // namespace impl
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
