// Runs at equal byte budgets: eviction, quantization and mixed precision
// compared at the same K/V bytes per layer, a fraction of what the full
// cache of the chunk holds in float16.
//
// Storage kinds (--precisions):
//   fp16          eviction only; the kept tokens in float16.
//   int8/int4/int2  eviction + KIVI group quantization (keys per channel over
//                 groups of G tokens, values per token, float16 scales and
//                 zero-points) with a float16 window of R recent tokens
//                 (R = the protected recent window rounded up to G), holding
//                 as many tokens as the bytes allow at every count
//                 (quantized_tokens_at_every_count). Eviction is token by
//                 token, one selection per G new tokens (the groups after an
//                 evicted token are requantized), or with --quant-eviction
//                 group whole groups (SPEC 4.4 blocks of G; nothing is
//                 requantized, but selection is coarser).
//   mixed-intN    MiKV-style mixed precision: the importance policy's top
//                 tokens in float16 (at most high_fraction of the bytes), the
//                 next most important in intN instead of being dropped.
//   crush-intN    the same, the low tier being KVCrush representatives of
//                 the tokens the float16 tier leaves out.
// Mixed precision while decoding (kvcrush::tiered_cache and
// kvcrush::precision_demoter): new tokens enter the float16 tier; before
// each step the float16 tier keeps the policy's top tokens, the others of it
// moving down to the quantized tier (precision only goes down: a quantized
// token is not restored), and once per G steps the controller evicts the
// union down to its budget. Demotion never adds bytes and the tiers are
// sized so that every smaller count fits, so no layer ever holds more than
// the byte budget; the runner records the peak to show it.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "kvcrush/cache/eviction_controller.hpp"
#include "kvcrush/cache/precision_demoter.hpp"
#include "kvcrush/cache/tiered_cache.hpp"
#include "kvcrush/policy/runtime.hpp"
#include "kvcrush/policy/mixed_precision.hpp"
#include "quantized_stores.hpp"
#include "runner.hpp"

