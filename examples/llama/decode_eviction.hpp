// Decode-time eviction for the engine: kvcrush's eviction_controller holds
// every layer's cache to a token budget while the engine runs.
//
// Before each token, make_room() evicts down to the budget in any layer
// that would otherwise exceed budget + slack (one selection per slack new
// tokens, per token with slack 0); after each layer's attention, the controller observes the
// probabilities, which is where H2O's sums and SnapKV's/TOVA's window of
// attention rows come from. Every base policy works, with +kvcrush.
//
// +adakv: AdaKV's head-wise budgets give KV heads different lengths, so the
// cache is a per_head_store (kvcrush::per_head_cache) and the controller
// runs in its head-wise mode (eviction_controller.hpp): the first time a
// layer fills, its budget is shared out across the KV heads from the SnapKV
// scores of the last `window` queries (AdaKV's allocation, kvpress's rule),
// each head compresses to its share, and from then on keeps to it.
#pragma once

#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention_observer.hpp"
#include "engine.hpp"
#include "kv_cache.hpp"
#include "kvcrush/cache/eviction_controller.hpp"
#include "kvcrush/cache/rope.hpp"
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

// Rows per KV head the engine's cache must hold: budget + slack, and with
// AdaKV the largest share (at most the budget + slack the layer held when it
// was shared out) plus slack.
inline index_t eviction_capacity(const eviction_plan& plan) {
  return plan.budget.budget + (plan.policy.adakv ? 2 : 1) * plan.slack;
}

class decode_eviction : public attention_observer {
 public:
  // Evicts in every layer that needs room for one more token.
  virtual void before_token(kvcrush::workspace& ws) = 0;
  // Selections run so far, over all layers.
  virtual index_t selections() const = 0;
  // The most rows a layer held after a token was appended, as the mean over
  // its KV heads (what a head-wise budget bounds), and in its longest head.
  double peak_mean_rows() const noexcept { return peak_mean_; }
  index_t peak_head_rows() const noexcept { return peak_head_; }

 protected:
  void track(const attention_event& event) {
    index_t total = 0;
    for (index_t h = 0; h < event.head_lengths.extent(0); ++h) {
      peak_head_ = std::max(peak_head_, event.head_lengths[h]);
      total += event.head_lengths[h];
    }
    peak_mean_ = std::max(peak_mean_, static_cast<double>(total) / static_cast<double>(event.head_lengths.extent(0)));
  }

 private:
  double peak_mean_ = 0;
  index_t peak_head_ = 0;
};

namespace detail {

template <class Cache>
class controlled_cache final : public decode_eviction {
 public:
  controlled_cache(Cache& cache, const kvcrush::eviction_settings& settings)
      : controller_(cache, settings), queries_(settings.policy.base == kvcrush::base_policy::expected_attention) {}

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
    if (queries_) {
      // Expected Attention's statistics are of the queries before RoPE: turn
      // them back from their position (llama2.c's pairs (2i, 2i+1)).
      const index_t hq = event.queries.extent(0), d = event.queries.extent(1);
      unrotated_.resize(static_cast<std::size_t>(hq * d));  // once: the shape never changes
      const kvcrush::rope_config rope{static_cast<double>(rope_base), kvcrush::rope_style::interleaved, 0};
      for (index_t q = 0; q < hq; ++q) {
        float* row = unrotated_.data() + q * d;
        for (index_t j = 0; j < d; ++j) row[j] = event.queries(q, j);
        kvcrush::rope_rotate(row, d, -static_cast<double>(event.position), rope);
      }
      controller_.observe_queries(event.layer, kvcrush::make_matrix_view<const float>(unrotated_.data(), hq, d),
                                  event.position);
    }
    track(event);
  }

 private:
  kvcrush::eviction_controller<Cache> controller_;
  bool queries_ = false;
  std::vector<float> unrotated_;
};

}  // namespace detail

// The store a plan needs: one cache per KV head for AdaKV's head-wise
// budgets, the contiguous (or, with paged, the paged) cache otherwise.
inline std::unique_ptr<kv_store> make_store(const model_config& c, const eviction_plan* plan, index_t capacity,
                                            bool paged) {
  if (plan != nullptr && plan->policy.adakv) {
    if (paged) throw std::invalid_argument("AdaKV's heads keep different tokens, which the paged cache's shared "
                                           "blocks cannot hold; drop --paged");
    return std::make_unique<per_head_store>(c.n_layers, c.n_kv_heads, c.head_dim(), capacity);
  }
  if (paged) return std::make_unique<paged_store>(c.n_layers, c.n_kv_heads, c.head_dim(), capacity, 16);
  return std::make_unique<contiguous_store>(c.n_layers, c.n_kv_heads, c.head_dim(), capacity);
}

// The controller(s) over the engine's cache (make_store's). The engine must
// outlive it; the caller sets it as the engine's observer. Throws
// std::invalid_argument for a plan the controller refuses (budget below
// sink + recent, ...), for key norm on the paged store, whose blocks offer
// no contiguous keys to score, and for AdaKV on another store than
// per_head_store.
inline std::unique_ptr<decode_eviction> make_decode_eviction(engine& e, const eviction_plan& plan) {
  const model_config& c = e.config();
  kvcrush::eviction_settings settings;
  settings.policy = plan.policy;
  settings.budgets = {plan.budget};
  settings.slack = plan.slack;
  settings.query_heads = c.n_heads;
  settings.window = plan.window;
  settings.max_tokens = e.cache_capacity();
  if (plan.policy.adakv) {
    auto* heads = dynamic_cast<per_head_store*>(&e.cache());
    if (heads == nullptr) throw std::invalid_argument("AdaKV needs the per-head store (make_store)");
    return std::make_unique<detail::controlled_cache<kvcrush::per_head_cache<float>>>(heads->cache(), settings);
  }
  if (auto* contiguous = dynamic_cast<contiguous_store*>(&e.cache())) {
    return std::make_unique<detail::controlled_cache<kvcrush::contiguous_cache<float>>>(contiguous->cache(), settings);
  }
  if (auto* paged = dynamic_cast<paged_store*>(&e.cache())) {
    const auto base = plan.policy.base;
    if (base == kvcrush::base_policy::knorm || base == kvcrush::base_policy::keydiff ||
        base == kvcrush::base_policy::expected_attention || base == kvcrush::base_policy::rkv) {
      throw std::invalid_argument("policy '" + plan.policy.name() +
                                  "' scores the keys, which the paged cache does not hold contiguously; drop --paged");
    }
    return std::make_unique<detail::controlled_cache<kvcrush::paged_sequence<float>>>(paged->sequence(), settings);
  }
  throw std::invalid_argument("decode-time eviction needs the contiguous or the paged store");
}

}  // namespace kvcrush_llama
