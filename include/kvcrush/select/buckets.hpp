// Bucketed representatives (SPEC 4.3): candidates ordered by (distance,
// position) with a counting sort over the possible distances, then one
// representative per bucket by the chosen rule.
#pragma once

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

inline namespace KVCRUSH_TARGET_NS {
namespace impl {

// Among the items t in [0, n) with flags[t] == candidate (in position
// order), ordered by (dist[t], t), sets flags = mark on the k representatives.
// dist[t] <= max_distance. histogram holds max_distance + 2 entries, order n.
inline void mark_representatives(const std::uint32_t* dist, std::uint8_t* flags, index_t n,
                                 std::uint8_t candidate, std::uint8_t mark, index_t k,
                                 representative_rule rule, index_t max_distance, index_t* histogram,
                                 index_t* order) noexcept {
  if (k <= 0) return;
  for (index_t d = 0; d <= max_distance + 1; ++d) histogram[d] = 0;
  for (index_t t = 0; t < n; ++t) histogram[dist[t] + 1] += flags[t] == candidate;
  for (index_t d = 1; d <= max_distance + 1; ++d) histogram[d] += histogram[d - 1];
  const index_t count = histogram[max_distance + 1];
  // histogram[d] is now where distance d starts; scanning in position order
  // keeps each distance's items sorted by position (a stable counting sort).
  for (index_t t = 0; t < n; ++t) {
    if (flags[t] == candidate) order[histogram[dist[t]]++] = t;
  }
  for (index_t i = 0; i < k; ++i) flags[order[representative_index(rule, i, count, k)]] = mark;
}

}  // namespace impl
}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