namespace kvcrush_eval {

enum class storage_kind { fp16, quantized, mixed };

struct precision {
  std::string name;
  storage_kind kind = storage_kind::fp16;
  int bits = 16;
  kvcrush::low_tier tier = kvcrush::low_tier::next_important;
};

inline precision parse_precision(const std::string& name) {
  precision p;
  p.name = name;
  auto bits_of = [&](const std::string& text) {
    if (text == "int8") return 8;
    if (text == "int4") return 4;
    if (text == "int2") return 2;
    throw usage_error("unknown precision '" + name + "' (fp16, int8, int4, int2, mixed-intN, crush-intN)");
  };
  if (name == "fp16") return p;
  if (name.rfind("mixed-", 0) == 0 || name.rfind("crush-", 0) == 0) {
    p.kind = storage_kind::mixed;
    p.bits = bits_of(name.substr(6));
    p.tier = name[0] == 'c' ? kvcrush::low_tier::kvcrush : kvcrush::low_tier::next_important;
    return p;
  }
  p.kind = storage_kind::quantized;
  p.bits = bits_of(name);
  return p;
}

// The byte budget of a run: what each layer may hold, and the tokens it
// then holds (per KV head): at most high + low while decoding, budget + slack
// for the eviction controller.
struct byte_plan {
  std::size_t budget_bytes = 0;
  index_t high = 0;  // float16 tokens (fp16, mixed) or all tokens (quantized)
  index_t low = 0;   // quantized tokens of a mixed run
  index_t slack = 0;  // tokens appended between two evictions
  kvcrush::layer_budget budget;  // what the controller keeps at each eviction
  index_t tokens() const noexcept { return high + low; }
};

inline kvcrush::quant_config quant_of(const options& o, int bits) {
  kvcrush::quant_config q;
  q.key_bits = q.value_bits = bits;
  q.group_size = o.quant_group;
  q.window = round_up(o.window, o.quant_group);
  return q;
}

// Bytes of the full cache of `length` tokens in float16, per layer.
inline std::size_t full_fp16_bytes(const kvcrush_llama::model_config& c, index_t length) {
  return kvcrush::plain_memory<kvcrush::float16>(c.n_kv_heads, length, c.head_dim()).kv_bytes();
}

// Sizes are the most tokens such that every smaller count fits too: layers
// pass through every count while they fill, and a quantized layer's bytes
// are not monotone in its tokens (a group costs less than G float16 rows).
inline byte_plan plan_bytes(const kvcrush_llama::model_config& c, const options& o, const precision& p, double fraction,
                            index_t length) {
  byte_plan plan;
  plan.budget_bytes = static_cast<std::size_t>(fraction * static_cast<double>(full_fp16_bytes(c, length)));
  const index_t heads = c.n_kv_heads, d = c.head_dim(), guarded = o.sink + o.window;
  const kvcrush::tier_cost fp16 = kvcrush::full_precision_cost<kvcrush::float16>(heads, d);
  auto refuse = [&] {
    throw usage_error("the byte budget " + std::to_string(plan.budget_bytes) + " of " + p.name +
                      " leaves no room beyond the sink and recent tokens");
  };
  switch (p.kind) {
    case storage_kind::fp16:
      plan.high = fp16.max_tokens_at_every_count(plan.budget_bytes, length);
      plan.budget = {plan.high, o.sink, o.window};
      break;
    case storage_kind::quantized: {
      plan.high = std::min(length, kvcrush::quantized_tokens_at_every_count<kvcrush::float16>(
                                       quant_of(o, p.bits), heads, d, plan.budget_bytes));
      if (o.quant_eviction == "group") {
        // Whole groups (SPEC 4.4 blocks of G): no code is ever requantized.
        const index_t g = o.quant_group;
        plan.slack = g;
        plan.budget = {(plan.high - g) / g * g, round_up(o.sink, g), round_up(o.window, g)};
      } else {
        plan.slack = o.quant_group;
        plan.budget = {plan.high - plan.slack, o.sink, o.window};
      }
      break;
    }
    case storage_kind::mixed: {
      kvcrush::mixed_precision_config cfg;
      cfg.budget_bytes = plan.budget_bytes;
      cfg.high = fp16;
      cfg.low = kvcrush::quantized_cost<kvcrush::float16>(quant_of(o, p.bits), heads, d);
      cfg.high_fraction = o.high_fraction;
      cfg.tier = p.tier;
      cfg.every_count = true;
      if (cfg.high.bytes(guarded) > cfg.budget_bytes) refuse();
      const kvcrush::mixed_plan m = kvcrush::plan_mixed_precision(length, guarded, cfg);
      plan.high = m.high;
      plan.low = m.low;

      // Evictions from the quantized tier regroup it: one per G steps.
      plan.slack = std::min(o.quant_group, plan.low);
      plan.budget = {plan.tokens() - plan.slack, o.sink, o.window};
      break;
    }
  }
  if (plan.budget.budget < plan.budget.sink + plan.budget.recent + 1) refuse();
  return plan;
}

// A run with storage `p` at a byte budget: the union's controller, and for
// mixed precision the demoter that keeps the float16 tier to the policy's
// top tokens.
template <class Cache>
class byte_lane final : public run_lane {
 public:
  byte_lane(const kvcrush_llama::model_config& c, std::unique_ptr<kvcrush_llama::kv_store> store, Cache& cache,
            const kvcrush::eviction_settings& settings, const kvcrush::policy_config& union_policy,
            const kvcrush::policy_config& high_policy, const byte_plan& plan, const precision& storage, const options& o,
            index_t length)
      : run_lane(c, std::move(store)), layers_(c.n_layers), settings_(settings), union_policy_(union_policy),
        high_policy_(high_policy), plan_(plan), storage_(storage), sink_(o.sink), window_(o.window),
        controller_(cache, settings), bridge_(controller_), demoter_(length) {
    seq().set_observer(&bridge_);
  }

  void compress(kvcrush::workspace& ws) override {
    for (index_t l = 0; l < layers_; ++l) {
      controller_.compress(l, union_policy_, {}, settings_.budgets[0], ws);  // budget + slack would fit too
      keep_high(l, plan_.high, ws);
    }
  }
  void make_room(kvcrush::workspace& ws) override {
    for (index_t l = 0; l < layers_; ++l) {
      controller_.make_room(l, 1, ws);
      keep_high(l, plan_.high - 1, ws);  // room for the new float16 token
    }
  }
  void describe(result_row& row) const override {
    row.precision = storage_.name;
    row.budget_bytes = static_cast<long>(plan_.budget_bytes);
    row.high_tokens = plan_.high;
    row.low_tokens = plan_.low;
    row.peak_bytes = std::max(row.peak_bytes, peak_bytes_);
    row.budget_tokens = plan_.tokens();
  }

