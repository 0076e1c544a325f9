// Mixed precision as a policy output: under a budget in bytes, the tokens
// the importance policy keeps stay at full precision and a second tier is
// kept at low precision instead of being dropped:
//   low_tier::next_important  (MiKV-style) the tokens the policy would have
//                             evicted, the most important first;
//   low_tier::kvcrush         KVCrush representatives of those evicted
//                             tokens (SPEC 4.3: buckets of the candidates
//                             E \ I by Hamming distance to the anchor).
//
// The byte rule (plan_mixed_precision), for N tokens of which P are
// protected (sink + recent, SPEC 1), tier costs from quant/memory.hpp and
// high_fraction f:
//   1. If N tokens fit at full precision, all are full precision.
//   2. The protected tokens must fit at full precision (else an error).
//   3. high = the most tokens whose full-precision cost fits in
//      floor(f * budget), clamped to [P, N].
//   4. low = the most tokens (at most N - high) whose low-precision cost
//      fits in what the high tier left.
//   5. If high + low = N (nothing is dropped), spare bytes upgrade tokens:
//      high becomes the largest h in [high, N] with
//      cost_high(h) + cost_low(N - h) <= budget, low = N - h.
//   With every_count (tiers resized while decoding), step 4 takes the most
//   tokens such that every smaller low count fits too, and step 5 is
//   skipped.
// So bytes used <= budget, and the plan is tight: unless every token is
// kept, no further low-precision token fits; when every token is kept, no
// further token can move up to full precision.
//
// The keep sets come from select_keep (SPEC semantics, same scores): the
// high tier is the keep set of budget `high` with crush_fraction 0
// (protected + top importance); the union of both tiers is the keep set of
// budget high + low whose importance part is the same top-(high - P) and
// whose remaining `low` picks are the next by importance (crush_fraction 0)
// or the KVCrush representatives (crush_fraction giving exactly `low`
// representatives); the low tier is the union minus the high tier. Both
// tiers are sorted positions, disjoint, and protected tokens are high.
// Token granularity (block_size 1); shared or per-head (uniform) sets.
#pragma once

#include <cmath>
#include <stdexcept>

#include "kvcrush/error.hpp"
#include "kvcrush/policy/policies.hpp"
#include "kvcrush/policy/runtime.hpp"
#include "kvcrush/policy/select.hpp"
#include "kvcrush/quant/memory.hpp"
#include "kvcrush/select/keep.hpp"
#include "kvcrush/policy/workspace.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

enum class low_tier { next_important, kvcrush };

inline const char* to_string(low_tier t) noexcept { return t == low_tier::kvcrush ? "kvcrush" : "next_important"; }

struct mixed_precision_config {
  std::size_t budget_bytes = 0;  // K/V bytes of the layer, all KV heads (memory_usage::kv_bytes)
  tier_cost high;                // full-precision tier, e.g. full_precision_cost<float16>(heads, d)
  tier_cost low;                 // low-precision tier, e.g. quantized_cost<float16>(cfg, heads, d)
  double high_fraction = 0.5;    // share of the budget the full-precision tier may take
  low_tier tier = low_tier::next_important;
  // Size the low tier so that every smaller count fits too
  // (tier_cost::max_tokens_at_every_count): for tiers that grow and shrink
  // a token at a time while decoding. The plan is then not tight.
  bool every_count = false;
};

struct mixed_plan {
  index_t high = 0;  // tokens at full precision (per KV head)
  index_t low = 0;   // tokens at low precision
  std::size_t high_bytes = 0;
  std::size_t low_bytes = 0;
  std::size_t bytes() const noexcept { return high_bytes + low_bytes; }
};

// Protected tokens of a sequence of n (SPEC 1).
constexpr index_t protected_count(index_t n, index_t sink, index_t recent) noexcept {
  return n <= sink + recent ? n : sink + recent;
}

