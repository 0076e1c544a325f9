// kvcrush::select(): one layer's whole pipeline, from what the engine has
// (layer_inputs) to the keep set(s) it writes (keep_sets).
//
// The request arrives in three parts that say different things: how much to
// keep (layer_budget), in what shape (selection_layout) and how KVCrush draws
// representatives (crush_options, from the policy). They become the
// selection's one keep_config here, in request_config(), which validates it
// once; the selection then runs without checking it again.
#pragma once

#include "kvcrush/error.hpp"
#include "kvcrush/policy/adakv.hpp"
#include "kvcrush/policy/policies.hpp"
#include "kvcrush/policy/workspace.hpp"
#include "kvcrush/select/keep.hpp"
#include "kvcrush/select/keep_set.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

// The selection's configuration for one request. Throws
// std::invalid_argument when the combination is unusable.
inline keep_config request_config(const layer_budget& budget, const selection_layout& layout,
                                  const crush_options& crush, bool rank_importance) {
  keep_config cfg;
  cfg.budget = budget.budget;
  cfg.sink = budget.sink;
  cfg.recent = budget.recent;
  cfg.crush_fraction = crush.fraction;
  cfg.split = crush.split;
  cfg.crush_mass = crush.mass;
  cfg.anchor = crush.anchor;
  cfg.representative = crush.representative;
  cfg.threshold = crush.threshold;
  cfg.seed = crush.seed;
  cfg.per_head = layout.per_head;
  cfg.block_size = layout.block_size;
  cfg.rank_importance = rank_importance;
  validate(cfg);
  return cfg;
}

// The rows a selection ranks and the rows its signatures come from, drawn
// from a policy's scores.
struct selection_rows {
  matrix_view<const float> importance;  // (H, N), or (1, N) in shared mode for shared-only sources
  matrix_view<const float> signatures;  // empty: the signatures come from `importance`
};

// Per-head mode ranks each KV head's own row; signatures come from the query
// heads when asked (and `signatures_needed`), else from the KV-head rows when
// the policy keeps them apart from its importance.
inline selection_rows rows_for_selection(const score_set& scores, bool per_head, signature_heads heads,
                                         bool signatures_needed, const char* who) {
  selection_rows rows{scores.importance, {}};
  if (per_head && rows.importance.extent(0) != scores.kv_rows.extent(0)) rows.importance = scores.kv_rows;
  if (!signatures_needed) return rows;
  if (heads == signature_heads::query) {
    kvcrush::detail::require(scores.query_rows.data() != nullptr, who,
                             ": query-head signatures need a policy that sees per-query-head attention");
    rows.signatures = scores.query_rows;
  } else if (scores.kv_rows.data() != rows.importance.data()) {
    rows.signatures = scores.kv_rows;
  }
  return rows;
}

inline namespace KVCRUSH_TARGET_NS {

// Runs a policy on one layer: scores, then the keep set(s) for `budget`.
// out.positions: (per_head ? H : 1, >= widest keep set); out.counts: one
// entry per row. Throws std::invalid_argument on bad input before writing.
template <class Isa = isa::active, class Policy>
void select(const Policy& p, const layer_inputs& in, const layer_budget& budget, const selection_layout& layout,
            keep_sets out, workspace& ws) {
  using kvcrush::detail::require;
  require(in.tokens >= 0, "select: negative token count");
  const crush_options crush = policy::traits<Policy>::crush(p);
  const score_set scores = policy::impl::run_scores<Isa>(p, in, budget, ws);
  const keep_config cfg = request_config(budget, layout, crush, scores.ranks);
  const selection_rows rows = rows_for_selection(scores, layout.per_head, crush.heads,
                                                 crush.split == crush_split::adaptive || crush.fraction > 0.0, "select");
  const index_t row_count = layout.per_head ? rows.importance.extent(0) : 1;
  require(out.counts.extent(0) == row_count, "select: counts need ", row_count, " entries");
  const index_t heads = rows.importance.extent(0), tokens = rows.importance.extent(1);
  const bool head_wise = policy::traits<Policy>::head_wise(p);
  if (head_wise) {
    require(layout.per_head, "select: AdaKV head-wise budgets need per-head mode");
    require(layout.block_size == 1, "select: AdaKV works at token granularity");
  }
  if (!head_wise || tokens <= cfg.budget) {
    impl::select_keep_validated<Isa>(rows.importance, cfg, {}, out.positions, out.counts, ws, rows.signatures);
    return;
  }
  index_t* rest = ws.head_budgets(static_cast<std::size_t>(heads) + 1);
  const vector_view<index_t> rest_view(rest, {heads});
  allocate_head_budgets<Isa>(rows.importance, cfg.sink, tokens - cfg.recent, cfg.budget - cfg.sink - cfg.recent,
                             policy::traits<Policy>::alpha(p), rest_view, ws);
  impl::select_keep_validated<Isa>(rows.importance, cfg, vector_view<const index_t>(rest, {heads}), out.positions,
                                   out.counts, ws, rows.signatures);
}

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