 protected:
  void track() override {
    const kvcrush_llama::kv_store& store = seq().cache();
    for (index_t l = 0; l < layers_; ++l) {
      const auto held = static_cast<double>(store.length(l));
      result_.peak_tokens = std::max(result_.peak_tokens, held);
      result_.over_budget = std::max(result_.over_budget, held - static_cast<double>(plan_.tokens()));
      peak_bytes_ = std::max(peak_bytes_, static_cast<double>(store.memory(l).kv_bytes()));
    }
  }

 private:
  // The float16 tier keeps the policy's top `high` tokens of the union.
  void keep_high(index_t layer, index_t high, kvcrush::workspace& ws) {
    if constexpr (std::is_same_v<Cache, kvcrush::tiered_cache<kvcrush::float16>>) {
      if (storage_.kind != storage_kind::mixed) return;
      // Just before a new token arrives the float16 tier may hold only the
      // protected tokens: the oldest of the recent ones then competes.
      demoter_.keep_high(controller_, layer, high_policy_, {high, sink_, std::min<index_t>(window_, high - sink_)}, ws);
    } else {
      (void)layer;
      (void)high;
      (void)ws;
    }
  }

  index_t layers_;
  kvcrush::eviction_settings settings_;
  kvcrush::policy_config union_policy_, high_policy_;
  byte_plan plan_;
  precision storage_;
  index_t sink_, window_;
  double peak_bytes_ = 0;  // most K/V bytes a layer held while decoding
  kvcrush::eviction_controller<Cache> controller_;
  attention_bridge<kvcrush::eviction_controller<Cache>> bridge_;
  kvcrush::precision_demoter demoter_;
};

// The lane of one chunk of `length` tokens under `policy` (a ranking base
// policy, no modifiers) with storage `p` at `fraction` of the full float16
// cache's bytes.
inline std::unique_ptr<run_lane> make_byte_lane(const kvcrush_llama::model_config& c, const options& o,
                                                const kvcrush::policy_config& policy, const precision& p,
                                                double fraction, index_t length) {
  const byte_plan plan = plan_bytes(c, o, p, fraction, length);

  // The union's policy; with a KVCrush tier, the representatives fill the
  // quantized share of the unprotected picks.
  kvcrush::policy_config union_policy = policy;
  if (p.kind == storage_kind::mixed && p.tier == kvcrush::low_tier::kvcrush) {
    const kvcrush::layer_budget& b = plan.budget;
    union_policy.kvcrush = true;
    union_policy.crush.fraction = kvcrush::crush_fraction_for(plan.low - plan.slack, b.budget - b.sink - b.recent);
  }
  if (p.kind == storage_kind::quantized && o.quant_eviction == "group") union_policy.layout.block_size = o.quant_group;
  kvcrush::policy_config high_policy = policy;
  high_policy.kvcrush = false;

  kvcrush::eviction_settings settings = settings_for(o, c, union_policy, length, plan.slack);
  settings.budgets = {plan.budget};
  if (policy.base == kvcrush::base_policy::streaming) {
    settings.budgets[0].recent = plan.budget.budget - plan.budget.sink;  // StreamingLLM: the rest is recent
  }
  auto make = [&](auto& cache, auto store) -> std::unique_ptr<run_lane> {
    using cache_type = std::remove_reference_t<decltype(cache)>;
    return std::make_unique<byte_lane<cache_type>>(c, std::move(store), cache, settings, union_policy, high_policy,
                                                   plan, p, o, length);
  };
  if (p.kind == storage_kind::quantized) {
    auto store = std::make_unique<kvcrush_llama::quantized_store>(c.n_layers, c.n_kv_heads, c.head_dim(), length,
                                                                  quant_of(o, p.bits));
    auto& cache = store->cache();
    return make(cache, std::move(store));
  }
  auto store = std::make_unique<kvcrush_llama::tiered_store>(c.n_layers, c.n_kv_heads, c.head_dim(), length,
                                                             quant_of(o, p.kind == storage_kind::mixed ? p.bits : 8));
  auto& tiers = store->cache();
  return make(tiers, std::move(store));
}

}  // namespace kvcrush_eval
