// Layer budgets (SPEC 6): uniform, or PyramidKV's linear decrease from the
// first to the last layer (as KVCache-Factory computes it).
#pragma once

#include <vector>

#include "kvcrush/error.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

inline std::vector<index_t> uniform_budgets(index_t budget, index_t layers) {
  detail::require(layers >= 1, "layer budgets: need at least one layer");
  detail::require(budget >= 0, "layer budgets: negative budget");
  return std::vector<index_t>(static_cast<std::size_t>(layers), budget);
}

// Tokens kept per KV head in each of `layers` layers for a prompt of `tokens`
// tokens, average budget `budget` and window `window` (always kept):
//   min = (B - w) / beta, max = 2 (B - w) - min; if max >= n - w then
//   max = n - w and min = 2 (B - w) - max; step = (max - min) / (L - 1);
//   layer l keeps max - l * step tokens outside the window, plus the window.
// Integer division throughout. When n < B nothing is evicted and when
// n < 2 (B - w) every layer gets the uniform B (KVCache-Factory's two early
// exits). A single layer gets B.
inline std::vector<index_t> pyramid_budgets(index_t budget, index_t window, index_t layers, index_t tokens,
                                            index_t beta = 20) {
  detail::require(layers >= 1, "pyramid budgets: need at least one layer (got ", layers, ")");
  detail::require(window >= 0 && tokens >= 0, "pyramid budgets: window and tokens must be >= 0");
  detail::require(budget > window, "pyramid budgets: budget (", budget, ") must exceed the window (", window, ")");
  detail::require(beta >= 1, "pyramid budgets: beta must be >= 1 (got ", beta, ")");
  const index_t rest = budget - window;
  if (tokens < budget || tokens < 2 * rest || layers == 1) return uniform_budgets(budget, layers);
  index_t min_keep = rest / beta;
  index_t max_keep = 2 * rest - min_keep;
  if (max_keep >= tokens - window) {
    max_keep = tokens - window;
    min_keep = 2 * rest - max_keep;
  }
  const index_t step = (max_keep - min_keep) / (layers - 1);
  std::vector<index_t> out(static_cast<std::size_t>(layers));
  for (index_t l = 0; l < layers; ++l) out[l] = max_keep - l * step + window;
  return out;
}

}  // namespace kvcrush
