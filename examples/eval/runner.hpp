// One evaluation run: a chunk of text through the Llama engine with a
// policy holding the KV cache to a budget, compared with the full cache.
//
// The engine's cache is kvcrush's (contiguous, or paged with --paged), and
// kvcrush's eviction_controller keeps it within budget + slack tokens per
// layer: it tracks what the policy needs from every attention row (H2O sums,
// the last `window` rows for SnapKV/TOVA), compresses each layer once after
// the prefill, and evicts before any decode step that would overflow.
//
// AdaKV shares a layer's budget out across KV heads, so heads hold different
// numbers of tokens: its runs use a store with one cache per KV head, the
// allocation is made once from the prompt's SnapKV scores (AdaKV is a
// prompt-compression method), and one controller per KV head then keeps each
// head within its own budget while decoding.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "engine.hpp"
#include "kv_cache.hpp"
#include "kvcrush/cache/eviction_controller.hpp"
#include "kvcrush/policy/adakv.hpp"
#include "kvcrush/policy/runtime.hpp"
#include "kvcrush/scores/window_attention.hpp"
#include "metrics.hpp"
#include "options.hpp"

namespace kvcrush_eval {

using kvcrush::index_t;

// The full cache's next-token log-probabilities for every position of a
// chunk (entry p predicts token p + 1).
inline std::vector<Eigen::VectorXd> full_cache_predictions(const kvcrush_llama::model& m, const std::vector<int>& chunk) {
  kvcrush_llama::engine e(m, static_cast<index_t>(chunk.size()));
  std::vector<Eigen::VectorXd> out;
  out.reserve(chunk.size());
  for (std::size_t p = 0; p + 1 < chunk.size(); ++p) out.push_back(log_softmax(e.forward(chunk[p])));
  return out;
}

struct run_result {
  accuracy acc;
  // While decoding: the most tokens a layer held (mean over its KV heads),
  // and the most it held above its own budget (PyramidKV budgets differ by
  // layer, AdaKV's by head: the layer's mean is what its budget bounds).
  double peak_tokens = 0;
  double over_budget = -1e30;
};

namespace impl {

// Forwards every layer's attention to the controllers that track it, and
// keeps the last `window` rows per layer for AdaKV's allocation.
template <class Controller>
class bridge : public kvcrush_llama::attention_observer {
 public:
  bridge(std::vector<Controller*> controllers, index_t query_heads, index_t window, index_t layers, index_t capacity)
      : controllers_(std::move(controllers)), query_heads_(query_heads), window_(window), capacity_(capacity),
        rows_(static_cast<std::size_t>(layers), std::vector<float>(static_cast<std::size_t>(window * query_heads * capacity), 0.0f)),
        seen_(static_cast<std::size_t>(layers), 0) {}

  bool keep_rows = false;  // AdaKV: remember the last `window` rows

  void on_attention(const kvcrush_llama::attention_event& event) override {
    const index_t kv_heads = event.head_lengths.extent(0);
    const index_t group = query_heads_ / kv_heads;
    if (controllers_.size() == 1) {
      controllers_[0]->observe(event.layer, event.probabilities);
    } else {
      // One controller per KV head: its group of query heads, its own rows.
      for (index_t g = 0; g < kv_heads; ++g) {
        controllers_[static_cast<std::size_t>(g)]->observe(
            event.layer, kvcrush::matrix_view<const float>(event.probabilities.data() + g * group * event.probabilities.stride(0),
                                                           {group, event.head_lengths[g]},
                                                           {event.probabilities.stride(0), 1}));
      }
    }
    if (keep_rows) {
      auto& rows = rows_[static_cast<std::size_t>(event.layer)];
      const index_t slot = seen_[static_cast<std::size_t>(event.layer)]++ % window_;
      const index_t width = event.probabilities.extent(1);
      for (index_t q = 0; q < query_heads_; ++q) {
        float* dst = rows.data() + (slot * query_heads_ + q) * capacity_;
        std::fill(dst, dst + capacity_, 0.0f);
        std::copy(&event.probabilities(q, 0), &event.probabilities(q, 0) + width, dst);
      }
    }
  }

  // The last `window` attention rows of a layer as (Hq, window, tokens).
  std::vector<float> window_attention(index_t layer, index_t tokens) const {
    const auto& rows = rows_[static_cast<std::size_t>(layer)];
    const index_t seen = seen_[static_cast<std::size_t>(layer)];
    std::vector<float> out(static_cast<std::size_t>(query_heads_ * window_ * tokens), 0.0f);
    for (index_t w = 0; w < window_; ++w) {
      const index_t slot = (seen - window_ + w) % window_;
      for (index_t q = 0; q < query_heads_; ++q)
        for (index_t t = 0; t < tokens; ++t)
          out[static_cast<std::size_t>((q * window_ + w) * tokens + t)] = rows[static_cast<std::size_t>((slot * query_heads_ + q) * capacity_ + t)];
    }
    return out;
  }

