// Decode-time mixed precision: which tokens of a tiered_cache stay at full
// precision while tokens arrive and evictions happen.
//
// keep_high(controller, layer, policy, budget, ws) runs `policy` at
// `budget` over the scores the eviction controller tracks for the layer
// (eviction_controller::choose: both tiers compete, nothing is evicted),
// and demotes every high-tier token the choice leaves out. Tokens already
// in the low tier stay there even when chosen (precision only goes down),
// so afterwards the high tier holds at most budget.budget tokens, all of
// them chosen. When the high tier already holds at most budget.budget
// tokens nothing is selected or demoted.
//
// Typical use, per decode step and layer (examples/eval/byte_runner.hpp):
//   controller.make_room(layer, 1, ws);                  // evict the union
//   demoter.keep_high(controller, layer, policy, {high - 1, ...}, ws);
//   ...append the new token (it enters the high tier)...
// and once after prefill compression with {high, ...}.
//
// Checks (std::invalid_argument before anything changes): a shared,
// token-granular policy without +adakv, a budget with sink + recent <=
// budget <= the demoter's capacity, a layer in range. No allocation after
// construction (the workspace must have served the selection once).
#pragma once

#include <vector>

#include "kvcrush/cache/eviction_controller.hpp"
#include "kvcrush/cache/tiered_cache.hpp"
#include "kvcrush/error.hpp"
#include "kvcrush/policy/runtime.hpp"
#include "kvcrush/policy/workspace.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {
inline namespace KVCRUSH_TARGET_NS {

class precision_demoter {
 public:
  // capacity: the most tokens a layer of the cache holds.
  explicit precision_demoter(index_t capacity) : capacity_(capacity) {
    kvcrush::detail::require(capacity >= 0, "precision_demoter: capacity must be >= 0 (got ", capacity, ")");
    chosen_.assign(static_cast<std::size_t>(capacity) + 1, 0);
    demoted_.assign(static_cast<std::size_t>(capacity) + 1, 0);
  }

  index_t capacity() const noexcept { return capacity_; }

  // Returns how many tokens were demoted; last_demoted() lists them.
  template <class W>
  index_t keep_high(eviction_controller<tiered_cache<W>>& controller, index_t layer, const policy_config& policy,
                    const layer_budget& budget, workspace& ws) {
    using kvcrush::detail::require;
    tiered_cache<W>& cache = controller.cache();
    require(layer >= 0 && layer < cache.layers(), "precision_demoter: layer ", layer, " out of range [0, ",
            cache.layers(), ")");
    require(!policy.adakv && !policy.layout.per_head && policy.layout.block_size == 1,
            "precision_demoter: the tiers hold the same tokens for every KV head; give a shared, token-granular "
            "policy without +adakv (got '", policy.name(), "')");
    require(budget.sink >= 0 && budget.recent >= 0 && budget.budget >= budget.sink + budget.recent,
            "precision_demoter: high-precision budget ", budget.budget, " is below sink + recent (",
            budget.sink + budget.recent, ")");
    require(budget.budget <= capacity_, "precision_demoter: high-precision budget ", budget.budget,
            " exceeds the demoter's capacity of ", capacity_, " tokens");
    const index_t n = cache.length(layer);
    require(n <= capacity_, "precision_demoter: the layer holds ", n, " tokens, more than the demoter's capacity (",
            capacity_, ")");
    count_ = 0;
    if (cache.high_tokens(layer) <= budget.budget) return 0;
    index_t chosen = 0;
    controller.choose(layer, policy, budget,
                      {make_matrix_view(chosen_.data(), 1, n + 1), make_vector_view(&chosen, 1)}, ws);
    index_t next = 0;
    for (index_t u = 0; u < n; ++u) {
      const bool stays = next < chosen && chosen_[static_cast<std::size_t>(next)] == u;
      next += stays ? 1 : 0;
      if (!stays && !cache.is_low(layer, u)) demoted_[static_cast<std::size_t>(count_++)] = u;
    }
    cache.demote(layer, make_vector_view<const index_t>(demoted_.data(), count_));
    return count_;
  }

  // The union indices (before the demotion) the last keep_high demoted.
  vector_view<const index_t> last_demoted() const noexcept {
    return make_vector_view<const index_t>(demoted_.data(), count_);
  }

 private:
  index_t capacity_;
  std::vector<index_t> chosen_, demoted_;
  index_t count_ = 0;
};

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
