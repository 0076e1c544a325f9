// One evaluation run: a chunk of text through the Llama engine with a
// policy holding the KV cache to a budget, compared with the full cache.
// Each run is a lane: one sequence of the batched engine (batch_runner.hpp
// decodes all the runs of a chunk together), with its own store and its own
// eviction controller.
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

#include "kv_cache.hpp"
#include "report.hpp"
#include "sequence.hpp"
#include "kvcrush/cache/eviction_controller.hpp"
#include "kvcrush/cache/rope.hpp"
#include "kvcrush/policy/runtime.hpp"
#include "metrics.hpp"
#include "options.hpp"

namespace kvcrush_eval {

using kvcrush::index_t;

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

// One run on one chunk, as a sequence of the batched engine. The sequence
// owns the run's store; the lane drives its eviction and scores its
// predictions against the full cache's.
class run_lane {
 public:
  run_lane(const kvcrush_llama::model_config& c, std::unique_ptr<kvcrush_llama::kv_store> store)
      : sequence_(c, std::move(store)) {}
  virtual ~run_lane() = default;
  run_lane(const run_lane&) = delete;
  run_lane& operator=(const run_lane&) = delete;

  kvcrush_llama::sequence& seq() noexcept { return sequence_; }

  // After the prefill, before the first decoded token: the policy's
  // compression of every layer.
  virtual void compress(kvcrush::workspace&) {}
  // Before each decoded token: room for it in every layer.
  virtual void make_room(kvcrush::workspace&) {}
  // After each decoded token: this run's prediction of `target` against the
  // full cache's log-probabilities, and what its layers hold.
  void score(const Eigen::VectorXd& full, const Eigen::VectorXf& logits, int target) {
    result_.acc.add(full, log_softmax(logits), target);
    track();
  }
  const run_result& result() const noexcept { return result_; }
  // The run's share of its table row (budgets, peaks, storage).
  virtual void describe(result_row& row) const = 0;

 protected:
  virtual void track() {}
  run_result result_;

 private:
  kvcrush_llama::sequence sequence_;
};

// The full cache: the reference every run of the chunk is compared with.
class full_lane final : public run_lane {
 public:
  full_lane(const kvcrush_llama::model_config& c, index_t length)
      : run_lane(c, std::make_unique<kvcrush_llama::contiguous_store>(c.n_layers, c.n_kv_heads, c.head_dim(), length)),
        length_(length) {
    result_.peak_tokens = static_cast<double>(length);
    result_.over_budget = 0;
  }
  void describe(result_row& row) const override { row.budget_tokens = length_; }

 private:
  index_t length_;
};

// A run of `policy` with per-layer budgets (PyramidKV's differ by layer).
template <class Cache>
class policy_lane final : public run_lane {
 public:
  policy_lane(const kvcrush_llama::model_config& c, std::unique_ptr<kvcrush_llama::kv_store> store, Cache& cache,
              const kvcrush::eviction_settings& settings, const kvcrush::policy_config& policy,
              std::vector<index_t> budgets, index_t budget_tokens)
      : run_lane(c, std::move(store)), layers_(c.n_layers), kv_heads_(c.n_kv_heads), policy_(policy),
        settings_(settings), budgets_(std::move(budgets)), budget_tokens_(budget_tokens), controller_(cache, settings),
        bridge_(controller_, policy.base == kvcrush::base_policy::expected_attention, c.n_heads, c.head_dim()) {
    seq().set_observer(&bridge_);
  }

  void compress(kvcrush::workspace& ws) override {
    // With AdaKV: shares the budget out across the KV heads (a layer the
    // prompt leaves within budget keeps the uniform budget per head).
    for (index_t l = 0; l < layers_; ++l) {
      controller_.compress(l, policy_, {}, settings_.budgets[static_cast<std::size_t>(l)], ws);
    }
  }
  void make_room(kvcrush::workspace& ws) override {
    for (index_t l = 0; l < layers_; ++l) controller_.make_room(l, 1, ws);
  }
  void describe(result_row& row) const override { row.budget_tokens = budget_tokens_; }

 protected:
  void track() override {
    const kvcrush_llama::kv_store& store = seq().cache();
    for (index_t l = 0; l < layers_; ++l) {
      double held = 0;
      for (index_t h = 0; h < kv_heads_; ++h) held += static_cast<double>(store.length(l, h));
      held /= static_cast<double>(kv_heads_);
      result_.peak_tokens = std::max(result_.peak_tokens, held);
      result_.over_budget =
          std::max(result_.over_budget, held - static_cast<double>(budgets_[static_cast<std::size_t>(l)]));
    }
  }

 private:
  index_t layers_, kv_heads_;
  kvcrush::policy_config policy_;
  kvcrush::eviction_settings settings_;
  std::vector<index_t> budgets_;
  index_t budget_tokens_;
  kvcrush::eviction_controller<Cache> controller_;
  attention_bridge<kvcrush::eviction_controller<Cache>> bridge_;
};

// The lane of one chunk of `length` tokens under `policy` with a budget of
// `budget_tokens` per KV head and layer (the full cache for base full).
inline std::unique_ptr<run_lane> make_policy_lane(const kvcrush_llama::model_config& c, const options& o,
                                                  const kvcrush::policy_config& policy, index_t budget_tokens,
                                                  index_t length) {
  if (policy.base == kvcrush::base_policy::full) return std::make_unique<full_lane>(c, length);
  const index_t prefill = prefill_length(o, length);
  // Per-layer budgets (PyramidKV's pyramid over the prompt, else uniform).
  // (The pyramid's "window" is everything always kept: sink + recent.)
  std::vector<index_t> budgets = kvcrush::layer_budgets(policy, budget_tokens, o.sink + o.window, c.n_layers, prefill);
  kvcrush::eviction_settings settings = settings_for(o, c, policy, length, o.slack);
  for (index_t b : budgets) settings.budgets.push_back(budget_of(o, policy, b));

  auto make = [&](auto& cache, auto store) -> std::unique_ptr<run_lane> {
    using cache_type = std::remove_reference_t<decltype(cache)>;
    return std::make_unique<policy_lane<cache_type>>(c, std::move(store), cache, settings, policy, budgets,
                                                     budget_tokens);
  };
  if (policy.adakv) {
    // Heads of different lengths: one cache per KV head.
    auto store = std::make_unique<kvcrush_llama::per_head_store>(c.n_layers, c.n_kv_heads, c.head_dim(), length);
    auto& cache = store->cache();
    return make(cache, std::move(store));
  }
  if (o.paged) {
    auto store = std::make_unique<kvcrush_llama::paged_store>(c.n_layers, c.n_kv_heads, c.head_dim(), length, 16);
    auto& sequence = store->sequence();
    return make(sequence, std::move(store));
  }
  auto store = std::make_unique<kvcrush_llama::contiguous_store>(c.n_layers, c.n_kv_heads, c.head_dim(), length);
  auto& cache = store->cache();
  return make(cache, std::move(store));
}

}  // namespace kvcrush_eval
