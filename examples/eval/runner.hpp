// One evaluation run: a chunk of text through the Llama engine with a
// policy holding the KV cache to a budget, compared with the full cache.
//
// The engine's cache is kvcrush's (contiguous, or paged with --paged), and
// kvcrush's eviction_controller keeps it within budget + slack tokens per
// layer: it tracks what the policy needs from every attention row (H2O sums,
// the last `window` rows for SnapKV/TOVA/R-KV, the last `window` queries for
// Expected Attention; keys and values come from the cache), compresses each layer once after
// the prefill, and evicts before any decode step that would overflow.
//
// AdaKV shares a layer's budget out across KV heads, so heads hold different
// numbers of tokens: its runs use the per-head store (kvcrush::per_head_cache)
// and the controller's head-wise mode: the allocation is made once, at the
// compression after the prefill, from the prompt's SnapKV scores (AdaKV is a
// prompt-compression method: adakv_allocation::compress_only), and each KV
// head then keeps within its own budget while decoding.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "engine.hpp"
#include "kv_cache.hpp"
#include "kvcrush/cache/eviction_controller.hpp"
#include "kvcrush/cache/rope.hpp"
#include "kvcrush/policy/runtime.hpp"
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

// Forwards every layer's attention to the controller that tracks it, and
// for Expected Attention the token's queries turned back to before RoPE
// (the engine's are rotated at their position; llama2.c pairs dimensions
// (2i, 2i+1), theta 10000), with their position.
template <class Controller>
class attention_bridge : public kvcrush_llama::attention_observer {
 public:
  explicit attention_bridge(Controller& controller, bool queries = false, index_t query_heads = 0,
                            index_t head_dim = 0)
      : controller_(&controller), queries_(queries), query_heads_(query_heads), head_dim_(head_dim),
        unrotated_(queries ? static_cast<std::size_t>(query_heads * head_dim) : 0) {}

  void on_attention(const kvcrush_llama::attention_event& event) override {
    controller_->observe(event.layer, event.probabilities);
    if (!queries_) return;
    const kvcrush::rope_config rope{static_cast<double>(kvcrush_llama::rope_base), kvcrush::rope_style::interleaved, 0};
    for (index_t q = 0; q < query_heads_; ++q) {
      float* row = unrotated_.data() + q * head_dim_;
      for (index_t j = 0; j < head_dim_; ++j) row[j] = event.queries(q, j);
      kvcrush::rope_rotate(row, head_dim_, -static_cast<double>(event.position), rope);
    }
    controller_->observe_queries(event.layer, kvcrush::make_matrix_view<const float>(unrotated_.data(), query_heads_, head_dim_),
                                 event.position);
  }

 private:
  Controller* controller_;
  bool queries_;
  index_t query_heads_, head_dim_;
  std::vector<float> unrotated_;
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
// attention rows, the window of rows kept, the longest layer; AdaKV shares
// a layer's budget out at the compression after the prefill only.
inline kvcrush::eviction_settings settings_for(const options& o, const kvcrush_llama::model_config& c,
                                               const kvcrush::policy_config& policy, index_t length, index_t slack) {
  kvcrush::eviction_settings settings;
  settings.policy = policy;
  settings.slack = slack;
  settings.query_heads = c.n_heads;
  settings.window = o.window;
  settings.max_tokens = length;
  settings.allocation = kvcrush::adakv_allocation::compress_only;
  return settings;
}

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
  kvcrush::eviction_settings settings = settings_for(o, c, policy, length, o.slack);
  for (index_t b : budgets) settings.budgets.push_back(budget_of(o, policy, b));

  auto track_peak = [&](const kvcrush_llama::kv_store& store) {
    for (index_t l = 0; l < c.n_layers; ++l) {
      double held = 0;
      for (index_t h = 0; h < c.n_kv_heads; ++h) held += static_cast<double>(store.length(l, h));
      held /= static_cast<double>(c.n_kv_heads);
      result.peak_tokens = std::max(result.peak_tokens, held);
      result.over_budget = std::max(result.over_budget, held - static_cast<double>(budgets[static_cast<std::size_t>(l)]));
    }
  };

  auto run = [&](auto& cache_object, std::unique_ptr<kvcrush_llama::kv_store> store) {
    using cache_type = std::remove_reference_t<decltype(cache_object)>;
    kvcrush::eviction_controller<cache_type> controller(cache_object, settings);
    attention_bridge<kvcrush::eviction_controller<cache_type>> observer(
        controller, policy.base == kvcrush::base_policy::expected_attention, c.n_heads, c.head_dim());
    kvcrush_llama::engine e(m, std::move(store));
    e.set_observer(&observer);
    for (index_t p = 0; p < prefill; ++p) e.forward(chunk[static_cast<std::size_t>(p)]);
    for (index_t l = 0; l < c.n_layers; ++l) {
      // With AdaKV: shares the budget out across the KV heads (a layer the
      // prompt leaves within budget keeps the uniform budget per head).
      controller.compress(l, policy, {}, settings.budgets[static_cast<std::size_t>(l)], ws);
    }
    for (index_t p = prefill; p < length - 1; ++p) {
      for (index_t l = 0; l < c.n_layers; ++l) controller.make_room(l, 1, ws);
      const Eigen::VectorXf& logits = e.forward(chunk[static_cast<std::size_t>(p)]);
      track_peak(e.cache());
      score(logits, p);
    }
  };
  if (policy.adakv) {
    // Heads of different lengths: one cache per KV head.
    auto store = std::make_unique<kvcrush_llama::per_head_store>(c.n_layers, c.n_kv_heads, c.head_dim(), length);
    auto& cache = store->cache();
    run(cache, std::move(store));
  } else if (o.paged) {
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

}  // namespace kvcrush_eval
