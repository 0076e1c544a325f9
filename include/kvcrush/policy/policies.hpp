// Eviction policies as small value types, composed at compile time:
//
//   policy::snapkv{}                                  importance only
//   policy::with_kvcrush<policy::snapkv>{{}, crush}   + KVCrush representatives
//   policy::adakv<policy::snapkv>{}                   head-wise budgets
//   policy::with_kvcrush<policy::adakv<policy::h2o>>  both
//   policy::keydiff{} policy::expected_attention{} policy::rkv{}
//                                                     no attention matrix needed
//                                                     (SPEC 11; R-KV reads the window)
//
// A base policy turns what the engine has (layer_inputs) into scores; the
// wrappers change how the keep set is drawn from them. kvcrush::select()
// (policy/select.hpp) runs the whole pipeline for one layer. An engine that
// picks its policy at compile time pays for nothing else; policy/runtime.hpp builds the same
// pipelines from a config for engines and tools that choose at run time.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "kvcrush/error.hpp"
#include "kvcrush/kv_view.hpp"
#include "kvcrush/policy/adakv.hpp"
#include "kvcrush/scores/expected_attention.hpp"
#include "kvcrush/scores/h2o.hpp"
#include "kvcrush/scores/keydiff.hpp"
#include "kvcrush/scores/reduce.hpp"
#include "kvcrush/scores/redundancy.hpp"
#include "kvcrush/scores/simple_sources.hpp"
#include "kvcrush/scores/window_attention.hpp"
#include "kvcrush/select/keep.hpp"
#include "kvcrush/select/keep_set.hpp"
#include "kvcrush/select/options.hpp"
#include "kvcrush/policy/workspace.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

// Where KVCrush signature bits come from (SPEC 4.1).
enum class signature_heads { kv, query };

inline signature_heads parse_signature_heads(std::string_view text) {
  static constexpr std::array<std::pair<std::string_view, signature_heads>, 2> names{{
      {"kv", signature_heads::kv},
      {"query", signature_heads::query},
  }};
  return detail::parse_enum(text, names, "signature heads");
}
inline std::string_view to_string(signature_heads h) { return h == signature_heads::kv ? "kv" : "query"; }

struct crush_options {
  double fraction = 0.5;  // share of the unprotected budget for representatives (split = fixed)
  // adaptive: per layer, row and compression event, the importance policy
  // keeps the fewest evictable tokens covering `mass` of their score mass
  // (within the budget) and the representatives take the rest; `fraction` is
  // then unused (docs/SEMANTICS.md, "Adaptive KVCrush split").
  crush_split split = crush_split::fixed;
  double mass = 0.9;  // in (0, 1]
  anchor_mode anchor = anchor_mode::mean;
  representative_rule representative = representative_rule::bucket_center;
  threshold_mode threshold = threshold_mode::median;
  std::uint64_t seed = 0;  // random anchor
  signature_heads heads = signature_heads::kv;
};

// Key cache of one layer in whichever storage the engine uses (set one).
struct key_cache {
  kv_view<const float> f32;
  kv_view<const float16> f16;
  kv_view<const bfloat16> bf16;
  bool empty() const noexcept { return !f32.view().data() && !f16.view().data() && !bf16.view().data(); }
};
// The value cache in the same form (Expected Attention's value norm).
using value_cache = key_cache;

// What an engine can hand a policy for one layer; each policy reads what it
// needs and names what is missing.
struct layer_inputs {
  index_t kv_heads = 0;  // H
  index_t tokens = 0;    // N
  matrix_view<const float> scores;                // precomputed S (H, N)
  strided_view<const float, 3> window_attention;  // (Hq, W, N) probabilities of the last W queries
  strided_view<const float, 3> window_queries;    // (Hq, W, d): recompute window attention from keys;
                                                  // Expected Attention's recent queries (pre-RoPE
                                                  // when its future_positions > 0)
  key_cache keys;                                 // (H, N, d)
  value_cache values;                             // (H, N, dv): Expected Attention's value norm
  index_t position = -1;  // absolute position of the next token (Expected Attention's first future
                          // position when its options leave it at -1); -1: tokens
  matrix_view<const float> last_attention;        // (Hq, N): the last query's probabilities (TOVA)
  const h2o_accumulator* h2o = nullptr;           // accumulated attention (H2O)
};

struct layer_budget {
  index_t budget = 0;  // tokens per KV head, protected ones included
  index_t sink = 0;
  index_t recent = 0;
};

struct selection_layout {
  bool per_head = false;
  index_t block_size = 1;
};

