// Decode-time eviction for the engine: kvcrush's eviction_controller holds
// every layer's cache to a token budget while the engine runs.
//
// Before each token, make_room() evicts down to the budget in any layer
// that would otherwise exceed budget + slack (one selection per slack new
// tokens, per token with slack 0); after each layer's attention, the controller observes the
// probabilities, which is where H2O's sums and SnapKV's/TOVA's window of
// attention rows come from. Every base policy works, with +kvcrush.
//
// +adakv: the controller keeps all KV heads of a layer at one length, and
// AdaKV's head-wise budgets do not (eviction_controller.hpp). So, as
// kvcrush-eval does, the cache is a per_head_store with one controller per
// KV head: the first time a layer fills, its budget is shared out across the
// KV heads from the SnapKV scores of the last `window` queries (AdaKV's
// allocation, kvpress's rule), each head compresses to its share, and from
// then on keeps to it.
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
#include "kvcrush/policy/adakv.hpp"
#include "kvcrush/policy/runtime.hpp"
#include "kvcrush/scores/window_attention.hpp"

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

// AdaKV: one single-head controller per KV head (see the header comment).
class adakv_heads final : public decode_eviction {
 public:
  adakv_heads(per_head_store& store, const model_config& c, const eviction_plan& plan, index_t capacity)
      : store_(&store), plan_(plan), query_heads_(c.n_heads), capacity_(capacity),
        rows_(static_cast<std::size_t>(c.n_layers),
              std::vector<float>(static_cast<std::size_t>(plan.window * c.n_heads * capacity), 0.0f)),
        seen_(static_cast<std::size_t>(c.n_layers), 0),
        shared_(static_cast<std::size_t>(c.n_layers), false),
        scores_(static_cast<std::size_t>(c.n_kv_heads * capacity)),
        window_(static_cast<std::size_t>(c.n_heads * plan.window * capacity)),
        shares_(static_cast<std::size_t>(c.n_kv_heads)) {
    head_policy_ = plan.policy;
    head_policy_.adakv = false;
    head_policy_.layout.per_head = false;  // each controller holds one KV head
    kvcrush::eviction_settings settings;
    settings.policy = head_policy_;
    settings.budgets = {plan.budget};
    settings.slack = plan.slack;
    settings.query_heads = c.kv_group();
    settings.window = plan.window;
    settings.max_tokens = capacity;
    for (index_t g = 0; g < c.n_kv_heads; ++g) {
      controllers_.push_back(std::make_unique<kvcrush::eviction_controller<kvcrush::contiguous_cache<float>>>(
          store.head(g), settings));
    }
  }

  void before_token(kvcrush::workspace& ws) override {
    const index_t limit = plan_.budget.budget + plan_.slack;
    for (index_t l = 0; l < store_->layers(); ++l) {
      if (!shared_[static_cast<std::size_t>(l)] && store_->length(l, 0) + 1 > limit) share_out(l, ws);
      for (auto& controller : controllers_) controller->make_room(l, 1, ws);
    }
  }

  index_t selections() const override {
    index_t total = 0;
    for (const auto& controller : controllers_)
      for (index_t l = 0; l < controller->layers(); ++l) total += controller->selections(l);
    return total;
  }

  void on_attention(const attention_event& event) override {
    const index_t heads = event.head_lengths.extent(0);
    const index_t group = query_heads_ / heads;
    const index_t stride = event.probabilities.stride(0);
    for (index_t g = 0; g < heads; ++g) {
      controllers_[static_cast<std::size_t>(g)]->observe(
          event.layer, kvcrush::matrix_view<const float>(event.probabilities.data() + g * group * stride,
                                                         {group, event.head_lengths[g]}, {stride, 1}));
    }
    // Until the layer is shared out, its last `window` rows (all heads hold
    // every token then, so the rows are aligned).
    const auto layer = static_cast<std::size_t>(event.layer);
    if (!shared_[layer]) {
      const index_t slot = seen_[layer]++ % plan_.window;
      const index_t width = event.probabilities.extent(1);
      for (index_t q = 0; q < query_heads_; ++q) {
        float* row = rows_[layer].data() + (slot * query_heads_ + q) * capacity_;
        std::fill(row, row + capacity_, 0.0f);
        std::copy(&event.probabilities(q, 0), &event.probabilities(q, 0) + width, row);
      }
    }
    track(event);
  }

 private:
  void share_out(index_t layer, kvcrush::workspace& ws) {
    const auto l = static_cast<std::size_t>(layer);
    const index_t tokens = store_->length(layer, 0);
    const index_t heads = store_->kv_heads(), w = plan_.window;
    // The window's rows as (Hq, W, tokens), oldest first.
    for (index_t i = 0; i < w; ++i) {
      const index_t slot = (seen_[l] - w + i) % w;
      for (index_t q = 0; q < query_heads_; ++q) {
        const float* row = rows_[l].data() + (slot * query_heads_ + q) * capacity_;
        std::copy(row, row + tokens, window_.data() + (q * w + i) * tokens);
      }
    }
    kvcrush::window_scores(kvcrush::strided_view<const float, 3>(window_.data(), {query_heads_, w, tokens}),
                           plan_.policy.window, kvcrush::make_matrix_view(scores_.data(), heads, tokens), ws);
    const kvcrush::layer_budget& b = plan_.budget;
    kvcrush::allocate_head_budgets(kvcrush::make_matrix_view<const float>(scores_.data(), heads, tokens), b.sink,
                                   tokens - b.recent, b.budget - b.sink - b.recent, plan_.policy.adakv_alpha,
                                   kvcrush::make_vector_view(shares_.data(), heads), ws);
    for (index_t g = 0; g < heads; ++g) {
      const kvcrush::layer_budget share{b.sink + b.recent + shares_[static_cast<std::size_t>(g)], b.sink, b.recent};
      controllers_[static_cast<std::size_t>(g)]->compress(layer, head_policy_, {}, share, ws);
      controllers_[static_cast<std::size_t>(g)]->set_budget(layer, share);
    }
    shared_[l] = true;
  }

  per_head_store* store_;
  eviction_plan plan_;
  kvcrush::policy_config head_policy_;
  index_t query_heads_, capacity_;
  std::vector<std::unique_ptr<kvcrush::eviction_controller<kvcrush::contiguous_cache<float>>>> controllers_;
  std::vector<std::vector<float>> rows_;  // per layer: window x Hq x capacity
  std::vector<index_t> seen_;
  std::vector<bool> shared_;
  std::vector<float> scores_, window_;
  std::vector<index_t> shares_;
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
    return std::make_unique<detail::adakv_heads>(*heads, c, plan, e.cache_capacity());
  }
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