inline namespace KVCRUSH_TARGET_NS {

// The byte rule above. max_high caps the full-precision tier (e.g. at P for
// policies that rank nothing).
inline mixed_plan plan_mixed_precision(index_t tokens, index_t protected_tokens, const mixed_precision_config& cfg,
                                       index_t max_high = -1) {
  using kvcrush::detail::require;
  require(tokens >= 0 && protected_tokens >= 0 && protected_tokens <= tokens,
          "plan_mixed_precision: need 0 <= protected (", protected_tokens, ") <= tokens (", tokens, ")");
  require(cfg.high_fraction >= 0.0 && cfg.high_fraction <= 1.0, "plan_mixed_precision: high_fraction must be in [0, 1] (got ",
          cfg.high_fraction, ")");
  require(cfg.high.group >= 1 && cfg.low.group >= 1, "plan_mixed_precision: tier group sizes must be >= 1");
  const std::size_t budget = cfg.budget_bytes;
  require(cfg.high.bytes(protected_tokens) <= budget, "plan_mixed_precision: the ", protected_tokens,
          " protected tokens need ", cfg.high.bytes(protected_tokens), " bytes at full precision, the budget is ",
          budget);
  if (max_high < 0 || max_high > tokens) max_high = tokens;
  if (max_high < protected_tokens) max_high = protected_tokens;
  mixed_plan p;
  if (max_high == tokens && cfg.high.bytes(tokens) <= budget) {
    p.high = tokens;
  } else {
    const auto share = static_cast<std::size_t>(std::floor(cfg.high_fraction * static_cast<double>(budget)));
    p.high = cfg.high.max_tokens(share, max_high);
    if (p.high < protected_tokens) p.high = protected_tokens;
    const std::size_t rest = budget - cfg.high.bytes(p.high);
    p.low = cfg.every_count ? cfg.low.max_tokens_at_every_count(rest, tokens - p.high)
                            : cfg.low.max_tokens(rest, tokens - p.high);
    if (p.high + p.low == tokens && !cfg.every_count) {
      for (index_t h = max_high; h > p.high; --h) {
        if (cfg.high.bytes(h) <= budget && cfg.low.bytes(tokens - h) <= budget - cfg.high.bytes(h)) {
          p.high = h;
          p.low = tokens - h;
          break;
        }
      }
    }
  }
  p.high_bytes = cfg.high.bytes(p.high);
  p.low_bytes = cfg.low.bytes(p.low);
  return p;
}

// The crush_fraction giving exactly `crush` KVCrush representatives out of
// `rest` unprotected picks (split_budget floors crush_fraction * rest): 0
// when either is <= 0, 1 when crush >= rest. For a union of tiers whose low
// tier is `crush` representatives (select_mixed_precision, and while
// decoding, examples/eval/byte_runner.hpp).
inline double crush_fraction_for(index_t crush, index_t rest) noexcept {
  if (rest <= 0 || crush <= 0) return 0.0;
  if (crush >= rest) return 1.0;
  double f = static_cast<double>(crush) / static_cast<double>(rest);
  while (split_budget(rest, f).crush < crush) f = std::nextafter(f, 2.0);
  while (f > 0.0 && split_budget(rest, f).crush > crush) f = std::nextafter(f, -1.0);
  return f;
}

// Both tiers of one layer from per-KV-head scores (heads, tokens). base:
// sink, recent, per_head and the KVCrush knobs (anchor, representative,
// threshold, seed); its budget and crush_fraction are set here, its
// block_size must be 1. high / low: (1 or heads rows, >= plan.high /
// plan.low columns) with one count per row. signature_scores as in
// select_keep (KVCrush tier only). Returns the plan; throws
// std::invalid_argument on bad input before writing anything.
template <class Isa = isa::active>
mixed_plan select_mixed_precision(matrix_view<const float> scores, const keep_config& base,
                                  const mixed_precision_config& cfg, keep_sets high, keep_sets low, workspace& ws,
                                  matrix_view<const float> signature_scores = {}) {
  using kvcrush::detail::require;
  require(base.block_size == 1, "select_mixed_precision: mixed precision selects tokens (block_size must be 1)");
  require(base.rank_importance || cfg.tier == low_tier::kvcrush,
          "select_mixed_precision: a policy that ranks nothing (streaming) can only fill the low tier with KVCrush "
          "representatives");
  keep_config probe = base;
  probe.budget = base.sink + base.recent;
  probe.crush_fraction = 0.0;
  probe.rank_importance = true;
  validate(probe);
  const index_t heads = scores.extent(0), n = scores.extent(1);
  require(heads >= 1, "select_mixed_precision: scores need at least one head");
  const index_t rows = base.per_head ? heads : 1;
  const index_t guarded = protected_count(n, base.sink, base.recent);
  const mixed_plan plan = plan_mixed_precision(n, guarded, cfg, base.rank_importance ? -1 : guarded);
  for (const keep_sets* out : {&high, &low}) {
    const index_t need = out == &high ? plan.high : plan.low;
    require(out->positions.extent(0) == rows && out->positions.extent(1) >= need && out->counts.extent(0) == rows,
            "select_mixed_precision: the ", out == &high ? "high" : "low", " tier output must be (", rows, ", >= ",
            need, ") with ", rows, " counts");
  }
  if (plan.high == n) {
    // Nothing to choose; the scores are still checked like select_keep does.
    keep_config all = probe;
    all.budget = n > all.budget ? n : all.budget;
    impl::select_keep_checked<Isa>(scores, all, {}, high.positions, high.counts, ws, {});
    for (index_t r = 0; r < rows; ++r) low.counts[r] = 0;
    return plan;
  }
  keep_config hi = base;
  hi.budget = plan.high;
  hi.crush_fraction = 0.0;
  impl::select_keep_checked<Isa>(scores, hi, {}, high.positions, high.counts, ws, {});
  if (plan.low == 0) {
    for (index_t r = 0; r < rows; ++r) low.counts[r] = 0;
    return plan;
  }
  keep_config both = base;
  both.budget = plan.high + plan.low;
  const index_t rest = both.budget - base.sink - base.recent;
  both.crush_fraction = cfg.tier == low_tier::kvcrush ? crush_fraction_for(plan.low, rest) : 0.0;
  const index_t width = both.budget;
  const matrix_view<index_t> joined(ws.positions(static_cast<std::size_t>(rows * width) + 1), {rows, width}, {width, 1});
  impl::select_keep_checked<Isa>(scores, both, {}, joined, {}, ws,
                                 cfg.tier == low_tier::kvcrush ? signature_scores : matrix_view<const float>{});
  for (index_t r = 0; r < rows; ++r) {
    index_t i = 0, j = 0;
    const index_t hn = high.counts[r];
    for (index_t k = 0; k < width; ++k) {
      const index_t t = joined(r, k);
      while (i < hn && high.positions(r, i) < t) ++i;
      if (i < hn && high.positions(r, i) == t) continue;
      if (j == plan.low) throw std::logic_error("kvcrush: select_mixed_precision: the tiers overlap (internal error)");
      low.positions(r, j++) = t;
    }
    if (j != plan.low) throw std::logic_error("kvcrush: select_mixed_precision: the low tier is short (internal error)");
    low.counts[r] = j;
  }
  return plan;
}

// The same from a policy configuration (policy/runtime.hpp): the base
// policy's scores, its KVCrush knobs (crush options) for the KVCrush tier,
// per_head from its layout. budget supplies sink and recent (its token
// budget is replaced by the byte budget). AdaKV, block mode and 'full' are
// refused.
template <class Isa = isa::active>
mixed_plan select_mixed_precision(const policy_config& pc, const layer_inputs& in, const layer_budget& budget,
                                  const mixed_precision_config& cfg, keep_sets high, keep_sets low, workspace& ws) {
  using kvcrush::detail::require;
  require(!pc.adakv, "select_mixed_precision: AdaKV head-wise budgets are not supported");
  require(pc.layout.block_size == 1, "select_mixed_precision: block mode is not supported (token tiers)");
  score_set s;
  switch (pc.base) {
    case base_policy::full:
      kvcrush::detail::throw_invalid("select_mixed_precision: policy 'full' keeps everything; pick a ranking policy");
    case base_policy::streaming: s = policy::streaming_llm{}.scores<Isa>(in, ws); break;
    case base_policy::random: s = policy::random{pc.seed}.scores<Isa>(in, ws); break;
    case base_policy::h2o: s = policy::h2o{pc.h2o_normalised}.scores<Isa>(in, ws); break;
    case base_policy::snapkv: s = policy::snapkv{pc.window}.scores<Isa>(in, ws); break;
    case base_policy::pyramidkv: {
      policy::pyramidkv p;
      p.window = pc.window;
      p.beta = pc.pyramid_beta;
      s = p.scores<Isa>(in, ws);
      break;
    }
    case base_policy::tova: s = policy::tova{}.scores<Isa>(in, ws); break;
    case base_policy::knorm: s = policy::key_norm{}.scores<Isa>(in, ws); break;
    case base_policy::precomputed: s = policy::precomputed{}.scores<Isa>(in, ws); break;
    case base_policy::keydiff: s = policy::keydiff{}.scores<Isa>(in, ws); break;
    case base_policy::expected_attention: s = policy::expected_attention{pc.expected_attention}.scores<Isa>(in, ws); break;
    case base_policy::rkv: s = policy::rkv{pc.rkv, pc.window}.scores<Isa>(in, budget, ws); break;
  }
  // The byte budget replaces the token budget: request_config() sees the
  // protected part only, and the tiers' budgets come from the byte split.
  keep_config base = request_config({budget.sink + budget.recent, budget.sink, budget.recent},
                                    {pc.layout.per_head, 1}, pc.crush, s.ranks);
  base.budget = 0;
  base.crush_fraction = 0.0;
  const selection_rows rows = rows_for_selection(s, base.per_head, pc.crush.heads, cfg.tier == low_tier::kvcrush,
                                                 "select_mixed_precision");
  return select_mixed_precision<Isa>(rows.importance, base, cfg, high, low, ws, rows.signatures);
}

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