// Scores a base policy produced. The views point into the workspace the
// policy ran on (or into layer_inputs) and stay valid until the next policy
// runs on that workspace.
struct score_set {
  matrix_view<const float> importance;  // (H, N), or (1, N) for shared-only sources
  matrix_view<const float> kv_rows;     // (H, N): KV-head signature rows
  matrix_view<const float> query_rows;  // (Hq, N) or empty: query-head signature rows
  bool ranks = true;                    // false: nothing is ranked (StreamingLLM)
};

// R-KV's defaults as a policy (policy::rkv and policy_config's rkv and
// window): the bounded comparison of 256 tokens, and R-KV's importance
// pooling (max, kernel 7). Outside the per-ISA namespace, so that
// policy_config means the same in every ISA's translation units.
inline constexpr rkv_options rkv_policy_defaults{0.07f, 0.5f, 256};
inline constexpr window_options rkv_window_defaults{pooling_mode::max, 7, gqa_reduction::mean};

inline namespace KVCRUSH_TARGET_NS {
namespace policy {

namespace impl {

inline void require_tokens(const layer_inputs& in, index_t tokens, const char* what) {
  kvcrush::detail::require(in.tokens == tokens, what, " covers ", tokens, " tokens, layer_inputs.tokens is ",
                           in.tokens);
}

inline matrix_view<float> scratch_rows(workspace& ws, index_t rows, index_t tokens, bool query) {
  const auto n = static_cast<std::size_t>(rows * tokens) + 1;
  return make_matrix_view(query ? ws.query_scores(n) : ws.scores(n), rows, tokens);
}

// Calls f with the keys (or values) as the kv_view of their storage type.
template <class F>
decltype(auto) visit_cache(const key_cache& c, F&& f) {
  if (c.f32.view().data()) return f(c.f32);
  if (c.f16.view().data()) return f(c.f16);
  return f(c.bf16);
}

inline index_t cache_tokens(const key_cache& c) {
  return visit_cache(c, [](auto v) { return v.tokens(); });
}

// Window scores (SnapKV's sums, pooled, GQA-reduced) from the given window
// attention, or recomputed from the window queries and the keys. Returns
// false when neither input is there.
template <class Isa>
bool window_rows(const layer_inputs& in, const window_options& window, matrix_view<float> kv, workspace& ws,
                 matrix_view<float>& query, index_t& window_size, const char* who) {
  if (in.window_attention.data() != nullptr) {
    require_tokens(in, in.window_attention.extent(2), who);
    query = scratch_rows(ws, in.window_attention.extent(0), in.tokens, true);
    window_scores<Isa>(in.window_attention, window, kv, ws, query);
    window_size = in.window_attention.extent(1);
    return true;
  }
  if (in.window_queries.data() == nullptr || in.keys.empty()) return false;
  require_tokens(in, cache_tokens(in.keys), who);
  query = scratch_rows(ws, in.window_queries.extent(0), in.tokens, true);
  visit_cache(in.keys, [&](auto keys) { window_scores_from_queries<Isa>(in.window_queries, keys, window, kv, ws, query); });
  window_size = in.window_queries.extent(1);
  return true;
}

// Policies whose scores depend on the layer's budget (R-KV's evictable
// region) have scores(in, budget, ws); the others scores(in, ws).
template <class P, class Isa, class = void>
struct wants_budget : std::false_type {};
template <class P, class Isa>
struct wants_budget<P, Isa,
                    std::void_t<decltype(std::declval<const P&>().template scores<Isa>(
                        std::declval<const layer_inputs&>(), std::declval<const layer_budget&>(),
                        std::declval<workspace&>()))>> : std::true_type {};

}  // namespace impl

// StreamingLLM: sink + recent only (no scores are read).
struct streaming_llm {
  template <class Isa>
  score_set scores(const layer_inputs& in, workspace& ws) const {
    kvcrush::detail::require(in.kv_heads >= 1, "streaming: layer_inputs.kv_heads must be >= 1");
    auto zero = impl::scratch_rows(ws, in.kv_heads, in.tokens, false);
    for (index_t h = 0; h < in.kv_heads; ++h)
      for (index_t t = 0; t < in.tokens; ++t) zero(h, t) = 0.0f;
    return {zero, zero, {}, false};
  }
};

// Scores the caller computed itself: S = layer_inputs.scores.
struct precomputed {
  template <class Isa>
  score_set scores(const layer_inputs& in, workspace&) const {
    kvcrush::detail::require(in.scores.data() != nullptr && in.scores.extent(0) >= 1,
                             "precomputed: layer_inputs.scores is empty");
    impl::require_tokens(in, in.scores.extent(1), "precomputed scores");
    return {in.scores, in.scores, {}, true};
  }
};

// H2O: accumulated attention (plain sums, or divided by how many queries saw
// each token).
struct h2o {
  bool normalised = false;
  template <class Isa>
  score_set scores(const layer_inputs& in, workspace& ws) const {
    kvcrush::detail::require(in.h2o != nullptr, "h2o: layer_inputs.h2o (the accumulator) is missing");
    const h2o_accumulator& acc = *in.h2o;
    for (index_t h = 0; h < acc.heads(); ++h) {
      kvcrush::detail::require(acc.length(h) == in.tokens, "h2o: head ", h, " holds ", acc.length(h),
                               " tokens, the layer ", in.tokens, " (heads must hold the same number)");
    }
    // Query-head rows for signatures when the accumulator keeps them.
    matrix_view<const float> query;
    if (acc.tracks_query_heads() && !normalised) {
      const auto all = acc.query_scores();
      query = matrix_view<const float>(all.data(), {acc.query_heads(), in.tokens}, {all.stride(0), 1});
    } else if (acc.tracks_query_heads()) {
      auto rows = impl::scratch_rows(ws, acc.query_heads(), in.tokens, true);
      acc.normalised_query_scores(rows);
      query = rows;
    }
    if (!normalised) {
      const auto all = acc.scores();
      const matrix_view<const float> s(all.data(), {acc.heads(), in.tokens}, {all.stride(0), 1});
      return {s, s, query, true};
    }
    auto out = impl::scratch_rows(ws, acc.heads(), in.tokens, false);
    acc.normalised_scores(out);
    return {out, out, query, true};
  }
};

// SnapKV: window attention, given as probabilities or recomputed from the
// last W queries and the keys.
struct snapkv {
  window_options window;
  template <class Isa>
  score_set scores(const layer_inputs& in, workspace& ws) const {
    using kvcrush::detail::require;
    require(in.kv_heads >= 1, "snapkv: layer_inputs.kv_heads must be >= 1");
    auto kv = impl::scratch_rows(ws, in.kv_heads, in.tokens, false);
    if (in.window_attention.data() != nullptr) {
      impl::require_tokens(in, in.window_attention.extent(2), "snapkv window attention");
      auto query = impl::scratch_rows(ws, in.window_attention.extent(0), in.tokens, true);
      window_scores<Isa>(in.window_attention, window, kv, ws, query);
      return {kv, kv, query, true};
    }
    require(in.window_queries.data() != nullptr && !in.keys.empty(),
            "snapkv: needs layer_inputs.window_attention, or window_queries and keys");
    auto query = impl::scratch_rows(ws, in.window_queries.extent(0), in.tokens, true);
    if (in.keys.f32.view().data()) {
      impl::require_tokens(in, in.keys.f32.tokens(), "snapkv keys");
      window_scores_from_queries<Isa>(in.window_queries, in.keys.f32, window, kv, ws, query);
    } else if (in.keys.f16.view().data()) {
      impl::require_tokens(in, in.keys.f16.tokens(), "snapkv keys");
      window_scores_from_queries<Isa>(in.window_queries, in.keys.f16, window, kv, ws, query);
    } else {
      impl::require_tokens(in, in.keys.bf16.tokens(), "snapkv keys");
      window_scores_from_queries<Isa>(in.window_queries, in.keys.bf16, window, kv, ws, query);
    }
    return {kv, kv, query, true};
  }
};

// PyramidKV: SnapKV's scores with layer budgets that shrink with depth (see
// pyramid_budgets()); the layer's budget arrives in layer_budget.
struct pyramidkv : snapkv {
  index_t beta = 20;
};

// TOVA: the last query's attention, averaged over all heads.
struct tova {
  template <class Isa>
  score_set scores(const layer_inputs& in, workspace& ws) const {
    using kvcrush::detail::require;
    require(in.last_attention.data() != nullptr, "tova: layer_inputs.last_attention is missing");
    require(in.kv_heads >= 1, "tova: layer_inputs.kv_heads must be >= 1");
    impl::require_tokens(in, in.last_attention.extent(1), "tova attention");
    auto rows = impl::scratch_rows(ws, in.kv_heads + 1, in.tokens, false);
    const matrix_view<float> kv(rows.data(), {in.kv_heads, in.tokens}, {in.tokens, 1});
    const matrix_view<float> shared(rows.data() + in.kv_heads * in.tokens, {1, in.tokens}, {in.tokens, 1});
    tova_scores<Isa>(in.last_attention, shared, kv);
    return {shared, kv, in.last_attention, true};
  }
};

// Key norm: smaller keys matter more.
struct key_norm {
  template <class Isa>
  score_set scores(const layer_inputs& in, workspace& ws) const {
    kvcrush::detail::require(!in.keys.empty(), "key norm: layer_inputs.keys is missing");
    auto kv = impl::scratch_rows(ws, in.kv_heads, in.tokens, false);
    if (in.keys.f32.view().data()) {
      key_norm_scores<Isa>(in.keys.f32, kv);
    } else if (in.keys.f16.view().data()) {
      key_norm_scores<Isa>(in.keys.f16, kv);
    } else {
      key_norm_scores<Isa>(in.keys.bf16, kv);
    }
    return {kv, kv, {}, true};
  }
};

// Seeded random scores: the baseline.
struct random {
  std::uint64_t seed = 0;
  template <class Isa>
  score_set scores(const layer_inputs& in, workspace& ws) const {
    kvcrush::detail::require(in.kv_heads >= 1, "random: layer_inputs.kv_heads must be >= 1");
    auto kv = impl::scratch_rows(ws, in.kv_heads, in.tokens, false);
    random_scores<Isa>(seed, kv);
    return {kv, kv, {}, true};
  }
};

// KeyDiff (SPEC 11.1): minus each key's cosine similarity to the mean
// unit key of its head. Needs the keys only.
struct keydiff {
  template <class Isa>
  score_set scores(const layer_inputs& in, workspace& ws) const {
    kvcrush::detail::require(!in.keys.empty(), "keydiff: layer_inputs.keys is missing (KeyDiff scores the keys)");
    impl::require_tokens(in, impl::cache_tokens(in.keys), "keydiff keys");
    const index_t heads = impl::visit_cache(in.keys, [](auto v) { return v.heads(); });
    kvcrush::detail::require(in.kv_heads == heads, "keydiff: the keys have ", heads,
                             " heads, layer_inputs.kv_heads is ", in.kv_heads);
    auto kv = impl::scratch_rows(ws, heads, in.tokens, false);
    impl::visit_cache(in.keys, [&](auto keys) { keydiff_scores<Isa>(keys, kv, ws); });
    return {kv, kv, {}, true};
  }
};

// Expected Attention (SPEC 11.2): the attention the next queries are
// expected to pay each key, from the statistics of the recent queries
// (layer_inputs.window_queries; pre-RoPE when options.future_positions > 0),
// times the value norm with options.use_vnorm (layer_inputs.values).
struct expected_attention {
  expected_attention_options options{};
  template <class Isa>
  score_set scores(const layer_inputs& in, workspace& ws) const {
    using kvcrush::detail::require;
    require(in.window_queries.data() != nullptr,
            "expected attention: layer_inputs.window_queries (the recent queries, (Hq, W, d)) is missing");
    require(!in.keys.empty(), "expected attention: layer_inputs.keys is missing");
    require(!options.use_vnorm || !in.values.empty(),
            "expected attention: layer_inputs.values is missing (use_vnorm scales by the value norm; set "
            "use_vnorm = false to score without values)");
    impl::require_tokens(in, impl::cache_tokens(in.keys), "expected attention keys");
    const index_t heads = impl::visit_cache(in.keys, [](auto v) { return v.heads(); });
    require(in.kv_heads == heads, "expected attention: the keys have ", heads, " heads, layer_inputs.kv_heads is ",
            in.kv_heads);
    auto kv = impl::scratch_rows(ws, heads, in.tokens, false);
    expected_attention_options opt = options;
    if (opt.first_future_position < 0 && in.position >= 0) opt.first_future_position = in.position;
    impl::visit_cache(in.keys, [&](auto keys) {
      using key_t = std::remove_cv_t<std::remove_pointer_t<decltype(keys.row(0, 0))>>;
      if (!options.use_vnorm) {
        expected_attention_scores<Isa>(in.window_queries, keys, opt, kv, kv_view<const key_t>{}, ws);
      } else {
        impl::visit_cache(in.values, [&](auto values) {
          expected_attention_scores<Isa>(in.window_queries, keys, opt, kv, values, ws);
        });
      }
    });
    return {kv, kv, {}, true};
  }
};

// R-KV (SPEC 11.3): importance from the window attention (SnapKV's pooled
// window sums divided by W: R-KV's window-mean attention, max-pooled with
// kernel 7) combined with the redundancy of the keys in the evictable region
// [sink, N - recent) of the layer's budget. Without a budget (scores(in, ws))
// the region is the whole cache. options.comparison_tokens bounds the cost
// (every token against the newest R of the region; 0 compares all pairs).
struct rkv {
  rkv_options options = rkv_policy_defaults;
  window_options window = rkv_window_defaults;
  template <class Isa>
  score_set scores(const layer_inputs& in, workspace& ws) const {
    return scores<Isa>(in, layer_budget{in.tokens, 0, 0}, ws);
  }
  template <class Isa>
  score_set scores(const layer_inputs& in, const layer_budget& budget, workspace& ws) const {
    using kvcrush::detail::require;
    require(in.kv_heads >= 1, "rkv: layer_inputs.kv_heads must be >= 1");
    require(!in.keys.empty(), "rkv: layer_inputs.keys is missing (R-KV's redundancy compares the cached keys)");
    impl::require_tokens(in, impl::cache_tokens(in.keys), "rkv keys");
    const index_t heads = impl::visit_cache(in.keys, [](auto v) { return v.heads(); });
    require(in.kv_heads == heads, "rkv: the keys have ", heads, " heads, layer_inputs.kv_heads is ", in.kv_heads);
    auto kv = impl::scratch_rows(ws, heads, in.tokens, false);
    matrix_view<float> query;
    index_t w = 0;
    require(impl::window_rows<Isa>(in, window, kv, ws, query, w, "rkv window attention"),
            "rkv: needs layer_inputs.window_attention, or window_queries and keys, for its importance");
    const double inv = 1.0 / static_cast<double>(w > 0 ? w : 1);
    for (index_t h = 0; h < heads; ++h)
      for (index_t t = 0; t < in.tokens; ++t) kv(h, t) = static_cast<float>(static_cast<double>(kv(h, t)) * inv);
    const index_t begin = std::min(std::max<index_t>(budget.sink, 0), in.tokens);
    const index_t end = std::max(begin, in.tokens - std::max<index_t>(budget.recent, 0));
    const index_t d = impl::visit_cache(in.keys, [](auto v) { return v.head_dim(); });
    const index_t floats = rkv_scratch_floats(end - begin, d, options);
    const vector_view<float> scratch(ws.unit_keys(static_cast<std::size_t>(floats) + 1), {floats});
    impl::visit_cache(in.keys, [&](auto keys) { rkv_scores<Isa>(keys, kv, begin, end, options, scratch, kv); });
    return {kv, kv, query, true};
  }
};

namespace impl {

// A policy's scores, with the layer's budget for those that use it.
template <class Isa, class P>
score_set run_scores(const P& p, const layer_inputs& in, const layer_budget& budget, workspace& ws) {
  if constexpr (wants_budget<P, Isa>::value) {
    return p.template scores<Isa>(in, budget, ws);
  } else {
    return p.template scores<Isa>(in, ws);
  }
}

}  // namespace impl

// Head-wise budgets over any base policy's per-KV-head scores.
template <class Base>
struct adakv {
  Base base{};
  double alpha = 0.2;
  template <class Isa>
  score_set scores(const layer_inputs& in, workspace& ws) const {
    return base.template scores<Isa>(in, ws);
  }
  template <class Isa>
  score_set scores(const layer_inputs& in, const layer_budget& budget, workspace& ws) const {
    return impl::run_scores<Isa>(base, in, budget, ws);
  }
};

// KVCrush representatives on top of any policy.
template <class Base>
struct with_kvcrush {
  Base base{};
  crush_options crush{};
  template <class Isa>
  score_set scores(const layer_inputs& in, workspace& ws) const {
    return base.template scores<Isa>(in, ws);
  }
  template <class Isa>
  score_set scores(const layer_inputs& in, const layer_budget& budget, workspace& ws) const {
    return impl::run_scores<Isa>(base, in, budget, ws);
  }
};

// Traits that unwrap the composition.
template <class P>
struct traits {
  static crush_options crush(const P&) { return crush_options{0.0}; }
  static bool head_wise(const P&) { return false; }
  static double alpha(const P&) { return 0.0; }
};
template <class Base>
struct traits<adakv<Base>> {
  static crush_options crush(const adakv<Base>& p) { return traits<Base>::crush(p.base); }
  static bool head_wise(const adakv<Base>&) { return true; }
  static double alpha(const adakv<Base>& p) { return p.alpha; }
};
template <class Base>
struct traits<with_kvcrush<Base>> {
  static crush_options crush(const with_kvcrush<Base>& p) { return p.crush; }
  static bool head_wise(const with_kvcrush<Base>& p) { return traits<Base>::head_wise(p.base); }
  static double alpha(const with_kvcrush<Base>& p) { return traits<Base>::alpha(p.base); }
};

}  // namespace policy

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
