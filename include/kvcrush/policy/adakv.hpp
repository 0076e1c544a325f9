// AdaKV head-wise budget allocation (Feng et al., 2024, as in NVIDIA
// kvpress): one layer budget shared out across KV heads by score.
//
// Every head first gets a floor of floor(alpha * rest) of its own best
// evictable tokens (the "safeguard"); the remaining heads * rest - floors
// slots go to the best remaining (head, token) pairs of all heads together,
// ranked by score with ties broken by (head, position). A head whose
// attention is spread out thus keeps more tokens than a concentrated one,
// and the total stays heads * rest.
#pragma once

#include <cmath>

#include "kvcrush/error.hpp"
#include "kvcrush/select/order_statistics.hpp"
#include "kvcrush/select/signatures.hpp"
#include "kvcrush/select/selection_scratch.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {

// scores: (heads, tokens); evictable tokens [begin, end). rest: the average
// unprotected budget per head. out: (heads) per-head unprotected budgets,
// each in [floor, end - begin], summing to heads * rest.
template <class Isa = isa::active>
void allocate_head_budgets(matrix_view<const float> scores, index_t begin, index_t end, index_t rest, double alpha,
                           vector_view<index_t> out, selection_scratch& ws) {
  using kvcrush::detail::require;
  const index_t heads = scores.extent(0), tokens = scores.extent(1);
  const index_t n = end - begin;
  require(heads >= 1, "adakv: scores need at least one head");
  require(0 <= begin && begin <= end && end <= tokens, "adakv: evictable range [", begin, ", ", end,
          ") outside the ", tokens, " tokens");
  require(rest >= 0 && rest <= n, "adakv: per-head budget ", rest, " outside [0, ", n, "]");
  require(alpha >= 0.0 && alpha <= 1.0, "adakv: alpha must be in [0, 1] (got ", alpha, ")");
  require(out.extent(0) == heads, "adakv: output needs one budget per head");
  const auto s = impl::as_rows(scores, impl::needs_copy(scores)
                                           ? ws.row_copy(static_cast<std::size_t>(heads * tokens))
                                           : nullptr);
  const auto floor_budget = static_cast<index_t>(std::floor(alpha * static_cast<double>(rest)));
  const auto total = static_cast<std::size_t>(heads * n);
  std::uint8_t* taken = ws.flags(total + 1);
  float* remaining = ws.importance(total + 1);
  float* buf_a = ws.floats_a(total + 64);
  float* buf_b = ws.floats_b(total + 64);
  for (std::size_t i = 0; i < total; ++i) taken[i] = 0;
  // 1. The floor: each head's own top floor_budget.
  for (index_t h = 0; h < heads; ++h) {
    if (!impl::mark_top_k<Isa>(s.row(h) + begin, n, floor_budget, taken + h * n, 1, buf_a, buf_b)) {
      kvcrush::detail::throw_invalid("adakv: scores contain NaN");
    }
  }
  // 2. The rest: the best of all remaining pairs, in (head, position) order
  //    so that the top-k tie-break is the (head, position) order.
  index_t count = 0;
  for (index_t h = 0; h < heads; ++h) {
    const float* row = s.row(h) + begin;
    for (index_t t = 0; t < n; ++t) {
      if (!taken[h * n + t]) remaining[count++] = row[t];
    }
  }
  std::uint8_t* picked = ws.flags_b(static_cast<std::size_t>(count) + 1);
  for (index_t i = 0; i < count; ++i) picked[i] = 0;
  const index_t extra = heads * (rest - floor_budget);
  if (!impl::mark_top_k<Isa>(remaining, count, extra, picked, 1, buf_a, buf_b)) {
    kvcrush::detail::throw_invalid("adakv: scores contain NaN");
  }
  index_t i = 0;
  for (index_t h = 0; h < heads; ++h) {
    index_t budget = floor_budget;
    for (index_t t = 0; t < n; ++t) {
      if (!taken[h * n + t]) budget += picked[i++];
    }
    out[h] = budget;
  }
}

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
