// Decode-time eviction for the engine: kvcrush's eviction_controller holds
// every layer's cache to a token budget while the engine runs.
//
// Before each token, make_room() evicts down to the budget in any layer
// that would otherwise exceed budget + slack (one selection per slack new
// tokens, per token with slack 0); after each layer's attention, the controller observes the
// probabilities, which is where H2O's sums and SnapKV's/TOVA's window of
// attention rows come from. The policy is any policy_config the controller
// takes: every base policy and +kvcrush, not +adakv (its head-wise budgets
// leave KV heads with different lengths, which decode-time eviction cannot
// follow; see eviction_controller.hpp).
#pragma once

#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>

#include "attention_observer.hpp"
#include "engine.hpp"
#include "kv_cache.hpp"
#include "kvcrush/cache/eviction_controller.hpp"
#include "kvcrush/policy/runtime.hpp"

namespace kvcrush_llama {

struct eviction_plan {
  kvcrush::policy_config policy;
  kvcrush::layer_budget budget;  // every layer's
  index_t slack = 0;
  index_t window = 16;  // attention rows the controller keeps (SnapKV's window)
};

// The budget a plan gives, with StreamingLLM's rule: it ranks nothing, so
// all of the budget after the sink is recent tokens.
inline kvcrush::layer_budget plan_budget(const kvcrush::policy_config& policy, index_t budget, index_t sink,
                                         index_t recent) {
  if (policy.base == kvcrush::base_policy::streaming && !policy.kvcrush) return {budget, sink, budget - sink};
  return {budget, sink, recent};
}

// The engine's cache must hold budget + slack rows per layer at most.
inline index_t eviction_capacity(const eviction_plan& plan) { return plan.budget.budget + plan.slack; }

class decode_eviction : public attention_observer {
 public:
  // Evicts in every layer that needs room for one more token.
  virtual void before_token(kvcrush::workspace& ws) = 0;
  // Selections run so far, over all layers.
  virtual index_t selections() const = 0;
  // The most rows any layer held after a token was appended.
  index_t peak_rows() const noexcept { return peak_; }

 protected:
  void track(const attention_event& event) {
    for (index_t h = 0; h < event.head_lengths.extent(0); ++h) peak_ = std::max(peak_, event.head_lengths[h]);
  }

 private:
  index_t peak_ = 0;
};

namespace detail {

template <class Cache>
class controlled_cache final : public decode_eviction {
 public:
  controlled_cache(Cache& cache, const kvcrush::eviction_settings& settings) : controller_(cache, settings) {}

  void before_token(kvcrush::workspace& ws) override {
    for (index_t l = 0; l < controller_.layers(); ++l) controller_.make_room(l, 1, ws);
  }

  index_t selections() const override {
    index_t total = 0;
    for (index_t l = 0; l < controller_.layers(); ++l) total += controller_.selections(l);
    return total;
  }

  void on_attention(const attention_event& event) override {
    controller_.observe(event.layer, event.probabilities);
    track(event);
  }

 private:
  kvcrush::eviction_controller<Cache> controller_;
};

}  // namespace detail

// A controller over the engine's cache (contiguous or paged store). The
// engine must outlive it; the caller sets it as the engine's observer.
// Throws std::invalid_argument for a plan the controller refuses (AdaKV,
// budget below sink + recent, ...) and for key norm on the paged store,
// whose blocks offer no contiguous keys to score.
inline std::unique_ptr<decode_eviction> make_decode_eviction(engine& e, const eviction_plan& plan) {
  const model_config& c = e.config();
  kvcrush::eviction_settings settings;
  settings.policy = plan.policy;
  settings.budgets = {plan.budget};
  settings.slack = plan.slack;
  settings.query_heads = c.n_heads;
  settings.window = plan.window;
  settings.max_tokens = e.cache_capacity();
  if (auto* contiguous = dynamic_cast<contiguous_store*>(&e.cache())) {
    return std::make_unique<detail::controlled_cache<kvcrush::contiguous_cache<float>>>(contiguous->cache(), settings);
  }
  if (auto* paged = dynamic_cast<paged_store*>(&e.cache())) {
    if (plan.policy.base == kvcrush::base_policy::knorm) {
      throw std::invalid_argument("policy '" + plan.policy.name() +
                                  "' scores the keys, which the paged cache does not hold contiguously; drop --paged");
    }
    return std::make_unique<detail::controlled_cache<kvcrush::paged_sequence<float>>>(paged->sequence(), settings);
  }
  throw std::invalid_argument("decode-time eviction needs the contiguous or the paged store");
}

}  // namespace kvcrush_llama