 private:
  std::vector<Controller*> controllers_;
  index_t query_heads_, window_, capacity_;
  std::vector<std::vector<float>> rows_;
  std::vector<index_t> seen_;
};

// StreamingLLM keeps only the sink and the most recent tokens, so its recent
// window is the whole budget left after the sink (the controller shrinks it
// with the budget when it makes room for the next token); other policies
// protect `window` recent tokens and rank the rest.
inline kvcrush::layer_budget budget_of(const options& o, const kvcrush::policy_config& policy, index_t tokens) {
  if (policy.base == kvcrush::base_policy::streaming && !policy.kvcrush) {
    return {tokens, o.sink, tokens - o.sink};
  }
  return {tokens, o.sink, o.window};
}

// The controller settings every run shares: decode-time policy, Hq of the
// attention rows, the window of rows kept, the longest layer.
inline kvcrush::eviction_settings settings_for(const options& o, const kvcrush_llama::model_config& c,
                                               const kvcrush::policy_config& policy, index_t length, index_t slack) {
  kvcrush::eviction_settings settings;
  settings.policy = policy;
  settings.slack = slack;
  settings.query_heads = c.n_heads;
  settings.window = o.window;
  settings.max_tokens = length;
  return settings;
}

}  // namespace impl

// Tokens prefilled before compression, of a chunk of `length`.
inline index_t prefill_length(const options& o, index_t length) {
  const index_t prefill = o.prefill < 1.0 ? static_cast<index_t>(o.prefill * static_cast<double>(length))
                                          : static_cast<index_t>(o.prefill);
  if (prefill < 1 || prefill >= length) throw usage_error("--prefill leaves no tokens to decode");
  return prefill;
}

// Runs one chunk under `policy` with a budget of `budget_tokens` per KV head
// and layer.
inline run_result run_policy(const kvcrush_llama::model& m, const std::vector<int>& chunk,
                             const std::vector<Eigen::VectorXd>& full, const options& o,
                             const kvcrush::policy_config& policy, index_t budget_tokens, kvcrush::workspace& ws) {
  const auto& c = m.config();
  const auto length = static_cast<index_t>(chunk.size());
  const index_t prefill = prefill_length(o, length);
  run_result result;
  auto score = [&](const Eigen::VectorXf& logits, index_t p) {
    if (p + 1 < length) result.acc.add(full[static_cast<std::size_t>(p)], log_softmax(logits), chunk[static_cast<std::size_t>(p + 1)]);
  };

  if (policy.base == kvcrush::base_policy::full) {
    kvcrush_llama::engine e(m, length);
    for (index_t p = 0; p < length - 1; ++p) {
      const Eigen::VectorXf& logits = e.forward(chunk[static_cast<std::size_t>(p)]);
      if (p >= prefill) score(logits, p);
    }
    result.peak_tokens = static_cast<double>(length);
    result.over_budget = 0;
    return result;
  }

  // Per-layer budgets (PyramidKV's pyramid over the prompt, else uniform).
  // (The pyramid's "window" is everything always kept: sink + recent.)
  const std::vector<index_t> budgets =
      kvcrush::layer_budgets(policy, budget_tokens, o.sink + o.window, c.n_layers, prefill);
  kvcrush::eviction_settings settings = impl::settings_for(o, c, policy, length, o.slack);
  for (index_t b : budgets) settings.budgets.push_back(impl::budget_of(o, policy, b));

  auto track_peak = [&](const kvcrush_llama::kv_store& store) {
    for (index_t l = 0; l < c.n_layers; ++l) {
      double held = 0;
      for (index_t h = 0; h < c.n_kv_heads; ++h) held += static_cast<double>(store.length(l, h));
      held /= static_cast<double>(c.n_kv_heads);
      result.peak_tokens = std::max(result.peak_tokens, held);
      result.over_budget = std::max(result.over_budget, held - static_cast<double>(budgets[static_cast<std::size_t>(l)]));
    }
  };

  if (!policy.adakv) {
    auto run = [&](auto& cache_object, std::unique_ptr<kvcrush_llama::kv_store> store) {
      using cache_type = std::remove_reference_t<decltype(cache_object)>;
      kvcrush::eviction_controller<cache_type> controller(cache_object, settings);
      impl::bridge<kvcrush::eviction_controller<cache_type>> observer({&controller}, c.n_heads, o.window, c.n_layers, length);
      kvcrush_llama::engine e(m, std::move(store));
      e.set_observer(&observer);
      for (index_t p = 0; p < prefill; ++p) e.forward(chunk[static_cast<std::size_t>(p)]);
      for (index_t l = 0; l < c.n_layers; ++l) {
        controller.compress(l, policy, {}, settings.budgets[static_cast<std::size_t>(l)], ws);
      }
      for (index_t p = prefill; p < length - 1; ++p) {
        for (index_t l = 0; l < c.n_layers; ++l) controller.make_room(l, 1, ws);
        const Eigen::VectorXf& logits = e.forward(chunk[static_cast<std::size_t>(p)]);
        track_peak(e.cache());
        score(logits, p);
      }
    };
    if (o.paged) {
      auto store = std::make_unique<kvcrush_llama::paged_store>(c.n_layers, c.n_kv_heads, c.head_dim(), length, 16);
      auto& sequence = store->sequence();
      run(sequence, std::move(store));
    } else {
      auto store = std::make_unique<kvcrush_llama::contiguous_store>(c.n_layers, c.n_kv_heads, c.head_dim(), length);
      auto& cache = store->cache();
      run(cache, std::move(store));
    }
    return result;
  }

  // AdaKV: one single-head cache and one controller per KV head.
  auto owned = std::make_unique<kvcrush_llama::per_head_store>(c.n_layers, c.n_kv_heads, c.head_dim(), length);
  kvcrush_llama::per_head_store& store = *owned;
  kvcrush::policy_config per_head = policy;
  per_head.adakv = false;
  per_head.layout.per_head = false;  // each controller holds one KV head
  kvcrush::eviction_settings head_settings = settings;
  head_settings.policy = per_head;
  head_settings.query_heads = c.kv_group();
  using controller_type = kvcrush::eviction_controller<kvcrush::contiguous_cache<float>>;
  std::vector<std::unique_ptr<controller_type>> controllers;
  std::vector<controller_type*> pointers;
  for (index_t g = 0; g < c.n_kv_heads; ++g) {
    controllers.push_back(std::make_unique<controller_type>(store.head(g), head_settings));
    pointers.push_back(controllers.back().get());
  }
  impl::bridge<controller_type> observer(pointers, c.n_heads, o.window, c.n_layers, length);
  observer.keep_rows = true;
  kvcrush_llama::engine e(m, std::move(owned));
  e.set_observer(&observer);
  for (index_t p = 0; p < prefill; ++p) e.forward(chunk[static_cast<std::size_t>(p)]);
  std::vector<float> scores(static_cast<std::size_t>(c.n_kv_heads * prefill));
  std::vector<index_t> rest(static_cast<std::size_t>(c.n_kv_heads));
  for (index_t l = 0; l < c.n_layers; ++l) {
    const kvcrush::layer_budget& b = settings.budgets[static_cast<std::size_t>(l)];
    if (prefill <= b.budget) continue;
    // The layer's budget shared out from the prompt's SnapKV scores...
    const std::vector<float> window = observer.window_attention(l, prefill);
    kvcrush::window_scores(kvcrush::strided_view<const float, 3>(window.data(), {c.n_heads, o.window, prefill}),
                           policy.window, kvcrush::make_matrix_view(scores.data(), c.n_kv_heads, prefill), ws);
    kvcrush::allocate_head_budgets(kvcrush::make_matrix_view<const float>(scores.data(), c.n_kv_heads, prefill), b.sink,
                                   prefill - b.recent, b.budget - b.sink - b.recent, policy.adakv_alpha,
                                   kvcrush::make_vector_view(rest.data(), c.n_kv_heads), ws);
    // ...then each KV head compresses to its own share and keeps to it.
    for (index_t g = 0; g < c.n_kv_heads; ++g) {
      const kvcrush::layer_budget head_budget{b.sink + b.recent + rest[static_cast<std::size_t>(g)], b.sink, b.recent};
      controllers[static_cast<std::size_t>(g)]->compress(l, per_head, {}, head_budget, ws);
      controllers[static_cast<std::size_t>(g)]->set_budget(l, head_budget);
    }
  }
  for (index_t p = prefill; p < length - 1; ++p) {
    for (index_t l = 0; l < c.n_layers; ++l)
      for (auto& controller : controllers) controller->make_room(l, 1, ws);
    const Eigen::VectorXf& logits = e.forward(chunk[static_cast<std::size_t>(p)]);
    track_peak(e.cache());
    score(logits, p);
  }
  return result;
}

}  // namespace kvcrush_eval
